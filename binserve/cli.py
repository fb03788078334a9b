"""The ``binserve`` command."""

from __future__ import annotations

import atexit
import os
import sys
import traceback
from collections.abc import Sequence

from . import signals
from .activation import take_passed
from .app import AppLoadError, import_modules, load_app, prepare_process
from .config import Config, ConfigError, load
from .emperor import Emperor, print_status
from .log import LoggerSpec, SinkError, log, setup
from .master import Master
from .notify import Notifier
from .privileges import PrivilegeError, Privileges, nginx_access_warnings
from .reload import PROBE_ENV, PROBE_LOADED, RETIRING_ENV, abandon_reload
from .safefile import write_replace
from .sockets import (
    Listener,
    PeerFilter,
    SocketError,
    absolute,
    activated_inherited,
    address_key,
    inherited,
    open_all,
    remove_files,
)
from .stats import open_stats

USAGE_ERROR = 2
APP_LOAD_ERROR = 4  # as gunicorn's: the app could not be imported; respawning would not help
DEFAULT_MERCY = 60.0


def main(argv: Sequence[str] | None = None) -> int:
    """Load the options and the app, bind the sockets, run the master. Returns the exit code."""
    signals.hold_without_meaning()
    # Before anything else runs: what systemd hands to the service is not the app's.
    notifier = Notifier.from_environ()
    config: Config | None = None
    passed: list[Listener] = []
    try:
        passed = take_passed()
        config = load(sys.argv[1:] if argv is None else argv)
        code = _probe(config) if PROBE_ENV in os.environ else _serve(config, notifier, passed)
    except SocketError as exc:
        log(str(exc))
        code = USAGE_ERROR
    except ConfigError as exc:
        who = "binserve reload probe" if PROBE_ENV in os.environ else "binserve"
        print(f"{who}: {exc}", file=sys.stderr)
        code = USAGE_ERROR
    except signals.Stopped as exc:
        log(f"{exc} received while starting: stopped")
        code = 1 if PROBE_ENV in os.environ else 0  # a stopped probe has not shown that the image loads
    if RETIRING_ENV in os.environ:
        # A reloaded image that failed before taking the sockets over: the old workers are still serving.
        _abandon_reload(config, list(inherited().values()))
    return code


def _serve(config: Config, notifier: Notifier, passed: list[Listener]) -> int:
    code = _open_logs(config)
    if code is not None:
        return code
    if config.emperor_status:
        return print_status(config.emperor_status)
    if config.emperor:
        if passed:
            log("socket activation: the emperor serves no socket itself; give each vassal its socket")
            return USAGE_ERROR
        return Emperor(config, notifier).run()
    if not config.socket and not passed and not activated_inherited():
        log("no socket given: set socket (a unix path or HOST:PORT), or let systemd pass one")
        return USAGE_ERROR
    start_cwd = os.getcwd()
    # Relative unix socket paths are relative to where binserve started, not to chdir.
    specs = [absolute(spec, start_cwd) for spec in config.socket]
    try:
        # Names are resolved and the allow list parsed before anything is bound.
        privileges = Privileges.from_config(config)
        peers = PeerFilter(config.uwsgi_allow_from)
        listeners = open_all(specs, config.listen, config.chmod_socket, config.socket_timeout, peers, passed)
    except (PrivilegeError, SocketError) as exc:
        log(str(exc))
        return USAGE_ERROR
    try:
        # Bound as root with the uwsgi sockets: a stats path only root may write is fine, and a
        # failure is one line before anything else has started.
        stats = open_stats(_stats_address(config, specs, start_cwd))
    except SocketError as exc:
        log(str(exc))
        return _give_up(config, listeners, USAGE_ERROR, None)
    opened = [*listeners, stats] if stats else listeners  # what a failure from here on closes
    signals.listening([listener.fileno() for listener in opened])
    # Sockets inherited on a reload were given their owner, and checked, by the image that bound them.
    created = [lst.spec for lst in listeners if lst.is_unix and lst.bound_here and not lst.is_abstract]
    if privileges.socket_owner and any(listener.is_abstract for listener in listeners):
        log("chown-socket ignored for abstract sockets (@name): they have no file to give an owner")
    modes = config.chmod_socket is not None or privileges.socket_owner
    if modes and any(listener.activated for listener in listeners):
        log(
            "chmod-socket and chown-socket ignored for the sockets systemd passed: set SocketMode=, "
            "SocketUser= and SocketGroup= in the .socket unit"
        )
    if config.pidfile and not _write_pidfile(config.pidfile):
        return _give_up(config, opened, USAGE_ERROR, None)  # what is there is not ours to remove
    try:
        privileges.chown(created)
        for path in created:
            try:
                warnings = nginx_access_warnings(path)
            except OSError as exc:  # the check is advice: it must not stop a server that is bound
                warnings = [f"cannot check whether nginx can reach {path}: {exc.strerror}"]
            for warning in warnings:
                log(warning)
        dropped = privileges.drop()
    except PrivilegeError as exc:
        log(str(exc))
        return _give_up(config, opened, USAGE_ERROR, config.pidfile)
    if dropped:
        log(dropped)
    try:
        # After the drop: the app's code, from its import on, never runs as root.
        prepare_process(config)
        # lazy-apps: each worker imports the app after fork; a failure there is a boot error.
        app = None if config.lazy_apps else load_app(config)
    except AppLoadError as exc:
        log(f"cannot load the app: {exc}")
        return _give_up(config, opened, APP_LOAD_ERROR, config.pidfile)
    except signals.Stopped as exc:
        log(f"{exc} received while the app was being imported: stopped")
        return _give_up(config, opened, 0, config.pidfile)
    except Exception:
        log("cannot load the app, it raised:\n" + traceback.format_exc().rstrip())
        return _give_up(config, opened, APP_LOAD_ERROR, config.pidfile)
    return Master(config, app, listeners, start_cwd, stats, notifier).run()


def _open_logs(config: Config) -> int | None:
    """Open the log and the request log; a failure stops the start, but not a reloaded image's.

    After a reload as the uid user, a file root opened may be closed to this user, or replaced
    by a link (refused); stdout and stderr, inherited through exec, still point at the old file.
    """
    logger, option = config.logger, "logger"
    if config.logto:
        logger, option = LoggerSpec("file", path=config.logto, text=config.logto), "logto"
    reloaded = RETIRING_ENV in os.environ
    try:
        problems = setup(logger, config.req_logger, config.log_date, option, fallback=reloaded)
    except SinkError as exc:
        print(f"binserve: {exc}", file=sys.stderr)
        return USAGE_ERROR
    for problem in problems:
        log(f"{problem} as uid {os.getuid()}; logging on as before the reload")
    return None


def _stats_address(config: Config, specs: list[str], start_cwd: str) -> str | None:
    if not config.stats:
        return None
    address = absolute(config.stats, start_cwd)
    if address_key(address) in map(address_key, specs):
        raise SocketError(f"option 'stats': {config.stats} is also given as a socket")
    return address


def _probe(config: Config) -> int:
    """Load what a reloaded image would load, as it would, and exit: binding and writing nothing.

    The app is imported even with lazy-apps, where the new workers would fail on it one by one,
    and so are the ``import`` option's modules.
    """
    try:
        Privileges.from_config(config).drop()
        prepare_process(config)
        load_app(config)
        import_modules(config)
    except (PrivilegeError, AppLoadError) as exc:
        log(f"reload probe: {exc}")
        return USAGE_ERROR if isinstance(exc, PrivilegeError) else APP_LOAD_ERROR
    except Exception:
        log("reload probe: the app raised:\n" + traceback.format_exc().rstrip())
        return APP_LOAD_ERROR
    finally:
        # The app's exit handlers belong to the processes that serve it: one that deregisters
        # the host from service discovery must not run because a reload was checked.
        atexit._clear()
    return PROBE_LOADED


def _write_pidfile(path: str) -> bool:
    """Write the master's pid, before privileges are dropped (as uWSGI does: /run is root's).

    The file is replaced, never written through: a link the uid user planted in a directory it
    can write would otherwise make root write where the link points. A reload keeps the pid; the
    re-executed image, unprivileged by then, may be unable to replace a file in root's directory,
    and the file is still right.
    """
    try:
        write_replace(path, f"{os.getpid()}\n".encode(), 0o644)
    except OSError as exc:
        if isinstance(exc, PermissionError) and RETIRING_ENV in os.environ:
            return True
        log(f"pidfile {path}: {exc.strerror}")
        return False
    return True


def _give_up(config: Config, listeners: list[Listener], code: int, pidfile: str | None) -> int:
    """Startup failed with the sockets open: remove them, once the old workers are done on a reload.

    ``pidfile`` is the one this process wrote, None when it could not write it.
    """
    if RETIRING_ENV in os.environ:
        _abandon_reload(config, listeners)
    else:
        # Nothing ever listened on these files, and the pidfile names a process about to exit:
        # they go whatever vacuum says.
        remove_files(listeners, pidfile, vacuum=True)
    return code


def _abandon_reload(config: Config | None, listeners: list[Listener]) -> None:
    """The new image failed: let the old workers finish, then remove the sockets and the pidfile."""
    log("the reload failed: stopping the old workers gracefully and exiting")
    abandon_reload(config.worker_reload_mercy if config else DEFAULT_MERCY)
    vacuum = config.vacuum if config else True
    remove_files(listeners, config.pidfile if config else None, vacuum)


if __name__ == "__main__":
    sys.exit(main())

"""The ``binserve`` command."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence

from .app import AppLoadError, load_app, prepare_process
from .config import Config, ConfigError, load
from .emperor import Emperor, print_status
from .log import log, redirect_to
from .master import RETIRING_ENV, Master, abandon_reload
from .sockets import SocketError, inherited, open_all, parse_tcp, remove_files

USAGE_ERROR = 2
APP_LOAD_ERROR = 4  # as gunicorn's: the app could not be imported; respawning would not help
DEFAULT_MERCY = 60.0


def main(argv: Sequence[str] | None = None) -> int:
    """Load the options and the app, bind the sockets, run the master. Returns the exit code."""
    config: Config | None = None
    try:
        config = load(sys.argv[1:] if argv is None else argv)
        code = _serve(config)
    except ConfigError as exc:
        print(f"binserve: {exc}", file=sys.stderr)
        code = USAGE_ERROR
    if RETIRING_ENV in os.environ:
        # A reloaded image that never got to run its master: the old workers are still serving.
        _abandon_reload(config)
    return code


def _serve(config: Config) -> int:
    if config.logto:
        try:
            redirect_to(config.logto)
        except OSError as exc:
            print(f"binserve: logto {config.logto}: {exc.strerror}", file=sys.stderr)
            return USAGE_ERROR
    if config.emperor_status:
        return print_status(config.emperor_status)
    if config.emperor:
        return Emperor(config).run()
    if not config.socket:
        log("no socket given: set socket (a unix path or HOST:PORT)")
        return USAGE_ERROR
    start_cwd = os.getcwd()
    try:
        prepare_process(config)
        # lazy-apps: each worker imports the app after fork; a failure there is a boot error.
        app = None if config.lazy_apps else load_app(config)
    except AppLoadError as exc:
        log(f"cannot load the app: {exc}")
        return APP_LOAD_ERROR
    except Exception:
        log("cannot load the app, it raised:\n" + traceback.format_exc().rstrip())
        return APP_LOAD_ERROR
    # Relative unix socket paths are relative to where binserve started, not to chdir.
    specs = [
        spec if os.path.isabs(spec) or parse_tcp(spec) else os.path.join(start_cwd, spec)
        for spec in config.socket
    ]
    try:
        listeners = open_all(specs, config.listen, config.chmod_socket, config.socket_timeout)
    except SocketError as exc:
        log(str(exc))
        return USAGE_ERROR
    return Master(config, app, listeners, start_cwd).run()


def _abandon_reload(config: Config | None) -> None:
    """The new image failed: let the old workers finish, then remove the sockets and the pidfile."""
    log("the reload failed: stopping the old workers gracefully and exiting")
    abandon_reload(config.worker_reload_mercy if config else DEFAULT_MERCY)
    vacuum = config.vacuum if config else True
    remove_files(list(inherited().values()), config.pidfile if config else None, vacuum)


if __name__ == "__main__":
    sys.exit(main())

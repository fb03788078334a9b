"""The ``binserve`` command."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence

from .app import AppLoadError, load_app, prepare_process
from .config import Config, ConfigError, load
from .log import log, redirect_to
from .master import RETIRING_ENV, Master, abandon_reload
from .sockets import SocketError, inherited, open_all

APP_LOAD_ERROR = 4  # as gunicorn's: the app could not be imported; respawning would not help


def main(argv: Sequence[str] | None = None) -> int:
    """Load the options and the app, bind the sockets, run the master. Returns the exit code."""
    try:
        config = load(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"binserve: {exc}", file=sys.stderr)
        return 2
    if config.logto:
        try:
            redirect_to(config.logto)
        except OSError as exc:
            print(f"binserve: logto {config.logto}: {exc.strerror}", file=sys.stderr)
            return 2
    if not config.socket:
        log("no socket given: set socket (a unix path or HOST:PORT)")
        return 2
    start_cwd = os.getcwd()
    try:
        prepare_process(config)
        app = load_app(config)
    except AppLoadError as exc:
        log(f"cannot load the app: {exc}")
        return _fail_to_load(config)
    except Exception:
        log("cannot load the app, it raised:\n" + traceback.format_exc().rstrip())
        return _fail_to_load(config)
    specs = [
        spec if os.path.isabs(spec) or ":" in spec else os.path.join(start_cwd, spec)
        for spec in config.socket
    ]
    try:
        listeners = open_all(specs, config.listen, config.chmod_socket, config.socket_timeout)
    except SocketError as exc:
        log(str(exc))
        return 2
    master = Master(config, app, listeners)
    master.start_cwd = start_cwd
    return master.run()


def _fail_to_load(config: Config) -> int:
    """Exit after a failed app load; on a reload, first let the old workers finish and clean up."""
    if RETIRING_ENV in os.environ:
        log("the reloaded app does not load: stopping the old workers gracefully and exiting")
        abandon_reload(config.worker_reload_mercy)
        for listener in inherited().values():
            listener.close()
            if config.vacuum:
                listener.remove_file()
        if config.vacuum and config.pidfile:
            try:
                os.unlink(config.pidfile)
            except FileNotFoundError:
                pass
    return APP_LOAD_ERROR


if __name__ == "__main__":
    sys.exit(main())

"""Loading the WSGI callable: chdir, pythonpath, env, then a module or a file."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any

from . import safefile, signals
from .config import Config

# An app's source; far above any real file, but no FIFO or device can be read endlessly.
MAX_APP_BYTES = 64 << 20


class AppLoadError(Exception):
    """The app could not be loaded; the message says which and why (the traceback is logged)."""


def prepare_process(config: Config) -> None:
    """Apply chdir, env and pythonpath, which must hold before the app is imported."""
    if config.chdir:
        try:
            os.chdir(config.chdir)
        except OSError as exc:
            raise AppLoadError(f"chdir {config.chdir}: {exc.strerror}") from None
    for item in config.env:
        name, _, value = item.partition("=")
        os.environ[name.strip()] = value
    for path in reversed(config.pythonpath):
        if path not in sys.path:
            sys.path.insert(0, path)
    # Like uWSGI, the current directory is importable (a module next to the ini file).
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def load_app(config: Config) -> Callable[..., Any]:
    """Import the app named by ``module`` or ``wsgi-file`` and return its callable.

    ``sys.exit()`` or another BaseException from the import is a failed load like any other:
    uncaught, it would end a probe with code 0 (a reload then passed) or a master without a
    word and with its sockets left behind, and a lazy worker outside the boot-error path.
    """
    try:
        return _load(config)
    except (Exception, signals.Stopped):
        raise
    except BaseException as exc:
        raise AppLoadError(f"the app's import raised {type(exc).__name__}({exc})") from exc


def import_modules(config: Config) -> None:
    """The ``import`` option's modules, in order; AppLoadError naming the option and the module.

    ``sys.exit()`` at import is a failure too, as for the app; the traceback is chained.
    """
    for name in getattr(config, "import"):  # "import" is a keyword: no attribute syntax
        try:
            importlib.import_module(name)
        except signals.Stopped:
            raise
        except BaseException as exc:
            raise AppLoadError(f"option 'import': cannot import {name}: {type(exc).__name__}: {exc}") from exc


def _load(config: Config) -> Callable[..., Any]:
    if config.module:
        name, _, attr = config.module.partition(":")
        attr = attr or config.callable
        module = importlib.import_module(name)
        where = f"module {name}"
    elif config.wsgi_file:
        path = os.path.abspath(config.wsgi_file)
        try:
            # Read once, through the one safe reader: a FIFO cannot hang the master, and the
            # reason a file is refused (missing, unreadable, a directory) is the one reported.
            source = safefile.read_bounded(path, MAX_APP_BYTES)
        except OSError as exc:
            raise AppLoadError(f"wsgi-file {config.wsgi_file}: {exc.strerror}") from None
        # A stable module name derived from the path, as uWSGI's uwsgi_file_<path> does, so
        # pickling and logging see a real module registered in sys.modules.
        mod_name = "binserve_file_" + "".join(c if c.isalnum() else "_" for c in path)
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None:
            raise AppLoadError(f"wsgi-file {config.wsgi_file}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        exec(compile(source, path, "exec"), module.__dict__)
        attr = config.callable
        where = f"wsgi-file {config.wsgi_file}"
    else:
        raise AppLoadError("no app given: set module or wsgi-file")
    app = getattr(module, attr, None)
    if app is None:
        raise AppLoadError(f"{where} has no callable {attr!r}")
    if not callable(app):
        raise AppLoadError(f"{where}: {attr!r} is not callable")
    return app

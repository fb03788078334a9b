"""Reading options from ini files, the environment and the command line.

Everything goes through the one table in ``options.py``; the ini syntax (sections, magic
variables, ``include``/``inherit``, ``$()``, ``@()``, ``%()``) is ``ini.py``'s. Precedence, lowest
first: defaults < ini files (an inherited template below the file naming it) < ``BINSERVE_*``
environment variables < command line. Repeatable options (``socket``, ``pythonpath``, ``env``)
accumulate across all sources, as in uWSGI. Any bad input is a ``ConfigError`` whose message
names where it came from (``app.ini:4: ...``, ``--processes: ...``, ``BINSERVE_LISTEN: ...``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

# ConfigError lives in ini.py, the lowest module that raises it; it is re-exported here.
from .ini import ConfigError, closest, read, split_placeholder
from .options import ALIASES, OPTIONS, Option, options_table, resolve
from .signals import signals_table

__all__ = ["Config", "ConfigError", "load"]

ENV_PREFIX = "BINSERVE_"
INI_ENV = f"{ENV_PREFIX}INI"
NEEDED_BY_FILES = ("inherit", "include", "set-placeholder")  # given outside the files, used reading them


class Config:
    """Option values by name; read them as attributes (``config.buffer_size``)."""

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        self._values: dict[str, Any] = {}
        for opt in OPTIONS.values():
            self._values[opt.name] = list(opt.default) if opt.repeatable else opt.default
        for name, value in (values or {}).items():
            self.set(name, value)

    def set(self, name: str, value: Any) -> None:
        """Set an already-converted value (appends for repeatable options)."""
        opt = resolve(name)
        if opt.repeatable and not isinstance(value, list):
            self._values[opt.name].append(value)
        else:
            self._values[opt.name] = value

    def __getattr__(self, attr: str) -> Any:
        try:
            return self._values[attr.replace("_", "-")]
        except KeyError:
            raise AttributeError(attr) from None


def _convert(opt: Option, raw: str, where: str, name: str) -> Any:
    try:
        return opt.convert(raw)
    except ValueError as exc:
        raise ConfigError(f"{where}: option '{name}': {exc}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="binserve",
        description="Serve a WSGI app over the uwsgi protocol (behind nginx's uwsgi_pass).",
        allow_abbrev=False,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--help-options", action="store_true", help="print every option as a markdown table")
    parser.add_argument(
        "--help-signals", action="store_true", help="print what each signal means as a markdown table"
    )
    for opt in OPTIONS.values():
        flags = [f"--{opt.name}"] + [f"--{a}" for a, target in ALIASES.items() if target == opt.name]
        # argparse %-formats help texts; "%(NAME)" in a help text is meant literally.
        kwargs: dict[str, Any] = {
            "dest": opt.name,
            "help": opt.description.replace("%", "%%"),
            "metavar": opt.metavar,
        }
        if opt.flag:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        kwargs["action"] = "append"
        parser.add_argument(*flags, **kwargs)
    return parser


def _from_environment(environ: Mapping[str, str]) -> list[tuple[Option, str, str, str]]:
    """``(option, name as written, raw value, where)`` for each ``BINSERVE_*`` variable naming an option.

    Another ``BINSERVE_*`` variable is ignored with a warning: the environment is shared with
    other programs, and a stray variable must not keep the server from starting.
    """
    found = []
    for key, raw in environ.items():
        if key.startswith(ENV_PREFIX) and key != INI_ENV:
            name = key[len(ENV_PREFIX) :].lower().replace("_", "-")
            try:
                found.append((resolve(name), name, raw, key))
            except KeyError:
                print(f"binserve: warning: ignoring {key}: {_not_an_option(name)}", file=sys.stderr)
    return found


def _not_an_option(name: str) -> str:
    close = closest(name, [*OPTIONS, *ALIASES])
    variable = f" (did you mean {_variable(close)}?)" if close else ""
    return f"binserve has no option '{name}'{variable}"


def _variable(name: str) -> str:
    return ENV_PREFIX + name.upper().replace("-", "_")


def _one_app(config: Config, origins: Mapping[str, str]) -> None:
    """``module`` and ``wsgi-file`` both name the app: refused here, before any worker tries."""
    if config.module and config.wsgi_file:
        raise ConfigError(
            f"{origins['wsgi-file']}: option 'wsgi-file' cannot be used with option 'module'"
            f" ({origins['module']}): give only one"
        )


def _one_log(config: Config, origins: Mapping[str, str]) -> None:
    """``logto`` and ``logger`` both say where the log goes: refused, as two apps are."""
    if config.logto and config.logger:
        raise ConfigError(
            f"{origins['logto']}: option 'logto' cannot be used with option 'logger'"
            f" ({origins['logger']}): give only one (logto FILE is logger = file:FILE)"
        )


def _touch_not_a_log(config: Config, origins: Mapping[str, str]) -> None:
    """A touch-* file must not be a log file binserve writes: every line it writes changes the
    file's mtime, so each reload or reopen would set off the next, for ever. Nor log-backupname
    the log's own file."""
    logs = {}
    if config.logto:
        logs[os.path.realpath(config.logto)] = "logto"
    for name in ("logger", "req-logger"):
        spec = getattr(config, name.replace("-", "_"))
        if spec is not None and spec.kind == "file":
            logs.setdefault(os.path.realpath(spec.path), name)
    if not logs:
        return
    backup = config.log_backupname
    owner = logs.get(os.path.realpath(backup)) if backup else None
    if owner in ("logto", "logger"):
        raise ConfigError(
            f"{origins['log-backupname']}: option 'log-backupname' ({backup}) is the file option "
            f"'{owner}' writes ({origins[owner]}): log-maxsize would rename it to itself and "
            "it would grow for ever; name another file"
        )
    for name in ("touch-reload", "touch-chain-reload", "touch-logreopen"):
        for path in getattr(config, name.replace("-", "_")):
            log_option = logs.get(os.path.realpath(path))
            if log_option is not None:
                raise ConfigError(
                    f"{origins[name]}: option '{name}' ({path}) is the file option '{log_option}' writes "
                    f"({origins[log_option]}): each line logged would touch it; name a file of its own"
                )


def _cheaper_bounds(config: Config, origins: Mapping[str, str]) -> None:
    """cheaper below processes (as uWSGI requires), cheaper-initial between them, busyness min below max."""
    if not config.cheaper:
        return
    if config.cheaper >= config.processes:
        raise ConfigError(
            f"{origins['cheaper']}: option 'cheaper' ({config.cheaper}) must be below option 'processes' "
            f"({config.processes}): cheaper is the fewest workers, processes the most"
        )
    initial = config.cheaper_initial
    if initial and not config.cheaper <= initial <= config.processes:
        raise ConfigError(
            f"{origins['cheaper-initial']}: option 'cheaper-initial' ({initial}) must be within option "
            f"'cheaper' ({config.cheaper}) .. option 'processes' ({config.processes})"
        )
    if config.cheaper_busyness_min >= config.cheaper_busyness_max:
        where = origins.get("cheaper-busyness-min") or origins["cheaper-busyness-max"]
        raise ConfigError(
            f"{where}: option 'cheaper-busyness-min' ({config.cheaper_busyness_min}) must be below option "
            f"'cheaper-busyness-max' ({config.cheaper_busyness_max})"
        )


def load(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Config:
    """Build the Config from command-line ``argv`` (without the program name) and ``environ``."""
    environ = os.environ if environ is None else environ
    args = vars(_parser().parse_args(list(argv)))
    if args.pop("help_options", False):
        print(options_table())
        raise SystemExit(0)
    if args.pop("help_signals", False):
        print(signals_table())
        raise SystemExit(0)
    ini_specs = ([environ[INI_ENV]] if INI_ENV in environ else []) + list(args.pop("ini", []))
    # The environment and the command line, in rising precedence. They are read before the ini
    # files because %(name) in a file sees their values and --set-placeholder definitions.
    outside = _from_environment(environ) + [
        (OPTIONS[name], name, raw, f"--{name}") for name, raws in args.items() for raw in raws
    ]
    raws: dict[str, list[str]] = {}
    for opt, _, raw, _ in outside:
        raws.setdefault(opt.name, []).append(raw)
    given = {
        name: [(raw, where) for opt, _, raw, where in outside if opt.name == name] for name in NEEDED_BY_FILES
    }
    placeholders = dict(split_placeholder(raw, where) for raw, where in given["set-placeholder"])
    settings = read(
        ini_specs,
        environ,
        inherit=given["inherit"],
        include=given["include"],
        outer=raws,
        placeholders=placeholders,
    )
    config = Config()
    for spec in ini_specs:
        config.set("ini", spec)
    origins: dict[str, str] = {}  # option -> where its value last came from
    for setting in settings:
        config.set(setting.name, _convert(OPTIONS[setting.name], setting.raw, setting.where, setting.key))
        origins[setting.name] = setting.where
    for opt, name, raw, where in outside:
        config.set(opt.name, _convert(opt, raw, where, name))
        origins[opt.name] = where
    _one_app(config, origins)
    _one_log(config, origins)
    _touch_not_a_log(config, origins)
    _cheaper_bounds(config, origins)
    return config

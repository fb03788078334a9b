"""Reading options from ini files, the environment and the command line.

Everything goes through the one table in ``options.py``. Precedence, lowest first:
defaults < ini files < ``BINSERVE_*`` environment variables < command line. Repeatable
options (``socket``, ``pythonpath``, ``env``) accumulate across all sources, as in uWSGI.
Any bad input is a ``ConfigError`` whose message names where it came from
(``app.ini:4: ...``, ``--processes: ...``, ``BINSERVE_LISTEN: ...``).
"""

from __future__ import annotations

import argparse
import difflib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .options import ALIASES, OPTIONS, UWSGI_ONLY, Option, options_table, resolve

ENV_PREFIX = "BINSERVE_"
INI_SECTIONS = ("binserve", "uwsgi")


class ConfigError(Exception):
    """A bad option, value or file; the message says where."""


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


def _unknown(name: str, where: str) -> ConfigError:
    if name in UWSGI_ONLY:
        return ConfigError(f"{where}: option '{name}' is a uWSGI option that binserve does not implement")
    close = difflib.get_close_matches(name, list(OPTIONS) + list(ALIASES), n=1, cutoff=0.75)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"{where}: unknown option '{name}'{hint}")


def _convert(opt: Option, raw: str, where: str, name: str) -> Any:
    try:
        return opt.convert(raw)
    except ValueError as exc:
        raise ConfigError(f"{where}: option '{name}': {exc}") from None


def _apply(config: Config, name: str, raw: str, where: str) -> None:
    try:
        opt = resolve(name)
    except KeyError:
        raise _unknown(name, where) from None
    config.set(opt.name, _convert(opt, raw, where, name))


def read_ini(spec: str) -> Iterator[tuple[str, str, str]]:
    """Yield ``(key, raw value, "file:line")`` from the binserve or uwsgi section of an ini file.

    ``spec`` is ``FILE`` or ``FILE:section``. A bare key (no ``=``) means true, as in uWSGI;
    ``;`` and ``#`` start comment lines; keys may repeat.
    """
    path, _, wanted = spec.partition(":")
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ini file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    sections = (wanted,) if wanted else INI_SECTIONS
    found: dict[str, list[tuple[str, str, str]]] = {}
    current: list[tuple[str, str, str]] | None = None
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text[0] in ";#":
            continue
        where = f"{path}:{number}"
        if text.startswith("["):
            if not text.endswith("]"):
                raise ConfigError(f"{where}: malformed section header {text!r}")
            name = text[1:-1].strip()
            current = found.setdefault(name, []) if name in sections else None
            continue
        if current is None:
            continue
        key, sep, value = text.partition("=")
        key = key.strip()
        if not key:
            raise ConfigError(f"{where}: line {text!r} has no option name")
        current.append((key, value.strip() if sep else "", where))
    for name in sections:
        if name in found:
            yield from found[name]
            return
    names = " or ".join(f"[{s}]" for s in sections)
    raise ConfigError(f"{path}: no {names} section")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="binserve",
        description="Serve a WSGI app over the uwsgi protocol (behind nginx's uwsgi_pass).",
        allow_abbrev=False,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--help-options", action="store_true", help="print every option as a markdown table")
    for opt in OPTIONS.values():
        flags = [f"--{opt.name}"] + [f"--{a}" for a, target in ALIASES.items() if target == opt.name]
        kwargs: dict[str, Any] = {"dest": opt.name, "help": opt.help, "metavar": opt.metavar}
        if opt.flag:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        kwargs["action"] = "append"
        parser.add_argument(*flags, **kwargs)
    return parser


def load(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Config:
    """Build the Config from command-line ``argv`` (without the program name) and ``environ``."""
    environ = os.environ if environ is None else environ
    args = vars(_parser().parse_args(list(argv)))
    if args.pop("help_options", False):
        print(options_table())
        raise SystemExit(0)
    config = Config()
    ini_specs = list(args.pop("ini", []))
    if f"{ENV_PREFIX}INI" in environ:
        ini_specs.insert(0, environ[f"{ENV_PREFIX}INI"])
    for spec in ini_specs:
        config.set("ini", spec)
        for key, raw, where in read_ini(spec):
            if key == "ini":
                raise ConfigError(f"{where}: 'ini' inside an ini file is not supported; use include")
            _apply(config, key, raw, where)
    for key, raw in environ.items():
        if key.startswith(ENV_PREFIX) and key != f"{ENV_PREFIX}INI":
            name = key[len(ENV_PREFIX) :].lower().replace("_", "-")
            _apply(config, name, raw, key)
    for name, raws in args.items():
        opt = OPTIONS[name]
        for raw in raws:
            config.set(name, _convert(opt, raw, f"--{name}", name))
    return config

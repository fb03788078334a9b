"""uWSGI's ini syntax, read into a flat list of option settings.

The rules are uWSGI's own, as its documentation states them and as its parser behaves where
the two differ; all of them are here:

* ``[binserve]``, else ``[uwsgi]``; ``FILE:section`` reads another section. ``key = value`` with
  whitespace around both ignored, ``;`` and ``#`` comment lines, a bare key meaning ``true``,
  keys repeating (a repeatable option collects them all, otherwise the last one wins).
* Magic variables are expanded as each line is read and name the file the line is in:
  ``%p`` absolute path, ``%d`` its directory with a trailing slash, ``%s`` file name, ``%n`` name
  without extension, ``%e`` extension, ``%c`` the directory's own name, ``%0``..``%9`` the
  directory's components, ``%x`` the section asked for after ``:`` (empty if none, as in uWSGI's
  code), ``%o`` the name as given, ``%i`` inode; upper case ``%P %D %S %N %E %C %X %O %I`` name the
  first ``--ini`` file instead (the vassal, even inside its templates); ``%h`` hostname, ``%v``
  working directory, ``%V`` binserve's version, ``%t``/``%T`` start time in s/us, ``%k`` CPUs,
  ``%u %U %g %G`` uid, user, gid, group, ``%[`` ESC, ``%%`` a literal ``%``.
* ``include = FILE`` (and uWSGI's ``ini = FILE``) reads FILE at that point; ``FILE`` may be
  ``:section`` for another section of the same file. ``inherit = FILE`` reads FILE as a template:
  its lines go before those of the file naming it, so the file's own values win.
* Once every file is read, each value's ``$(VAR)``, ``@(file)`` and ``%(name)`` are replaced,
  innermost first: ``%(name)`` by the value ``name`` ends up with (an option's last value, the
  first for a repeatable one, ``BINSERVE_*`` and the command line included; a placeholder's last
  definition, ``--set-placeholder`` winning), ``%(a + b * 2)`` as uWSGI's left-to-right math.
  An unknown key that some ``%(...)`` names is a placeholder; any other unknown key is an error.

Where binserve differs from uWSGI, on purpose (uWSGI silently keeps going in each case):
* an unknown magic variable, an unset ``$(VAR)``, an unknown ``%(name)``, a reference loop, an
  unreadable or looping include are errors naming the file and line. ``$(VAR:-default)`` (unset
  or empty) and ``$(VAR-default)`` (unset) give a fallback; ``$(VAR:-)`` an empty one.
* relative names in ``include``, ``inherit`` and ``@(...)`` are relative to the file they are
  written in, not to the working directory, so a file means the same wherever binserve starts.
* an inherited template's values are defaults (uWSGI applies them last, so they override the
  vassal, which surprises its users), and their ``$()``, ``@()`` and ``%()`` are expanded too.
* text that ``$()``, ``@()`` or ``%()`` inserts is not scanned again for more syntax.

A file may be hostile (a vassal directory others can write), so each load is bounded, and each
bound is an error naming the file and line: files are read only if regular and at most 1 MiB
(``safefile.read_bounded``; a FIFO cannot block the read), a NUL byte is refused, includes nest
at most ``MAX_DEPTH`` deep, names are at most ``MAX_NAME`` characters, one load reads at most
``MAX_READS`` files, ``MAX_LINES`` option lines and ``MAX_TEXT`` bytes of files and expanded
values, a value is at most ``MAX_VALUE`` characters, ``$()``/``@()``/``%()`` nest at most
``MAX_NESTING`` deep (references included), and ``%()`` math stays within 64-bit integers, as
uWSGI's C math does (where it would wrap around).

Longer than our other modules because it is one grammar: the reader, its magic variables,
placeholders and math are rules of one language that refer to each other.
"""

from __future__ import annotations

import difflib
import grp
import os
import pwd
import re
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from importlib import metadata

from . import safefile
from .options import ALIASES, OPTIONS, UWSGI_ONLY, WHOLE, Option, resolve
from .requestlog import VARIABLES

SECTIONS = ("binserve", "uwsgi")
LOADERS = frozenset({"include", "ini", "inherit"})
PLACEHOLDER = "set-placeholder"

# uWSGI's own config-language keys: the error names them as uWSGI's, not as unknown options.
UWSGI_SYNTAX = frozenset(
    """
    set get declare-option declare-option2 resolve for for-glob for-times for-readline endfor end-for
    if-opt if-not-opt if-env if-not-env ifenv if-reload if-not-reload if-hostname if-not-hostname
    if-hostname-match if-not-hostname-match if-exists if-not-exists ifexists if-plugin if-not-plugin
    ifplugin if-file if-not-file if-dir if-not-dir ifdir if-directory endif end-if else end blacklist
    end-blacklist whitelist end-whitelist inject-before inject-after xml xmlconfig yaml yml json js
    config fallback-config sqlite ldap
    """.split()
)

_MAGIC = re.compile(r"%(.?)")
_OPEN = re.compile(r"[$@%]\(")
_PARENTHESIS = re.compile(r"[()]")
_REFERENCE = re.compile(r"%\(([^()]*)\)")
_ARITHMETIC = ("+", "-", "*", "/")
_FIRST_FILE_MAGIC = "PDSNECXOI"
_INT64 = range(-(1 << 63), 1 << 63)

MAX_DEPTH = 32  # files including files
MAX_READS = 1000  # files read in one load, @() included
MAX_LINES = 10_000  # option lines in one load, counted again each time a file is included
MAX_TEXT = 16 << 20  # bytes read and characters expanded in one load
MAX_VALUE = 64 << 10  # characters of one value
MAX_NESTING = 32  # $(), @() and %() within one another, following references
MAX_NAME = 256  # characters of an option or placeholder name: suggestions compare names pairwise


class ConfigError(Exception):
    """A bad option, value or file; the message says where (``app.ini:4: ...``)."""


class _Exceeded(Exception):
    """A bound of one load was reached; the caller says where."""


@dataclass(frozen=True)
class Line:
    """A ``key = value`` line of a section that was read, its magic variables expanded."""

    key: str
    value: str
    path: str
    number: int

    @property
    def where(self) -> str:
        """``file:line``, the start of every message about this line."""
        return f"{self.path}:{self.number}"


@dataclass(frozen=True)
class Setting:
    """An option's value from an ini file, every variable expanded, ready for its converter."""

    name: str  # the option's own name, aliases resolved
    key: str  # the key as written, for messages
    raw: str
    where: str


def unknown_option(name: str, where: str) -> ConfigError:
    """The error for a name binserve has no option for; uWSGI's own options are named as such."""
    if name in UWSGI_ONLY or name in UWSGI_SYNTAX:
        return ConfigError(f"{where}: option '{name}' is a uWSGI option that binserve does not implement")
    return ConfigError(f"{where}: unknown option '{name}'{_suggest(name, [*OPTIONS, *ALIASES])}")


def split_placeholder(raw: str, where: str) -> tuple[str, str]:
    """``NAME=value`` of ``set-placeholder``; like uWSGI, a placeholder may not take an option's name."""
    name, sep, value = raw.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ConfigError(f"{where}: option '{PLACEHOLDER}': expected NAME=value, got {raw!r}")
    if _option(name) is not None:
        raise ConfigError(f"{where}: '{name}' is an option name; a placeholder needs a name of its own")
    return name, value.strip()


def read(
    specs: Sequence[str],
    environ: Mapping[str, str],
    *,
    inherit: Sequence[tuple[str, str]] = (),
    include: Sequence[tuple[str, str]] = (),
    outer: Mapping[str, Sequence[str]] | None = None,
    placeholders: Mapping[str, str] | None = None,
) -> list[Setting]:
    """Read the ini files ``specs`` (``FILE`` or ``FILE:section``) into option settings, in order.

    ``inherit`` and ``include`` are ``(FILE, where)`` pairs given outside any file (the command
    line): templates read before every file, and files read after them. ``outer`` holds the raw
    values that ``BINSERVE_*`` variables and the command line give options, by option name, and
    ``placeholders`` their ``set-placeholder`` definitions: both win over the files in ``%(...)``.
    Raises ``ConfigError`` at the first problem.
    """
    loader = _Loader(environ, specs[0] if specs else None, outer or {}, placeholders or {})
    lines = [line for spec, where in inherit for line in loader.read(_locate(spec), where, "inherit")]
    for spec in specs:
        lines += loader.read(spec)
    for spec, where in include:
        lines += loader.read(_locate(spec), where, "include")
    return loader.settings(lines)


def _option(name: str) -> Option | None:
    try:
        return resolve(name)
    except KeyError:
        return None


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate that ``name`` is most likely a misspelling of, if one is close enough."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.75)
    return close[0] if close else None


def _suggest(name: str, candidates: Iterable[str]) -> str:
    close = closest(name, candidates)
    return f" (did you mean '{close}'?)" if close else ""


def _split(spec: str) -> tuple[str, str]:
    # The last colon, as uWSGI's uwsgi_get_last_char: "dir/app.ini:staging".
    path, sep, section = spec.rpartition(":")
    return (path, section) if sep else (spec, "")


def _locate(spec: str, current: str = "") -> str:
    """An included file's name: relative to the file naming it; ``:section`` alone means that file."""
    path, section = _split(spec)
    path = os.path.normpath(os.path.join(os.path.dirname(current), path)) if path else current
    return f"{path}:{section}" if section else path


def _reason(exc: OSError | UnicodeDecodeError | _Exceeded) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text ({exc.reason} at byte {exc.start})"
    if isinstance(exc, _Exceeded):
        return str(exc)
    return exc.strerror or str(exc)


def _process_magic() -> dict[str, str]:
    """Magic variables that do not depend on the file, taken once per load as uWSGI does at startup."""
    now = time.time()
    uid, gid = os.getuid(), os.getgid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    try:
        version = metadata.version("binserve")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "%": "%",
        "h": socket.gethostname(),
        "v": os.getcwd(),
        "V": version,
        "t": str(int(now)),
        "T": str(int(now * 1_000_000)),
        "k": str(os.cpu_count() or 1),
        "u": str(uid),
        "U": user,
        "g": str(gid),
        "G": group,
        "[": "\033",
    }


def _file_magic(spec: str) -> dict[str, str]:
    """The magic variables naming one file (lower case), as uWSGI's config_magic_table_fill."""
    path, section = _split(spec)
    # abspath, not realpath: a vassal that is a symlink keeps its own name (uWSGI does the same).
    full = os.path.abspath(path)
    directory, name = os.path.split(full)
    stem, dot, extension = name.rpartition(".")
    if not dot:
        stem, extension = name, ""
    parts = [part for part in directory.split("/") if part]
    try:
        inode = str(os.lstat(full).st_ino)
    except OSError:
        inode = ""
    table = {
        "p": full,
        "d": directory.rstrip("/") + "/",
        "s": name,
        "n": stem,
        "e": extension,
        "c": parts[-1] if parts else "",
        "x": section,
        "o": spec,
        "i": inode,
    }
    table.update({str(i): parts[i] if i < len(parts) else "" for i in range(10)})
    return table


def _too_long(where: str, key: str) -> ConfigError:
    return ConfigError(f"{where}: the value of '{key}' is longer than {MAX_VALUE} characters")


def _magic(value: str, table: Mapping[str, str], where: str, key: str) -> str:
    def one(match: re.Match[str]) -> str:
        char = match.group(1)
        if char == "(":
            return "%("  # the start of a %(reference), resolved once every file is read
        if char in table:
            return table[char]
        if not char:
            raise ConfigError(f"{where}: a lone '%' ends the value (write %% for a literal %)")
        if char in "bjJ":  # the uWSGI binary's path and a C hash of the file's path
            raise ConfigError(f"{where}: magic variable '%{char}' is not supported by binserve")
        raise ConfigError(f"{where}: unknown magic variable '%{char}' (write %% for a literal %)")

    pieces: list[str] = []
    size, index = 0, 0
    # Piece by piece: a line of a thousand %p must fail before it is a thousand paths long.
    for match in _MAGIC.finditer(value):
        pieces += [value[index : match.start()], one(match)]
        size += len(pieces[-2]) + len(pieces[-1])
        if size > MAX_VALUE:
            raise _too_long(where, key)
        index = match.end()
    pieces.append(value[index:])
    if size + len(pieces[-1]) > MAX_VALUE:
        raise _too_long(where, key)
    return "".join(pieces)


def _section(path: str, content: str, wanted: str) -> list[tuple[int, str, str]] | None:
    """``(line number, key, value)`` of the wanted section (else binserve, else uwsgi); None if absent."""
    sections = (wanted,) if wanted else SECTIONS
    found: dict[str, list[tuple[int, str, str]]] = {}
    current: list[tuple[int, str, str]] | None = None
    for number, raw in enumerate(content.splitlines(), 1):
        if "\0" in raw:  # no file name, path or environment value can hold one
            raise ConfigError(f"{path}:{number}: the line contains a NUL byte")
        text = raw.strip()
        if not text or text[0] in ";#":
            continue
        if text.startswith("["):
            if not text.endswith("]"):
                raise ConfigError(f"{path}:{number}: malformed section header {text!r}")
            name = text[1:-1].strip()
            current = found.setdefault(name, []) if name in sections else None
            continue
        if current is None:
            continue
        key, sep, value = text.partition("=")
        if not key.strip():
            raise ConfigError(f"{path}:{number}: line {text!r} has no option name")
        if len(key.strip()) > MAX_NAME:
            raise ConfigError(f"{path}:{number}: an option name longer than {MAX_NAME} characters")
        current.append((number, key.strip(), value.strip() if sep else ""))
    return next((found[name] for name in sections if name in found), None)


def _pairs(text: str) -> dict[int, int]:
    """The index of each ``(`` in ``text`` to that of the ``)`` closing it; unclosed ones are absent.

    Found in one pass, so nested ``$($(...))`` cost no rescanning per level.
    """
    pairs: dict[int, int] = {}
    opened: list[int] = []
    for match in _PARENTHESIS.finditer(text):
        if match.group() == "(":
            opened.append(match.start())
        elif opened:
            pairs[opened.pop()] = match.start()
    return pairs


def _calculate(operator: str, left: int, right: int, inner: str, line: Line) -> int:
    if operator != "/":
        return {"+": left + right, "-": left - right, "*": left * right}[operator]
    if right == 0:
        raise ConfigError(f"{line.where}: %({inner}) divides by zero")
    quotient = abs(left) // abs(right)  # C's division truncates toward zero
    return quotient if (left < 0) == (right < 0) else -quotient


class _Loader:
    """One load: reads files into Lines (sections, magic, include, inherit), then resolves them."""

    def __init__(
        self,
        environ: Mapping[str, str],
        first: str | None,
        outer: Mapping[str, Sequence[str]],
        placeholders: Mapping[str, str],
    ) -> None:
        self.environ = environ
        self.outer = outer
        self.outer_placeholders = placeholders
        self.first = self._upper(first) if first else None
        self.reading: list[tuple[str, str, str]] = []  # (real path, section, name): include loops
        self.options: dict[str, list[Line]] = {}
        self.placeholders: dict[str, Line] = {}
        self.expanded: dict[Line, str] = {}
        self.resolving: list[str] = []  # %(names) being resolved: reference loops
        self.reads = 0
        self.lines = 0
        self.text = 0  # bytes read plus characters expanded, against MAX_TEXT
        self.nesting = 0  # _expand calls within one another

    @cached_property
    def common(self) -> dict[str, str]:
        """The magic variables every file shares, taken once (and only if a file is read)."""
        return _process_magic()

    @staticmethod
    def _upper(spec: str) -> dict[str, str]:
        table = _file_magic(spec)
        return {char: table[char.lower()] for char in _FIRST_FILE_MAGIC}

    # -- reading ----------------------------------------------------------------------------------
    def _charge(self, size: int) -> None:
        self.text += size
        if self.text > MAX_TEXT:
            raise _Exceeded(f"more than {MAX_TEXT} bytes of configuration in one load")

    def _read_text(self, path: str) -> str:
        """A file's text, within the bounds of one load."""
        self.reads += 1
        if self.reads > MAX_READS:
            raise _Exceeded(f"more than {MAX_READS} files read in one load")
        data = safefile.read_bounded(path)
        self._charge(len(data))
        # utf-8-sig: a byte-order mark from a Windows editor would otherwise hide the first [section].
        return data.decode("utf-8-sig")

    def read(self, spec: str, where: str | None = None, verb: str = "") -> list[Line]:
        """The Lines of one file's section, its includes in place and its templates first.

        ``where`` is the ``file:line`` (or ``--include``) whose ``verb`` asked for the file,
        None for an ``--ini`` file.
        """
        path, section = _split(spec)
        prefix = f"{where}: cannot {verb} '{spec}'" if where else path or spec
        key = (os.path.realpath(path), section)
        if key in [(real, sect) for real, sect, _ in self.reading]:
            chain = [name for _, _, name in self.reading] + [spec]
            raise ConfigError(f"{where}: include loop: {' -> '.join(chain)}")
        if len(self.reading) >= MAX_DEPTH:
            raise ConfigError(f"{prefix}: files nested more than {MAX_DEPTH} deep")
        try:
            text = self._read_text(path)
        except (OSError, UnicodeDecodeError, _Exceeded) as exc:
            reason = _reason(exc)
            if where is None and isinstance(exc, OSError):
                reason = f"cannot read ini file: {reason}"
            raise ConfigError(f"{prefix}: {reason}") from None
        entries = _section(path, text, section)
        if entries is None:
            names = " or ".join(f"[{s}]" for s in ((section,) if section else SECTIONS))
            raise ConfigError(f"{prefix}: no {names} section")
        self.lines += len(entries)
        if self.lines > MAX_LINES:
            raise ConfigError(f"{prefix}: more than {MAX_LINES} option lines in one load")
        if self.first is None:  # no --ini: the upper-case variables name the first file read
            self.first = self._upper(spec)
        magic = {**self.common, **_file_magic(spec), **self.first}
        self.reading.append((*key, spec))
        templates: list[Line] = []
        own: list[Line] = []
        for number, name, value in entries:
            line = Line(name, _magic(value, magic, f"{path}:{number}", name), path, number)
            self._expense(len(line.value), line)
            if name in LOADERS:
                # Files are read now, before any %(...) can be known: only $() and @() apply.
                target = _locate(self._expand(line.value, line, references=False), path)
                loaded = self.read(target, line.where, "inherit" if name == "inherit" else "include")
                (templates if name == "inherit" else own).extend(loaded)
                line = replace(line, value=target)
            own.append(line)
        self.reading.pop()
        return templates + own

    # -- resolving --------------------------------------------------------------------------------
    def settings(self, lines: list[Line]) -> list[Setting]:
        """Sort keys into options and placeholders, then expand every option's value."""
        referenced = {
            token
            for line in lines
            for body in _REFERENCE.findall(line.value)
            for token in body.split()
            if not token.isdigit() and token not in (*_ARITHMETIC, "++", "--")
        }
        kept: list[tuple[Option, Line]] = []
        for line in lines:
            opt = _option(line.key)
            if opt is None:
                if line.key in UWSGI_ONLY or line.key in UWSGI_SYNTAX:
                    raise unknown_option(line.key, line.where)
                if line.key not in referenced:
                    raise self._unreferenced(line, referenced, lines)
                self.placeholders[line.key] = line  # the last definition wins, as for options
                continue
            if opt.name == PLACEHOLDER:
                name, value = split_placeholder(line.value, line.where)
                self.placeholders[name] = replace(line, key=name, value=value)
            self.options.setdefault(opt.name, []).append(line)
            kept.append((opt, line))
        # An include's value is already the file it read; expanding it again could misread a "$(".
        raws = [line.value if line.key in LOADERS else self._expanded(line) for _, line in kept]
        return [
            Setting(opt.name, line.key, raw, line.where) for (opt, line), raw in zip(kept, raws, strict=True)
        ]

    def _unreferenced(self, line: Line, referenced: set[str], lines: list[Line]) -> ConfigError:
        """An unknown key; if a %(reference) to nothing is spelled like it, the typo is probably there."""
        defined = {other.key for other in lines} | set(self.outer_placeholders)
        defined |= {
            other.value.partition("=")[0].strip()
            for other in lines
            if _option(other.key) is OPTIONS[PLACEHOLDER]
        }
        dangling = [name for name in referenced - defined if _option(name) is None]
        close = closest(line.key, dangling)
        if close:
            return ConfigError(
                f"{line.where}: unknown option '{line.key}' (never referenced as %({line.key});"
                f" is %({close}) a misspelling?)"
            )
        return unknown_option(line.key, line.where)

    def _expense(self, size: int, line: Line) -> None:
        try:
            self._charge(size)
        except _Exceeded as exc:
            raise ConfigError(f"{line.where}: {exc}") from None

    def _expanded(self, line: Line) -> str:
        if line not in self.expanded:
            value = self._expand(line.value, line)
            self._expense(len(value), line)
            self.expanded[line] = value
        return self.expanded[line]

    def _expand(self, text: str, line: Line, references: bool = True) -> str:
        """``text`` with its ``$()``, ``@()`` and ``%()`` replaced, the innermost first."""
        return self._expand_span(text, _pairs(text), 0, len(text), line, references)

    def _expand_span(
        self, text: str, pairs: dict[int, int], start: int, stop: int, line: Line, references: bool
    ) -> str:
        """``text[start:stop]`` expanded; ``pairs`` maps each ``(`` of ``text`` to its ``)``."""
        if self.nesting >= MAX_NESTING:
            raise ConfigError(f"{line.where}: '$(', '@(' and '%(' nested more than {MAX_NESTING} deep")
        self.nesting += 1
        try:
            return self._expand_pieces(text, pairs, start, stop, line, references)
        finally:
            self.nesting -= 1

    def _expand_pieces(
        self, text: str, pairs: dict[int, int], start: int, stop: int, line: Line, references: bool
    ) -> str:
        pieces: list[str] = []
        size, index = 0, start
        while match := _OPEN.search(text, index, stop):
            end = pairs.get(match.end() - 1, -1)
            if end < 0:
                raise ConfigError(f"{line.where}: '{match.group()}' is never closed in {text[start:stop]!r}")
            inner = self._expand_span(text, pairs, match.end(), end, line, references)
            pieces += [text[index : match.start()], self._replace(match.group()[0], inner, line, references)]
            size += len(pieces[-2]) + len(pieces[-1])
            if size > MAX_VALUE:
                raise _too_long(line.where, line.key)
            index = end + 1
        if size + stop - index > MAX_VALUE:
            raise _too_long(line.where, line.key)
        return "".join(pieces) + text[index:stop]

    def _replace(self, kind: str, inner: str, line: Line, references: bool) -> str:
        if kind == "$":
            return self._environment(inner, line)
        if kind == "@":
            return self._file_value(inner, line)
        if not references:
            raise ConfigError(
                f"{line.where}: '{line.key}' cannot use %({inner}): it is read before references"
            )
        tokens = inner.split()
        if not tokens:
            raise ConfigError(f"{line.where}: empty reference %()")
        if len(tokens) == 1 and self._request_log_variable(inner, line):
            return f"%({inner})"
        return self._value(tokens[0], line) if len(tokens) == 1 else self._math(inner, tokens, line)

    def _request_log_variable(self, name: str, line: Line) -> bool:
        """Whether ``%(name)`` in ``line`` is left for log-format, whose variables share the syntax.

        In a log-format value, a request-log variable stays one, and so does a name the file
        does not define: log-format then names it as an unknown variable.
        """
        if ALIASES.get(line.key, line.key) != "log-format":
            return False
        if name in VARIABLES or name.startswith("var."):
            return True
        return _option(name) is None and name not in self.placeholders and name not in self.outer_placeholders

    def _file_value(self, inner: str, line: Line) -> str:
        """What ``@(inner)`` stands for: the file's text, stripped."""
        path = os.path.join(os.path.dirname(line.path), inner)
        try:
            text = self._read_text(path).strip()
        except (OSError, UnicodeDecodeError, _Exceeded) as exc:
            raise ConfigError(f"{line.where}: cannot read @({inner}): {_reason(exc)}") from None
        if "\0" in text:
            raise ConfigError(f"{line.where}: cannot read @({inner}): it contains a NUL byte")
        return text

    def _environment(self, inner: str, line: Line) -> str:
        # uWSGI's forms: VAR:-default (unset or empty), VAR-default (unset only).
        for separator, or_empty in ((":-", True), ("-", False)):
            name, found, default = inner.partition(separator)
            if found:
                value = self.environ.get(name)
                return default if value is None or (or_empty and not value) else value
        if inner not in self.environ:
            raise ConfigError(
                f"{line.where}: environment variable '{inner}' is not set"
                f" (write $({inner}:-default) for a fallback)"
            )
        return self.environ[inner]

    def _math(self, inner: str, tokens: list[str], line: Line) -> str:
        """uWSGI's placeholder math: a left-to-right pipeline; two values in a row are concatenated."""

        def number(text: str) -> int:
            word = text.strip()
            if not WHOLE.fullmatch(word):
                raise ConfigError(f"{line.where}: %({inner}) needs whole numbers, got {text!r}")
            # Twenty digits are past 64 bits already; longer ones would only cost time to convert.
            return in_range(int(word) if len(word) <= 20 else 1 << 64)

        def in_range(value: int) -> int:
            if value not in _INT64:
                raise ConfigError(f"{line.where}: %({inner}) goes beyond 64-bit integers")
            return value

        result, operator = "", ""
        for token in tokens:
            if token in _ARITHMETIC:
                operator = token  # stays in force for the following values, as in uWSGI
            elif token in ("++", "--"):
                result, operator = str(in_range(number(result or "0") + (1 if token == "++" else -1))), ""
            else:
                value = token if token.isdigit() else self._value(token, line)
                if not operator:
                    result += value
                    if len(result) > MAX_VALUE:
                        raise _too_long(line.where, line.key)
                    continue
                left, right = number(result or "0"), number(value)
                result = str(in_range(_calculate(operator, left, right, inner, line)))
        return result

    def _value(self, name: str, line: Line) -> str:
        """What ``%(name)`` stands for; see the module docstring."""
        if name in self.resolving:
            chain = " -> ".join(f"%({n})" for n in [*self.resolving, name])
            raise ConfigError(f"{line.where}: reference loop: {chain}")
        self.resolving.append(name)
        try:
            opt = _option(name)
            if opt is not None:
                given, outer = self.options.get(opt.name, []), self.outer.get(opt.name, [])
                if opt.repeatable and (given or outer):
                    return self._expanded(given[0]) if given else outer[0]
                if outer:
                    return outer[-1]
                if given:
                    return self._expanded(given[-1])
                raise ConfigError(f"{line.where}: %({name}) refers to option '{opt.name}', which is not set")
            if name in self.outer_placeholders:
                return self.outer_placeholders[name]
            if name in self.placeholders:
                return self._expanded(self.placeholders[name])
            known = [*self.placeholders, *self.outer_placeholders, *OPTIONS]
            raise ConfigError(f"{line.where}: unknown reference %({name}){_suggest(name, known)}")
        finally:
            self.resolving.pop()

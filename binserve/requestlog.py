"""What a request line says: uWSGI's default line, ``log-format``, or one JSON object per request.

The default line is uWSGI's, field by field, so the parsers, fail2ban rules and dashboards
written for uWSGI read binserve's lines unchanged. ``log-format`` takes uWSGI's ``%(name)``
variables; it is compiled once, when a core starts, into one Python function whose body is a
single f-string (no per-request parsing), and the variables that cost a system call (``rss``,
``vsz``...) are read only when the format names them. ``log-req-encoder = json`` writes the
same variables as the keys of one JSON object per line.

Peer text (the URI, headers, the address) reaches the environ as latin-1-decoded bytes
(PEP 3333): lines show those bytes decoded as UTF-8, invalid bytes as ``\\xNN``, and
control characters escaped, so a peer can neither garble a line nor start one of its own.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from typing import Any

from .log import printable, write_request

# uWSGI's request-log variables that binserve fills, and what each one is.
VARIABLES: dict[str, str] = {
    "addr": "the client's address (REMOTE_ADDR; X-Forwarded-For with `log-x-forwarded-for`)",
    "user": "REMOTE_USER",
    "method": "REQUEST_METHOD",
    "uri": "REQUEST_URI",
    "proto": "SERVER_PROTOCOL",
    "host": "the Host header",
    "uagent": "the User-Agent header",
    "referer": "the Referer header",
    "status": "the response status code",
    "size": "bytes sent: headers and body",
    "rsize": "bytes of the response body sent",
    "hsize": "bytes of the status line and headers sent",
    "headers": "headers sent",
    "switches": "pieces the response body came in",
    "cl": "the request's CONTENT_LENGTH",
    "vars": "request vars, keys and values counted apart (2 per var)",
    "pktsize": "bytes of the request's vars block",
    "modifier1": "the packet's modifier1",
    "modifier2": "the packet's modifier2",
    "msecs": "response time in milliseconds",
    "micros": "response time in microseconds",
    "secs": "response time in seconds, to the microsecond",
    "time": "start of the request, seconds since the epoch",
    "tmsecs": "start of the request, milliseconds since the epoch",
    "tmicros": "start of the request, microseconds since the epoch",
    "epoch": "when the line is written, seconds since the epoch",
    "ctime": "start of the request as ctime() writes it (`Wed Nov 25 23:05:38 2026`)",
    "ltime": "start of the request in local time, as Apache logs (`25/Nov/2026:23:05:38 +0000`)",
    "ftime": "the same as `ltime`",
    "pid": "the worker's pid",
    "wid": "the worker's id (1..processes)",
    "core": "the core (thread) id in the worker, from 0",
    "rss": "the worker's resident memory in bytes (read per request, only if used)",
    "vsz": "the worker's address space in bytes (read per request, only if used)",
    "rssM": "`rss` in megabytes",
    "vszM": "`vsz` in megabytes",
    "var.NAME": "the request var NAME (as nginx sent it, `var.HTTP_X_REQUEST_ID` say)",
}

# Keys of a JSON line when no log-format chooses them.
JSON_DEFAULT = (
    "time addr user method uri proto status size rsize hsize micros host uagent referer pid wid core"
).split()

ENCODERS = ("json",)

_REFERENCE = re.compile(r"%\(([^()]*)\)")

# The environ key each peer-text variable reads (addr is set apart: log-x-forwarded-for).
_ENVIRON = {
    "user": "REMOTE_USER",
    "method": "REQUEST_METHOD",
    "proto": "SERVER_PROTOCOL",
    "host": "HTTP_HOST",
    "uagent": "HTTP_USER_AGENT",
    "referer": "HTTP_REFERER",
}
# Variables computed from the request (arguments of the compiled function: env, head, ex,
# sent, start, end) and from what the compiler baked in.
_NUMBERS = {
    "status": "ex.code",
    "size": "sent",
    "rsize": "max(sent - ex.head_size, 0)",
    "hsize": "ex.head_size",
    "headers": "ex.header_count",
    "switches": "ex.pieces",
    "cl": "head.content_length",
    "vars": "2 * head.var_count",
    "pktsize": "head.size",
    "modifier1": "head.modifier1",
    "modifier2": "head.modifier2",
    "msecs": "int((end - start) * 1000)",
    "micros": "int((end - start) * 1000000)",
    "time": "int(start)",
    "tmsecs": "int(start * 1000)",
    "tmicros": "int(start * 1000000)",
    "epoch": "int(end)",
    "rss": "_memory()[1]",
    "vsz": "_memory()[0]",
    "rssM": "_memory()[1] >> 20",
    "vszM": "_memory()[0] >> 20",
}
_TEXTS = {
    "secs": "f'{end - start:.6f}'",
    "ctime": "_ctime(start)",
    "ltime": "_ltime(start)",
    "ftime": "_ltime(start)",
}


def variables(fmt: str) -> list[str]:
    """The variables ``fmt`` names, in order; ValueError naming the first one binserve does not know."""
    names = _REFERENCE.findall(fmt)
    for name in names:
        if name not in VARIABLES and not (name.startswith("var.") and len(name) > 4):
            known = ", ".join(n for n in VARIABLES if n != "var.NAME")
            raise ValueError(f"unknown request-log variable %({name}) (known: {known}, var.NAME)")
    return names


def to_log_format(text: str) -> str:
    """A request-log format with uWSGI's ``%(name)`` variables (checked, kept as written)."""
    variables(text)
    return text


def to_req_encoder(text: str) -> str:
    """json (one JSON object per request line)."""
    word = text.strip()
    if word not in ENCODERS:
        raise ValueError(
            f"expected json, got {text!r} (binserve's request lines offer the json encoder only)"
        )
    return word


def clean(value: Any) -> str:
    """Peer text for a log line: its bytes read as UTF-8 (bad ones ``\\xNN``), control characters escaped."""
    return printable(utf8(value))


def utf8(value: Any) -> str:
    """An environ string read back as the UTF-8 its latin-1 bytes were (invalid bytes as ``\\xNN``)."""
    text = value if type(value) is str else str(value)
    if text.isascii():
        return text
    try:
        return text.encode("latin-1").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # not wire bytes: text the app put in the environ
        return text


class _Clock:
    """One formatted time per second (``time.strftime`` costs microseconds; a second has many requests)."""

    def __init__(self, render: Callable[[float], str]) -> None:
        self.render = render
        self.second = -1
        self.text = ""

    def __call__(self, when: float) -> str:
        second = int(when)
        if second != self.second:
            # Two threads may both render the same second: the same text either way.
            self.text = self.render(second)
            self.second = second
        return self.text


def _memory_reader() -> Callable[[], tuple[int, int]]:
    """The worker's (vsz, rss) in bytes: one pread of /proc/self/statm, opened once."""
    fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
    page = os.sysconf("SC_PAGE_SIZE")

    def memory() -> tuple[int, int]:
        fields = os.pread(fd, 128, 0).split()
        return int(fields[0]) * page, int(fields[1]) * page

    return memory


Line = Callable[[dict[str, Any], Any, Any, int, float, float, int], None]


class Settings:
    """The options a request log is built from (taken from a Config by the core)."""

    def __init__(self, config: Any) -> None:
        self.format: str | None = config.log_format
        self.encoder: str | None = config.log_req_encoder
        self.forwarded: bool = config.log_x_forwarded_for
        self.micros: bool = config.log_micros


def build(
    settings: Settings, pid: int, wid: int, core: int, instance_requests: Callable[[], int] | None
) -> Line:
    """The function that writes one request's line: ``line(env, head, ex, sent, start, end, n)``.

    ``env`` the environ, ``head`` the request's Head, ``ex`` its Exchange, ``sent`` the bytes
    sent, ``start``/``end`` its times, ``n`` the worker's request count; ``instance_requests``
    gives every worker's count added up (None: this worker is the whole instance).
    """
    if settings.encoder == "json":
        names = variables(settings.format) if settings.format else JSON_DEFAULT
        return _compile(names, None, settings.forwarded, pid, wid, core)
    if settings.format:
        pieces = _REFERENCE.split(settings.format)
        return _compile(pieces[1::2], pieces[0::2], settings.forwarded, pid, wid, core)
    return _default(settings, pid, core, instance_requests)


def _addr(forwarded: bool) -> str:
    if forwarded:
        return "env.get('HTTP_X_FORWARDED_FOR') or env.get('REMOTE_ADDR', '')"
    return "env.get('REMOTE_ADDR', '')"


def _compile(
    names: list[str], literals: list[str] | None, forwarded: bool, pid: int, wid: int, core: int
) -> Line:
    """Compile a format (``literals`` between ``names``) or, with no literals, a JSON object of ``names``."""
    namespace: dict[str, Any] = {
        "_ctime": _Clock(time.ctime),
        "_ltime": _Clock(lambda second: time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(second))),
        "_clean": utf8 if literals is None else clean,
        "_write": write_request,
        "_dumps": json.dumps,
    }
    if any(name in ("rss", "vsz", "rssM", "vszM") for name in names):
        namespace["_memory"] = _memory_reader()
    body: list[str] = []
    values: list[str] = []
    peers: dict[str, str] = {}  # variable -> local name, each read and cleaned once
    for name in names:
        if name in _NUMBERS:
            values.append(_NUMBERS[name])
        elif name in _TEXTS:
            values.append(_TEXTS[name])
        elif name in ("pid", "wid", "core"):
            values.append(str({"pid": pid, "wid": wid, "core": core}[name]))
        else:
            local = peers.get(name)
            if local is None:
                local = peers[name] = f"p{len(peers)}"
                if name == "addr":
                    read = _addr(forwarded)
                elif name == "uri":
                    read = "env.get('REQUEST_URI') or env.get('PATH_INFO', '')"
                else:
                    key = _ENVIRON.get(name) or name[4:]
                    namespace[f"k{local}"] = key  # the name comes from the config: a constant, never code
                    read = f"env.get(k{local}, '')"
                body += [
                    f"    {local} = {read}",
                    f"    if type({local}) is not str or not ({local}.isascii() and {local}.isprintable()):",
                    f"        {local} = _clean({local})",
                ]
                if literals is not None:  # as uWSGI: an empty value is written "-"
                    body.append(f"    {local} = {local} or '-'")
            values.append(local)
    if literals is None:
        unique = dict(zip(names, values, strict=True))
        namespace["_keys"] = list(unique)
        fields = ", ".join(f"_keys[{i}]: {value}" for i, value in enumerate(unique.values()))
        body.append(f"    _write(_dumps({{{fields}}}) + '\\n')")
    else:
        parts = []
        for i, literal in enumerate(literals):
            namespace[f"t{i}"] = literal
            parts.append(f"{{t{i}}}")
            if i < len(values):
                parts.append(f"{{{values[i]}}}")
        body.append(f'    _write(f"{"".join(parts)}\\n")')
    source = "def line(env, head, ex, sent, start, end, n):\n" + "\n".join(body) + "\n"
    exec(compile(source, "<log-format>", "exec"), namespace)  # noqa: S102 - code made of our own fragments
    line: Line = namespace["line"]
    return line


def _default(settings: Settings, pid: int, core: int, instance_requests: Callable[[], int] | None) -> Line:
    """uWSGI's default request line, every field filled as uWSGI fills it."""
    ctime = _Clock(time.ctime)
    forwarded = settings.forwarded
    # The app id is 0: a worker serves one app. There are no async switches; "switches" counts
    # the pieces the body came in, which is what uWSGI's count is for a synchronous request.
    head_of = f"[pid: {pid}|app: 0|req: "
    scale, unit = (1000000, "micros") if settings.micros else (1000, "msecs")
    # What ends every line: the core id is fixed.
    tail = f" switches on core {core})\n"
    # The response's part of the line repeats from one request to the next (same status, same
    # headers): comparing its six values costs a third of formatting them. Each core has its own
    # line function, so this memo has one writer.
    memo: list[Any] = [None, ""]

    def line(env: dict[str, Any], head: Any, ex: Any, sent: int, start: float, end: float, n: int) -> None:
        get = env.get
        addr = (forwarded and get("HTTP_X_FORWARDED_FOR")) or get("REMOTE_ADDR", "")
        user = get("REMOTE_USER", "")
        method = get("REQUEST_METHOD", "")
        uri = get("REQUEST_URI") or get("PATH_INFO", "")
        proto = get("SERVER_PROTOCOL", "")
        # Only these come from the peer: testing them alone is a third of testing the line.
        peer = f"{addr}{user}{method}{uri}{proto}"
        head_sent = ex.head
        hsize = len(head_sent)
        body = sent - hsize
        if body < 0:  # the head itself was cut off
            body = 0
        stamp = ctime.text if int(start) == ctime.second else ctime(start)
        total = instance_requests() if instance_requests is not None else n
        key = (ex.code, head_sent, ex.pieces, ex.sent_file, proto)
        if key == memo[0]:
            response = memo[1]
        else:
            response = (
                f"{unit}{' via sendfile() ' if ex.sent_file else ' '}({proto} {ex.code}) "
                f"{ex.header_count} headers in {hsize} bytes ({ex.pieces}{tail}"
            )
            memo[0], memo[1] = key, response
        text = (
            f"{head_of}{n}/{total}] {addr} ({user}) {{{2 * head.var_count} vars in {head.size} bytes}} "
            f"[{stamp}] {method} {uri} => generated {body} bytes in {int((end - start) * scale)} {response}"
        )
        if not (peer.isascii() and peer.isprintable()):  # the common case pays these two tests
            text = clean(text[:-1]) + "\n"
        write_request(text)

    return line

"""Reading and modelling a binserve (or uWSGI) stats document, for ``binserve-top``.

An address (unix socket path, ``@abstract``, ``HOST:PORT`` or ``http://HOST:PORT/``) is parsed, one
document is read from it (msgpack, JSON, or either wrapped in an HTTP response) and decoded, and the
document is turned into display rows: a summary and a row per worker for an instance, or per vassal
for an emperor.
"""

from __future__ import annotations

import json
import math
import select
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import msgpack

Doc = dict[str, Any]

MAX_DOCUMENT = 64 * 1024 * 1024
#: Seconds of silence after which a raw-socket reader assumes an HTTP stats server waiting for a request.
HTTP_PROBE_DELAY = 0.3


class StatsError(Exception):
    """The stats address cannot be reached, or what it sent is not a stats document."""


# --------------------------------------------------------------------------------------------- reading


def parse_address(address: str) -> tuple[str, Any]:
    """Split ADDR into ``("http", (host, port, path))``, ``("tcp", (host, port))`` or ``("unix", path)``."""
    if address.startswith("http://"):
        parts = urlsplit(address)
        if not parts.hostname:
            raise StatsError(f"{address}: no host in the URL")
        try:
            port = parts.port or 80
        except ValueError:
            raise StatsError(f"{address}: bad port")
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return "http", (parts.hostname, port, path)
    if address.startswith("https://"):
        raise StatsError(f"{address}: https is not supported (stats-http is plain HTTP)")
    if address.startswith("@"):
        return "unix", "\0" + address[1:]
    if "/" not in address and ":" in address:
        host, _, port_text = address.rpartition(":")
        if port_text.isdigit():
            host = host.strip("[]")
            if host in ("", "0.0.0.0", "*"):
                host = "127.0.0.1"
            elif host == "::":
                host = "::1"
            return "tcp", (host, int(port_text))
    return "unix", address


def _connect(kind: str, target: Any, timeout: float) -> socket.socket:
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(target)
        except BaseException:
            sock.close()
            raise
        return sock
    return socket.create_connection((target[0], target[1]), timeout=timeout)


def fetch_raw(address: str, timeout: float = 2.0) -> bytes:
    """Connect to a stats server and read its whole document (raising :class:`StatsError`).

    For a ``http://`` address a ``GET`` is sent first. On a raw socket nothing is sent unless the
    server stays silent for :data:`HTTP_PROBE_DELAY` seconds: then it is taken for a ``stats-http``
    server (which, like uWSGI's, waits for a request) and is sent one.
    """
    kind, target = parse_address(address)
    deadline = time.monotonic() + timeout
    try:
        sock = _connect(kind, target[:2] if kind == "http" else target, timeout)
    except OSError as exc:
        raise StatsError(f"cannot connect to {address}: {exc.strerror or exc}")
    if kind == "http":
        host, port, path = target
        request = f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nAccept: */*\r\n\r\n".encode("latin-1")
    elif kind == "tcp":
        request = f"GET / HTTP/1.0\r\nHost: {target[0]}:{target[1]}\r\n\r\n".encode("latin-1")
    else:
        request = b"GET / HTTP/1.0\r\n\r\n"
    chunks: list[bytes] = []
    size = 0
    with sock:
        try:
            if kind == "http":
                sock.sendall(request)
            else:
                ready, _, _ = select.select([sock], [], [], min(HTTP_PROBE_DELAY, timeout))
                if not ready:
                    sock.sendall(request)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StatsError(f"{address}: timed out after {timeout:g} s reading the document")
                sock.settimeout(left)
                try:
                    chunk = sock.recv(262144)
                except ConnectionResetError:
                    if chunks:  # the server closed with our unread probe in its buffer: data is complete
                        break
                    raise
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_DOCUMENT:
                    raise StatsError(f"{address}: document larger than {MAX_DOCUMENT} bytes")
        except TimeoutError:
            raise StatsError(f"{address}: timed out after {timeout:g} s reading the document")
        except OSError as exc:
            raise StatsError(f"{address}: {exc.strerror or exc}")
    data = b"".join(chunks)
    if not data:
        raise StatsError(f"{address}: the server closed the connection without sending a document")
    return data


def decode(data: bytes) -> Doc:
    """Parse a stats document: HTTP-wrapped or not, JSON (uWSGI's layout) or msgpack."""
    if data.startswith(b"HTTP/"):
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep:
            head, sep, body = data.partition(b"\n\n")
        if not sep:
            raise StatsError("truncated HTTP response (no end of headers)")
        status_line = head.split(b"\n", 1)[0].decode("latin-1").strip()
        fields = status_line.split(None, 2)
        if len(fields) < 2 or fields[1] != "200":
            raise StatsError(f"HTTP error from the stats server: {status_line}")
        data = body
    stripped = data.lstrip()
    if not stripped:
        raise StatsError("empty document")
    doc: Any
    if stripped[:1] in (b"{", b"["):
        try:
            doc = json.loads(stripped.decode("utf-8", "replace"), strict=False)
        except ValueError as exc:
            raise StatsError(f"invalid JSON document: {exc}")
    else:
        try:
            doc = msgpack.unpackb(data, raw=False, strict_map_key=False, unicode_errors="replace")
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise StatsError(f"invalid msgpack document: {exc.__class__.__name__}: {exc}")
    if not isinstance(doc, dict):
        raise StatsError(f"not a stats document: a {type(doc).__name__}, not a map")
    if "vassals" not in doc and "workers" not in doc:
        raise StatsError("not a stats document: it has neither 'workers' nor 'vassals'")
    return doc


def fetch(address: str, timeout: float = 2.0) -> Doc:
    """Read and parse one stats document from ``address``."""
    return decode(fetch_raw(address, timeout))


def is_emperor(doc: Doc) -> bool:
    """Whether the document is an emperor's (it has the ``vassals`` key)."""
    return "vassals" in doc


# ---------------------------------------------------------------------------------------------- model


def _num(value: Any, default: float = 0.0) -> float:
    """A finite float from a number (or numeric string); ``default`` for anything else."""
    if isinstance(value, bool | int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return default
    else:
        return default
    return number if math.isfinite(number) else default


def _int(value: Any, default: int = 0) -> int:
    return int(_num(value, default))


def _text(value: Any) -> str:
    """A value as one printable token-friendly string (control characters replaced)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = "" if value is None else str(value)
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _dicts(value: Any) -> list[Doc]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def doc_time(doc: Doc) -> float:
    """The snapshot's time: binserve's ``time`` field, else now."""
    stamp = doc.get("time")
    if isinstance(stamp, int | float) and not isinstance(stamp, bool) and 0 < stamp < math.inf:
        return float(stamp)
    return time.time()


def human_size(n: float) -> str:
    """Bytes in K/M/G (base 1024, one decimal), like uwsgitop."""
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{int(n)}"


def human_duration(seconds: float) -> str:
    """A duration as ``42s``, ``5m03s``, ``1h02m`` or ``3d04h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def clock(epoch: float) -> str:
    """An epoch time as local ``HH:MM:SS``."""
    try:
        return time.strftime("%H:%M:%S", time.localtime(epoch))
    except (OverflowError, OSError, ValueError):
        return "?"


@dataclass
class WorkerRow:
    """One worker, with its numbers ready to display."""

    wid: int
    pid: int
    requests: int
    rps: float | None
    exceptions: int
    status: str
    avg_ms: float
    rss: int
    cpu: float | None
    tx: int
    respawns: int
    harakiri: int
    current: str


@dataclass
class InstanceSummary:
    """The header of an instance view."""

    version: str
    pid: int
    uptime: float | None
    requests: int
    rps: float | None
    tx: int
    sockets: list[str]


@dataclass
class VassalRow:
    """One vassal of an emperor."""

    vid: str
    pid: int | None
    state: str
    respawns: int
    loyal: int | None
    stats: str | None
    note: str


@dataclass
class EmperorSummary:
    """The header of an emperor view."""

    version: str
    pid: int
    dirs: list[str]
    tyrant: int
    vassals: int
    states: dict[str, int]


def current_request(worker: Doc, now: float) -> str:
    """``METHOD URI (Ns)`` of the worker's request in progress, or ``-``.

    binserve sends ``current``; for uWSGI the busy cores' ``vars`` and ``req_info`` are read.
    """
    if "current" in worker:
        cur = worker.get("current")
        if not isinstance(cur, dict):
            return "-"
        method = _text(cur.get("method")) or "?"
        uri = _text(cur.get("uri")) or "?"
        since = cur.get("since")
        if isinstance(since, int | float) and since > 0:
            return f"{method} {uri} ({max(0.0, now - since):.0f}s)"
        return f"{method} {uri}"
    busy: list[str] = []
    for core in _dicts(worker.get("cores")):
        if not core.get("in_request"):
            continue
        env: dict[str, str] = {}
        for item in core.get("vars") or []:
            key, sep, value = _text(item).partition("=")
            if sep:
                env.setdefault(key, value)
        method = env.get("REQUEST_METHOD", "?")
        uri = env.get("REQUEST_URI") or env.get("PATH_INFO", "?")
        if "REQUEST_URI" not in env and env.get("QUERY_STRING"):
            uri += "?" + env["QUERY_STRING"]
        info = core.get("req_info")
        start = info.get("request_start") if isinstance(info, dict) else None
        text = f"{method} {uri}" if env else "(in request)"
        if isinstance(start, int | float) and start > 0:
            text += f" ({max(0.0, now - start):.0f}s)"
        busy.append(text)
    if not busy:
        return "-"
    return busy[0] + (f" (+{len(busy) - 1} more)" if len(busy) > 1 else "")


class Sampler:
    """Remembers the previous snapshot of a stats address to turn request counters into rates."""

    def __init__(self) -> None:
        self.when: float | None = None
        self.per_worker: dict[int, int] = {}
        self.total: int | None = None

    def rates(self, doc: Doc) -> tuple[dict[int, float], float | None]:
        """Per-worker and total requests per second since the previous call (none on the first)."""
        now = doc_time(doc)
        counts = {_int(w.get("id")): _int(w.get("requests")) for w in _dicts(doc.get("workers"))}
        total = sum(counts.values())
        per: dict[int, float] = {}
        total_rate: float | None = None
        if self.when is not None and now > self.when:
            dt = now - self.when
            for wid, count in counts.items():
                before = self.per_worker.get(wid)
                if before is not None and count >= before:
                    per[wid] = (count - before) / dt
            if self.total is not None and total >= self.total:
                total_rate = (total - self.total) / dt
        self.when, self.per_worker, self.total = now, counts, total
        return per, total_rate


def instance_view(doc: Doc, sampler: Sampler | None = None) -> tuple[InstanceSummary, list[WorkerRow]]:
    """The header and worker rows (in worker id order) of an instance document."""
    now = doc_time(doc)
    per, total_rate = sampler.rates(doc) if sampler else ({}, None)
    rows: list[WorkerRow] = []
    for w in _dicts(doc.get("workers")):
        wid = _int(w.get("id"))
        cpu = w.get("cpu")
        rows.append(
            WorkerRow(
                wid=wid,
                pid=_int(w.get("pid")),
                requests=_int(w.get("requests")),
                rps=per.get(wid),
                exceptions=_int(w.get("exceptions")),
                status=_text(w.get("status")) or "-",
                avg_ms=_num(w.get("avg_rt")) / 1000.0,
                rss=_int(w.get("rss")),
                cpu=_num(cpu) if isinstance(cpu, int | float) and not isinstance(cpu, bool) else None,
                tx=_int(w.get("tx")),
                respawns=_int(w.get("respawn_count")),
                harakiri=_int(w.get("harakiri_count")),
                current=current_request(w, now),
            )
        )
    rows.sort(key=lambda r: r.wid)
    sockets = [
        f"{_text(s.get('name')) or '?'} {_int(s.get('queue'))}/{_int(s.get('max_queue'))}"
        for s in _dicts(doc.get("sockets"))
    ]
    uptime = doc.get("uptime")
    summary = InstanceSummary(
        version=_text(doc.get("version")) or "?",
        pid=_int(doc.get("pid")),
        uptime=_num(uptime) if isinstance(uptime, int | float) and not isinstance(uptime, bool) else None,
        requests=sum(r.requests for r in rows),
        rps=total_rate,
        tx=sum(r.tx for r in rows),
        sockets=sockets,
    )
    return summary, rows


def sort_workers(rows: Sequence[WorkerRow], key: str | None, descending: bool = True) -> list[WorkerRow]:
    """Rows by worker id, or by ``requests``/``memory``/``cpu``/``avg`` (ties keep id order)."""
    ordered = sorted(rows, key=lambda r: r.wid)
    getters: dict[str, Callable[[WorkerRow], float]] = {
        "requests": lambda r: r.requests,
        "memory": lambda r: r.rss,
        "cpu": lambda r: -1.0 if r.cpu is None else r.cpu,
        "avg": lambda r: r.avg_ms,
    }
    if key in getters:
        ordered.sort(key=getters[key], reverse=descending)
    return ordered


def _derived_state(vassal: Doc) -> str:
    """A uWSGI vassal's state from its pid and ready/accepting flags."""
    if not vassal.get("pid"):
        return "stopped"
    if vassal.get("cursed"):
        return "stopping"
    if not vassal.get("ready"):
        return "starting"
    if vassal.get("accepting"):
        return "running"
    return "reloading" if vassal.get("last_accepting") else "starting"


def emperor_view(doc: Doc) -> tuple[EmperorSummary, list[VassalRow]]:
    """The header and vassal rows (by id) of an emperor document, throttled vassals noted."""
    now = doc_time(doc)
    blacklist = {_text(b.get("id")): b for b in _dicts(doc.get("blacklist"))}
    rows: list[VassalRow] = []
    seen: set[str] = set()
    for v in _dicts(doc.get("vassals")):
        vid = _text(v.get("id")) or "?"
        seen.add(vid)
        state = _text(v.get("state")) or _derived_state(v)
        why = _text(v.get("why"))
        until = v.get("throttled_until")
        note = ""
        if isinstance(until, int | float) and until > now:
            note = f"throttled until {clock(until)}" + (f": {why}" if why else "")
        elif vid in blacklist:
            note = _blacklist_note(blacklist[vid])
            if why:
                note += f": {why}"
        elif why:
            note = why
        pid = v.get("pid")
        loyal = v.get("loyal")
        stats = v.get("stats")
        rows.append(
            VassalRow(
                vid=vid,
                pid=_int(pid) if isinstance(pid, int | float) and pid else None,
                state=state,
                respawns=_int(v.get("respawns")),
                loyal=_int(loyal) if loyal is not None else None,
                stats=_text(stats) if stats else None,
                note=note,
            )
        )
    for vid, entry in blacklist.items():
        if vid not in seen:
            rows.append(VassalRow(vid, None, "throttled", 0, 0, None, _blacklist_note(entry)))
    rows.sort(key=lambda r: r.vid)
    states: dict[str, int] = {}
    for row in rows:
        states[row.state] = states.get(row.state, 0) + 1
    dirs = doc.get("emperor")
    summary = EmperorSummary(
        version=_text(doc.get("version")) or "?",
        pid=_int(doc.get("pid")),
        dirs=[_text(d) for d in dirs] if isinstance(dirs, list) else ([_text(dirs)] if dirs else []),
        tyrant=_int(doc.get("emperor_tyrant")),
        vassals=len(rows),
        states=states,
    )
    return summary, rows


def _blacklist_note(entry: Doc) -> str:
    """``throttled until HH:MM:SS (attempt N)`` from a uWSGI-style blacklist entry."""
    last = _num(entry.get("last_attempt"))
    level_ms = _num(entry.get("throttle_level"))
    attempt = _int(entry.get("attempt"))
    if last > 0:
        return f"throttled until {clock(last + level_ms / 1000.0)} (attempt {attempt})"
    return f"throttled (attempt {attempt})"

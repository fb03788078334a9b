"""The stats server: one document per connection, msgpack or uWSGI's JSON layout.

One model, two encodings: the document is built once as plain data in uWSGI's layout (so the
real uwsgitop reads the JSON unchanged) with binserve's additions (per-worker
``cpu`` and ``current`` request, ``uptime``, real listen-queue lengths for unix sockets too).
Memory and CPU come from psutil on every request for stats: nothing to switch on.
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from collections.abc import Callable, Collection, Sequence
from typing import Any

import msgpack
import psutil

from . import __version__
from .listenq import listen_queue
from .log import log
from .scoreboard import Scoreboard
from .sockets import Listener, PeerFilter, SocketError, bind, inherited, remove_files

VERSION = f"binserve {__version__}"
STATS_TIMEOUT = 1.0  # accepted stats connections are non-blocking anyway; this only bounds TCP ones
STATS_BACKLOG = 16
# The stats socket a reloading master hands to its next image, apart from the uwsgi sockets.
STATS_INHERIT_ENV = "_BINSERVE_STATS_FD"


def bind_stats(address: str, option: str = "stats") -> Listener:
    """Bind the stats socket at ``address``; a failure names ``option``.

    Bound as the uwsgi sockets are: a stale unix socket file is replaced, a live one or a file
    that is not a socket is an error, never silently unlinked.
    """
    try:
        return bind(address, STATS_BACKLOG, None, STATS_TIMEOUT)
    except SocketError as exc:
        raise SocketError(f"option '{option}': {exc}") from None


def open_stats(address: str | None) -> Listener | None:
    """A master's stats socket: the one the previous image handed over for ``address``, or bound now.

    Bound with the uwsgi sockets, before privileges are dropped, and handed over on a reload:
    the re-executed image, unprivileged by then, never has to bind it again.
    """
    previous = inherited(STATS_INHERIT_ENV)
    listener = previous.pop(address, None) if address else None
    remove_files(list(previous.values()), None, vacuum=True)  # stats no longer wanted there
    if address and listener is None:
        listener = bind_stats(address)
    return listener


class StatsServer:
    """A listening socket that answers each connection with one document and closes it."""

    def __init__(self, listener: Listener, fmt: str, http: bool, allow_from: Sequence[str]) -> None:
        self.address = listener.name
        self.fmt = fmt
        self.http = http
        self.listener = listener
        self.sock = listener.sock
        log(f"stats server on {self.address} ({fmt}{', http' if http else ''})")
        # The document shows in-flight URIs with their query strings, the cwd and the uid: it is
        # for the same local infrastructure as the uwsgi sockets (uwsgi-allow-from or the default).
        self.peers = None if listener.is_unix else PeerFilter(allow_from)
        if self.peers is not None:
            self.peers.announce(f"stats server {self.address}", self.sock.getsockname()[0])

    def fileno(self) -> int:
        """The listening socket's descriptor."""
        return self.sock.fileno()

    def answer(self, build: Callable[[], dict[str, Any]]) -> None:
        """Accept one reader and send it the document ``build`` makes now."""
        try:
            conn, addr = self.sock.accept()
        except BlockingIOError:
            return
        except OSError as exc:  # out of descriptors, an aborted connection: the loop goes on
            log(f"stats: accept on {self.address} failed: {exc}")
            return
        if self.peers is not None and not self.peers.allows(addr[0]):
            conn.close()
            self.peers.refused("stats", addr[0], self.address)
            return
        with conn:
            try:
                document = encode(build(), self.fmt, self.http)
            except Exception:
                log("stats: building the document failed:\n" + traceback.format_exc().rstrip())
                return
            try:
                # One write that does not wait: a reader that does not read is dropped, so it
                # can never stall the master's loop.
                conn.setblocking(False)
                sent = conn.send(document)
                if sent < len(document):
                    log(f"stats: reader on {self.address} took {sent} of {len(document)} bytes; dropped")
                    return
                # Half-close and take whatever request an HTTP client sent, so closing does
                # not reset its connection before it has read the answer.
                conn.shutdown(socket.SHUT_WR)
                conn.recv(65536)
            except BlockingIOError:
                pass  # nothing was sent to us: nothing to drain
            except OSError as exc:
                log(f"stats: could not send the document: {exc}")

    def close(self) -> None:
        """Stop listening; a unix socket's file is removed."""
        remove_files([self.listener], None, vacuum=True)


def encode(document: dict[str, Any], fmt: str, http: bool) -> bytes:
    """The document as msgpack or JSON, wrapped in an HTTP response when asked."""
    if fmt == "json":
        body, kind = json.dumps(document).encode(), "application/json"
    else:
        body, kind = msgpack.packb(document), "application/msgpack"
    if not http:
        return body
    head = (
        f"HTTP/1.0 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class Recent:
    """Average response time over the requests since the previous snapshot, per worker.

    Workers keep only totals (cheap to write); the difference between two snapshots gives
    what uWSGI's running average is meant to show: how long requests take lately.
    """

    def __init__(self) -> None:
        self.last: dict[int, tuple[int, float, int]] = {}

    def avg_rt(self, wid: int, requests: int, running: float) -> int:
        """Microseconds per request lately (the previous figure when none arrived since)."""
        before_requests, before_running, before_avg = self.last.get(wid, (0, 0.0, 0))
        done = requests - before_requests
        if done > 0:
            avg = int((running - before_running) / done * 1_000_000)
        elif done < 0:  # the totals were reset (a reload): start over
            avg = int(running / requests * 1_000_000) if requests else 0
        else:
            avg = before_avg
        self.last[wid] = (requests, running, avg)
        return avg


class CpuMeter:
    """CPU percent per process between two snapshots (psutil needs the previous sample)."""

    def __init__(self) -> None:
        self.last: dict[int, tuple[float, float]] = {}

    def keep_only(self, pids: set[int]) -> None:
        """Forget processes that are gone (respawned workers), so the table does not grow."""
        for pid in set(self.last) - pids:
            del self.last[pid]

    def percent(self, pid: int, proc: psutil.Process) -> float:
        """Percent of one CPU used by ``pid`` since the previous call for it (0 the first time)."""
        times = proc.cpu_times()
        used, now = times.user + times.system, time.monotonic()
        before = self.last.get(pid)
        self.last[pid] = (used, now)
        if before is None or now <= before[1]:
            return 0.0
        return round(100.0 * (used - before[0]) / (now - before[1]), 1)


def socket_entries(listeners: list[Listener]) -> list[dict[str, Any]]:
    """Each listening socket with its real accept-queue length and limit."""
    entries = []
    for listener in listeners:
        try:
            queue, limit = listen_queue(listener.sock)
        except (OSError, ValueError) as exc:
            log(f"stats: listen queue of {listener.name} unknown: {exc}")
            queue, limit = 0, 0
        entries.append(
            {
                "name": listener.name,
                "proto": "uwsgi",
                "queue": queue,
                "max_queue": limit,
                "shared": 0,
                "can_offload": 0,
            }
        )
    return entries


def instance_document(
    board: Scoreboard,
    listeners: list[Listener],
    started: float,
    cpu: CpuMeter,
    recent: Recent,
    accepting: bool,
    cheap: Collection[int] = (),
) -> dict[str, Any]:
    """The stats of a master and its workers, in uWSGI's layout plus binserve's fields.

    A worker's figures are its cores' added up; its ``cores`` list has one entry per serving thread.
    A worker id in ``cheap`` has no process by choice (cheaper): as uWSGI shows it, pid 0 and
    status ``cheap``, its totals kept.
    """
    sockets = socket_entries(listeners)
    queue = max((s["queue"] for s in sockets), default=0)
    workers: list[dict[str, Any]] = []
    for wid in range(1, board.workers + 1):
        slot = board.read(wid)
        rss = vsz = 0
        percent = 0.0
        if wid in cheap:
            slot.pid, slot.busy = 0, False
        try:
            proc = psutil.Process(slot.pid)
            memory = proc.memory_info()
            rss, vsz = memory.rss, memory.vms
            percent = cpu.percent(slot.pid, proc)
        except (psutil.Error, ValueError):
            pass  # between a worker's death and its respawn there is no process to measure
        current = None
        if slot.busy:
            method, _, uri = slot.current.partition(" ")
            current = {"method": method, "uri": uri, "since": slot.since}
        workers.append(
            {
                "id": wid,
                "pid": slot.pid,
                "accepting": int(accepting and wid not in cheap),
                "requests": slot.requests,
                "delta_requests": slot.delta_requests,
                "exceptions": slot.exceptions,
                "harakiri_count": slot.harakiri_count,
                "signals": 0,
                "signal_queue": 0,
                "status": "cheap" if wid in cheap else "busy" if slot.busy else "idle",
                "rss": rss,
                "vsz": vsz,
                "running_time": int(slot.running_time * 1_000_000),
                "last_spawn": int(slot.last_spawn),
                "respawn_count": slot.respawn_count,
                "tx": slot.tx,
                "avg_rt": recent.avg_rt(wid, slot.requests, slot.running_time),
                "cpu": percent,
                "current": current,
                "apps": [],
                "cores": [
                    {
                        "id": core_id,
                        "requests": core.requests,
                        "static_requests": 0,
                        "routed_requests": 0,
                        "offloaded_requests": 0,
                        "write_errors": 0,
                        "read_errors": 0,
                        "in_request": int(core.busy),
                        "vars": [],
                        "req_info": {"request_start": int(core.since)} if core.busy else {},
                    }
                    for core_id, core in enumerate(slot.cores)
                ],
            }
        )
    cpu.keep_only({worker["pid"] for worker in workers})
    return {
        "version": VERSION,
        "listen_queue": queue,
        "listen_queue_errors": 0,
        "signal_queue": 0,
        "load": queue,
        "pid": os.getpid(),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "cwd": os.getcwd(),
        "uptime": round(time.time() - started, 3),
        "time": time.time(),
        "locks": [],
        "sockets": sockets,
        "workers": workers,
    }

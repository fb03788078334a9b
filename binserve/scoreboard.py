"""Per-worker counters in memory shared between the master and its workers.

Each worker writes its own slot twice per request (once when it starts, once when it ends),
with one ``struct.pack_into`` each: no pipe write, no lock (a slot has one writer). The
master reads every slot when the stats server is asked, and writes a slot's spawn fields
when it (re)spawns that worker. The mapping is anonymous and inherited through fork.
"""

from __future__ import annotations

import mmap
import struct
import time
from dataclasses import dataclass

CURRENT_SIZE = 200  # bytes of "METHOD URI" kept for the request in progress

# The layout puts what each write touches side by side, so a request costs two pack_into:
#   since (epoch of the current request), current request line, status   <- begin
#   status, requests, tx, running time (seconds)                          <- end
#   exceptions                                                            <- only when one happens
#   pid, respawn_count, harakiri_count, last_spawn, requests at spawn     <- the master, at spawn
_BEGIN = struct.Struct(f"<d{CURRENT_SIZE}sB")
_END = struct.Struct("<B7xQQd")
_EXCEPTIONS = struct.Struct("<Q")
_SPAWN = struct.Struct("<iIIdQ")
_END_AT = _BEGIN.size - 1  # the status byte is shared: the last of begin, the first of end
_EXCEPTIONS_AT = _END_AT + _END.size
_SPAWN_AT = _EXCEPTIONS_AT + _EXCEPTIONS.size
SLOT_SIZE = (_SPAWN_AT + _SPAWN.size + 63) // 64 * 64  # a cache line apart: no false sharing
IDLE, BUSY = 0, 1


@dataclass
class WorkerStats:
    """One worker's slot, decoded."""

    pid: int
    respawn_count: int
    harakiri_count: int
    last_spawn: float
    busy: bool
    since: float
    current: str
    requests: int
    delta_requests: int
    exceptions: int
    tx: int
    running_time: float


class Scoreboard:
    """``workers`` slots (ids 1..N) in one shared anonymous mapping."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.map = mmap.mmap(-1, SLOT_SIZE * workers, flags=mmap.MAP_SHARED)

    def offset(self, wid: int) -> int:
        """Where worker ``wid``'s slot starts."""
        return (wid - 1) * SLOT_SIZE

    def spawned(self, wid: int, pid: int) -> None:
        """The master forked worker ``wid``: record its pid, spawn time and respawn count."""
        off = self.offset(wid)
        _, respawns, harakiris, _, _ = _SPAWN.unpack_from(self.map, off + _SPAWN_AT)
        _, requests, _, _ = _END.unpack_from(self.map, off + _END_AT)
        _SPAWN.pack_into(self.map, off + _SPAWN_AT, pid, respawns + 1, harakiris, time.time(), requests)

    def harakiri(self, wid: int) -> None:
        """Count a harakiri of worker ``wid`` (the master's write)."""
        off = self.offset(wid) + _SPAWN_AT
        pid, respawns, harakiris, last_spawn, base = _SPAWN.unpack_from(self.map, off)
        _SPAWN.pack_into(self.map, off, pid, respawns, harakiris + 1, last_spawn, base)

    def read(self, wid: int) -> WorkerStats:
        """Worker ``wid``'s slot as it is now."""
        off = self.offset(wid)
        since, current, _ = _BEGIN.unpack_from(self.map, off)
        status, requests, tx, running = _END.unpack_from(self.map, off + _END_AT)
        (exceptions,) = _EXCEPTIONS.unpack_from(self.map, off + _EXCEPTIONS_AT)
        pid, respawns, harakiris, last_spawn, base = _SPAWN.unpack_from(self.map, off + _SPAWN_AT)
        line = current.rstrip(b"\0").decode("latin-1")
        return WorkerStats(
            pid,
            respawns,
            harakiris,
            last_spawn,
            status == BUSY,
            since,
            line,
            requests,
            requests - base,
            exceptions,
            tx,
            running,
        )

    def slot(self, wid: int) -> Slot:
        """The writer for worker ``wid``'s own slot (used in that worker only)."""
        return Slot(self, wid)


class Slot:
    """A worker's own slot: two ``pack_into`` per request and nothing more.

    Keeping stats must cost the request path under 5 %, so the worker writes only totals;
    the master derives delta_requests and the average response time from them. (Typed
    memoryview stores were measured too: slower than one pack_into of several fields.)
    """

    __slots__ = ("map", "off", "end_at", "requests", "tx", "running", "exceptions")

    def __init__(self, board: Scoreboard, wid: int) -> None:
        self.map = board.map
        self.off = board.offset(wid)
        self.end_at = self.off + _END_AT
        # Totals carry over a respawn, as uWSGI's do; a predecessor that died mid-request
        # no longer shows as busy.
        _, self.requests, self.tx, self.running = _END.unpack_from(self.map, self.end_at)
        (self.exceptions,) = _EXCEPTIONS.unpack_from(self.map, self.off + _EXCEPTIONS_AT)
        _END.pack_into(self.map, self.end_at, IDLE, self.requests, self.tx, self.running)

    def begin(self, since: float, method: str, uri: str) -> None:
        """A request started."""
        _BEGIN.pack_into(self.map, self.off, since, f"{method} {uri}".encode("latin-1", "replace"), BUSY)

    def end(self, seconds: float, sent: int, failed: bool) -> None:
        """The request ended after ``seconds``, having sent ``sent`` bytes."""
        self.requests += 1
        self.tx += sent
        self.running += seconds
        if failed:
            self.exceptions += 1
            _EXCEPTIONS.pack_into(self.map, self.off + _EXCEPTIONS_AT, self.exceptions)
        _END.pack_into(self.map, self.end_at, IDLE, self.requests, self.tx, self.running)

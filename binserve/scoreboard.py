"""Per-worker, per-thread counters in memory shared between the master and its workers.

Each worker id has two *places* (banks): while a worker is replaced, the old process and its
replacement both serve, each writing its own place; the next replacement takes the place the
old one left. A worker's figures are the sum of its two places; its pid, state and cores are
those of the current place (the process accepting for that id now).

Each place has a header and one slot per serving thread (a "core", as uWSGI calls them).
A thread writes only its own core's slot, twice per request (once when it starts, once when
it ends), with one ``struct.pack_into`` each: no pipe write, no lock (a slot has one writer).
The master writes a worker's header when it (re)spawns or harakiris that worker, and reads
every slot when the stats server is asked or harakiri is checked, adding a worker's cores up.
Headers and slots are whole cache lines, so no two writers share one. The mapping is
anonymous and inherited through fork.
"""

from __future__ import annotations

import mmap
import struct
import time
from dataclasses import dataclass

CURRENT_SIZE = 200  # bytes of "METHOD URI" kept for the request in progress
CACHE_LINE = 64

# A core's slot puts what each write touches side by side, so a request costs two pack_into:
#   since (epoch of the current request), current request line, status   <- begin
#   status, requests, tx, running time (seconds)                          <- end
#   exceptions                                                            <- only when one happens
#   thread ident, native thread id                                        <- once, as the core starts
# A worker's header, before its cores' slots:
#   pid, respawn_count, harakiri_count, last_spawn, requests at spawn     <- the master, at spawn
_BEGIN = struct.Struct(f"<d{CURRENT_SIZE}sB")
_END = struct.Struct("<B7xQQd")
_EXCEPTIONS = struct.Struct("<Q")
_THREAD = struct.Struct("<QI")
_SPAWN = struct.Struct("<iIIdQ")
_END_AT = _BEGIN.size - 1  # the status byte is shared: the last of begin, the first of end
_EXCEPTIONS_AT = _END_AT + _END.size
_THREAD_AT = _EXCEPTIONS_AT + _EXCEPTIONS.size


def _lines(size: int) -> int:
    """``size`` rounded up to whole cache lines."""
    return (size + CACHE_LINE - 1) // CACHE_LINE * CACHE_LINE


HEADER_SIZE = _lines(_SPAWN.size)
SLOT_SIZE = _lines(_THREAD_AT + _THREAD.size)
IDLE, BUSY = 0, 1
PLACES = 2  # per worker id: the process serving and, while it is replaced, its replacement


@dataclass
class CoreStats:
    """One core's slot, decoded."""

    requests: int
    busy: bool
    since: float
    current: str
    tx: int
    exceptions: int
    running_time: float
    thread: int = 0  # the serving thread's ident (threading.get_ident), as faulthandler names it
    tid: int = 0  # its native id, as /proc/PID/task names it


@dataclass
class WorkerStats:
    """One worker's header and its cores added up, decoded.

    ``since`` and ``current`` are the oldest busy core's (harakiri kills the whole worker for
    its longest request), or the latest request's when none is busy. ``cores`` are the
    figures the sums come from, so a stats document's worker and core numbers agree.
    """

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
    cores: list[CoreStats]
    thread: int = 0  # the thread serving the request shown (``since``, ``current``)
    tid: int = 0


class Scoreboard:
    """``workers`` workers (ids 1..N), two places each, of ``cores`` cores each (ids 0..M-1)."""

    def __init__(self, workers: int, cores: int = 1) -> None:
        if workers < 1 or cores < 1:
            raise ValueError(f"a scoreboard needs at least one worker and one core, not {workers}x{cores}")
        self.workers = workers
        self.cores = cores
        self.stride = HEADER_SIZE + cores * SLOT_SIZE
        self.map = mmap.mmap(-1, self.stride * workers * PLACES, flags=mmap.MAP_SHARED)
        # Which place is each worker's current one: the master's own bookkeeping, not shared.
        self.current = dict.fromkeys(range(1, workers + 1), 0)
        # Every slot's request counter, read by one unpack (pad bytes skip the rest): the
        # instance's total, which each request line carries, as uWSGI's does.
        at = 0
        layout = ["<"]
        for place in range(workers * PLACES):
            for core in range(cores):
                counter = place * self.stride + HEADER_SIZE + core * SLOT_SIZE + _END_AT + 8
                layout.append(f"{counter - at}xQ")
                at = counter + 8
        self._counters = struct.Struct("".join(layout))

    def header(self, wid: int, place: int = 0) -> int:
        """Where place ``place`` of worker ``wid`` has its header."""
        if not 1 <= wid <= self.workers:
            raise IndexError(f"worker {wid} is not in 1..{self.workers}")
        if place not in (0, 1):
            raise IndexError(f"place {place} is not 0 or 1")
        return ((wid - 1) * PLACES + place) * self.stride

    def offset(self, wid: int, core: int = 0, place: int = 0) -> int:
        """Where core ``core`` of place ``place`` of worker ``wid`` has its slot."""
        if not 0 <= core < self.cores:
            raise IndexError(f"core {core} is not in 0..{self.cores - 1}")
        return self.header(wid, place) + HEADER_SIZE + core * SLOT_SIZE

    def spawned(self, wid: int, pid: int, place: int = 0, when: float | None = None) -> None:
        """The master forked ``pid`` for worker ``wid`` in ``place``, at ``when`` (taken before the fork).

        The place becomes current only through ``promote`` (a replacement is not current
        until it accepts), except for the first spawn and a respawn into the same place.
        """
        off = self.header(wid, place)
        _, respawns, harakiris, _, _ = _SPAWN.unpack_from(self.map, off)
        requests = sum(core.requests for core in self.read_cores(wid, place))
        spawned_at = time.time() if when is None else when
        _SPAWN.pack_into(self.map, off, pid, respawns + 1, harakiris, spawned_at, requests)

    def promote(self, wid: int, place: int) -> None:
        """Place ``place`` is worker ``wid``'s current one from now on."""
        self.header(wid, place)
        self.current[wid] = place

    def harakiri(self, wid: int, place: int | None = None) -> None:
        """Count a harakiri of worker ``wid`` (the master's write)."""
        off = self.header(wid, self.current[wid] if place is None else place)
        pid, respawns, harakiris, last_spawn, base = _SPAWN.unpack_from(self.map, off)
        _SPAWN.pack_into(self.map, off, pid, respawns, harakiris + 1, last_spawn, base)

    def instance_requests(self) -> int:
        """Requests served by every worker since the master started (past processes included)."""
        return sum(self._counters.unpack_from(self.map))

    def read_cores(self, wid: int, place: int | None = None) -> list[CoreStats]:
        """The cores of worker ``wid``'s current place (or of ``place``), by core id."""
        if place is None:
            self.header(wid)
            place = self.current[wid]
        cores = []
        for core in range(self.cores):
            off = self.offset(wid, core, place)
            since, current, _ = _BEGIN.unpack_from(self.map, off)
            status, requests, tx, running = _END.unpack_from(self.map, off + _END_AT)
            (exceptions,) = _EXCEPTIONS.unpack_from(self.map, off + _EXCEPTIONS_AT)
            thread, tid = _THREAD.unpack_from(self.map, off + _THREAD_AT)
            line = current.rstrip(b"\0").decode("latin-1")
            cores.append(
                CoreStats(requests, status == BUSY, since, line, tx, exceptions, running, thread, tid)
            )
        return cores

    def read_place(self, wid: int, place: int) -> WorkerStats:
        """One place of worker ``wid``: the process there (``pid``) and its cores added up."""
        pid, respawns, harakiris, last_spawn, base = _SPAWN.unpack_from(self.map, self.header(wid, place))
        cores = self.read_cores(wid, place)
        busy = [core for core in cores if core.busy]
        shown = min(busy, key=lambda core: core.since) if busy else max(cores, key=lambda core: core.since)
        requests = sum(core.requests for core in cores)
        return WorkerStats(
            pid,
            respawns,
            harakiris,
            last_spawn,
            bool(busy),
            shown.since,
            shown.current,
            requests,
            requests - base,
            sum(core.exceptions for core in cores),
            sum(core.tx for core in cores),
            sum(core.running_time for core in cores),
            cores,
            shown.thread,
            shown.tid,
        )

    def read(self, wid: int) -> WorkerStats:
        """Worker ``wid`` as it is now: its current place, with the totals of both places."""
        self.header(wid)
        place = self.current[wid]
        now = self.read_place(wid, place)
        other = self.read_place(wid, 1 - place)
        now.respawn_count += other.respawn_count
        now.harakiri_count += other.harakiri_count
        now.requests += other.requests
        now.exceptions += other.exceptions
        now.tx += other.tx
        now.running_time += other.running_time
        return now

    def slot(self, wid: int, core: int = 0, place: int = 0) -> Slot:
        """The writer for one core of one place of worker ``wid`` (used by that thread only).

        Making it marks the core idle, so a worker makes all its cores' slots before serving:
        a core whose predecessor died mid-request would otherwise stay busy.
        """
        return Slot(self, wid, core, place)


class Slot:
    """A core's own slot: two ``pack_into`` per request and nothing more.

    Keeping stats must cost the request path under 5 %, so the thread writes only totals;
    the master derives delta_requests and the average response time from them. (Typed
    memoryview stores were measured too: slower than one pack_into of several fields.)
    """

    __slots__ = ("map", "off", "end_at", "requests", "tx", "running", "exceptions", "instance_requests")

    def __init__(self, board: Scoreboard, wid: int, core: int = 0, place: int = 0) -> None:
        self.map = board.map
        self.instance_requests = board.instance_requests
        self.off = board.offset(wid, core, place)
        self.end_at = self.off + _END_AT
        # Totals carry over a respawn, as uWSGI's do; a predecessor that died mid-request
        # no longer shows as busy.
        _, self.requests, self.tx, self.running = _END.unpack_from(self.map, self.end_at)
        (self.exceptions,) = _EXCEPTIONS.unpack_from(self.map, self.off + _EXCEPTIONS_AT)
        _END.pack_into(self.map, self.end_at, IDLE, self.requests, self.tx, self.running)

    def serving_thread(self, ident: int, tid: int) -> None:
        """The thread that serves this core's requests from now on (harakiri dumps its stack)."""
        _THREAD.pack_into(self.map, self.off + _THREAD_AT, ident, tid)

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

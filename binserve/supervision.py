"""The master's children and its policies about them, as data and pure functions.

Every process the master forked has one record, a ``Child``, in one table (pid -> Child), as
gunicorn keeps its WORKERS and circus its Process objects: what it is (its role), the worker
id and scoreboard place it serves, and the deadlines the master holds it to. Reaping a child
is one lookup in the table. What the master wants for a worker id apart from any process
(a replacement to start, a respawn after a failed boot) is that id's ``Seat``. The records
are defined here; binserve/children.py keeps the table true as processes come and go.

The policies (harakiri, max-worker-lifetime, evil-reload-on-rss, the SIGKILL deadlines,
retries, chain reloads, touch-reload, the cheaper algorithms and SIGTTIN/SIGTTOU) read the
table, the configuration, the time and what was measured, and return actions; the master's loop
waits, plans, and carries the actions out (binserve/master.py). Nothing here reads a clock, a
file or a process, so each policy is tested from tables of states and times
(tests/workers/test_master_plan.py).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

import psutil

from .log import printable
from .scoreboard import WorkerStats
from .stacks import WAIT, StackFile
from .worker import MB

RETRY_AFTER = 10.0  # seconds before trying again to start a worker whose boot or fork failed
# A worker that ended within this many seconds of its fork without accepting (an app or an import
# exiting or crashing as it loads) is respawned this long after, not at once: a fork-and-die loop
# would fork hundreds of times a second and fill the log as fast.
QUICK_DEATH = 1.0
AGAIN = 5.0  # seconds between two SIGKILLs of a process that outlives the first (stuck in the kernel)


class Phase(Enum):
    """Where the master is in its life."""

    RUNNING = "running"
    STOPPING = "stopping"  # every child was told to stop; the master exits once they have
    RELOADING = "reloading"  # the new image loads: re-execute once the exited children are reaped
    DONE = "done"  # everything exited and was cleaned up


class Role(Enum):
    """What a child is to the master; the value names it in log lines."""

    WORKER = "worker"  # the process serving for its worker id
    REPLACEMENT = "replacement"  # spawned beside the worker of its id; becomes it once it accepts
    LEAVING = "replaced worker"  # replaced: told to finish its requests and exit
    RETIRING = "old worker"  # a worker of the previous image (before a reload), finishing its requests
    PROBE = "reload probe"  # the new image, loading its config and app before a reload
    CHEAPED = "cheaped worker"  # retired for want of load (cheaper, SIGTTOU): finishing its requests


# This image's workers: they may hold a request.
SERVING = (Role.WORKER, Role.REPLACEMENT, Role.LEAVING, Role.CHEAPED)


@dataclass
class Child:
    """One process the master forked (or inherited from the image it replaced)."""

    pid: int
    role: Role
    wid: int = 0  # the worker id it serves for; 0 for a previous image's worker and a probe
    place: int = 0  # its place in the scoreboard (a replacement takes the other one)
    born: float = 0.0  # monotonic
    kill_by: float = math.inf  # monotonic: SIGKILL past this, saying it ``kill_why``
    kill_why: str = ""
    sigkilled: bool = False  # it was killed past kill_by (a probe: the reload is refused for that)
    # Harakiri: asked for its stacks; strike at this epoch at the latest, or once they are written.
    harakiri_strike: float | None = None
    stacks_written: bool = False  # it said so (a worker whose app holds the GIL cannot)
    accepting: bool = False  # it said it accepts
    harakiri_kill: float | None = None  # epoch: harakiri struck, SIGKILL at this time
    stacks: StackFile | None = field(default=None, repr=False)  # where it writes them
    process: psutil.Process | None = field(default=None, repr=False)  # to measure it (evil-reload-on-rss)


@dataclass
class Seat:
    """A worker id: what the master wants for it, beyond the processes serving it."""

    wanted: str = ""  # why a replacement is to start as soon as it can
    retry_at: float = 0.0  # monotonic: no replacement nor respawn before (a boot or a fork failed)
    respawn_place: int | None = None  # no process serves it (its boot failed): respawn here at retry_at
    cheap: bool = False  # no process serves it by choice (cheaper, SIGTTOU) until more workers are wanted


Table = dict[int, Child]


def worker(table: Table, wid: int) -> Child | None:
    """The process serving for ``wid``, if any."""
    return next((c for c in table.values() if c.wid == wid and c.role is Role.WORKER), None)


def having(table: Table, *roles: Role) -> list[Child]:
    """The children in any of ``roles``."""
    return [child for child in table.values() if child.role in roles]


def has(table: Table, wid: int, role: Role) -> bool:
    """Whether a child of ``wid`` is in ``role``."""
    return any(c.wid == wid and c.role is role for c in table.values())


# -- actions ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Signal:
    """Send ``signum`` to ``pid``, logging ``line`` first."""

    pid: int
    signum: int
    line: str


@dataclass(frozen=True)
class Kill:
    """SIGKILL a child past its ``kill_by``, saying why; if it lingers, again at ``again``."""

    pid: int
    line: str
    again: float


@dataclass(frozen=True)
class Harakiri:
    """A request ran past harakiri: count it, log ``line``, ask for the stacks (``thread``'s is the
    stuck request's, ``tid`` its native id); strike at ``strike_at`` at the latest."""

    pid: int
    wid: int
    place: int
    line: str
    thread: int
    tid: int
    strike_at: float


@dataclass(frozen=True)
class HarakiriStrike:
    """The stacks are written, or their time is up: log them, send ``signum``; SIGKILL at ``kill_at``."""

    pid: int
    signum: int
    kill_at: float


@dataclass(frozen=True)
class HarakiriKill:
    """A harakiri'd worker still runs at its SIGKILL time: SIGKILL, and again at ``again``."""

    pid: int
    again: float


@dataclass(frozen=True)
class StopDeadline:
    """The graceful stop's next SIGKILL round is at ``at``."""

    at: float


@dataclass(frozen=True)
class Replace:
    """Start a replacement for worker ``wid`` (now, or as soon as it can be)."""

    wid: int
    why: str


@dataclass(frozen=True)
class Respawn:
    """Spawn worker ``wid`` into ``place``: no process serves it since its boot failed."""

    wid: int
    place: int


@dataclass(frozen=True)
class Seen:
    """A watched file now has ``mtime``; ``chain``: a touch-chain-reload file, else a touch-reload one."""

    path: str
    mtime: float | None
    chain: bool


@dataclass(frozen=True)
class Reload:
    """A graceful reload of the master (it probes the new image first)."""

    why: str


@dataclass(frozen=True)
class StartChain:
    """A chain reload: replace these workers one at a time."""

    wids: list[int]


@dataclass(frozen=True)
class Log:
    """Only a log line."""

    line: str


@dataclass(frozen=True)
class Grow:
    """Start ``count`` more workers in cheap seats, logging ``line``."""

    count: int
    line: str


@dataclass(frozen=True)
class Cheap:
    """Retire worker ``wid``: it finishes its requests and exits, its seat stays cheap; log ``line``."""

    wid: int
    line: str


Action = (
    Signal
    | Kill
    | Harakiri
    | HarakiriStrike
    | HarakiriKill
    | StopDeadline
    | Replace
    | Respawn
    | Seen
    | Reload
    | StartChain
    | Log
    | Grow
    | Cheap
)


# -- policies --------------------------------------------------------------------------------
def harakiri(
    table: Table, readings: Mapping[int, WorkerStats], limit: float, grace: float, now: float
) -> list[Action]:
    """Kill the workers whose request has run longer than ``limit`` seconds (``now``: epoch).

    ``readings`` are the serving children's scoreboard places, by pid. The log line names the
    worker, its pid and the request, so the slow endpoint can be found; then the worker is
    asked for its stacks, and struck once they are written (at most ``stacks.WAIT`` seconds
    later), so the log shows where the request was stuck. With a ``grace``
    (harakiri-graceful-timeout), SIGTERM first (the worker leaves after the request, if it ends
    in time), then SIGKILL.
    """
    actions: list[Action] = []
    signum = signal.SIGTERM if grace else signal.SIGKILL
    for child in having(table, *SERVING):
        if child.harakiri_kill is not None:
            if now >= child.harakiri_kill:
                actions.append(HarakiriKill(child.pid, now + AGAIN))
            continue
        if child.harakiri_strike is not None:
            if child.stacks_written or now >= child.harakiri_strike:
                actions.append(HarakiriStrike(child.pid, signum, now + grace))
            continue
        slot = readings[child.pid]
        if not _running(slot, child.pid) or now - slot.since <= limit:
            continue
        since = time.strftime("%H:%M:%S", time.localtime(slot.since))
        line = (
            f"HARAKIRI worker {child.wid} (pid {child.pid}): {printable(slot.current)} running since {since} "
            f"({now - slot.since:.1f} s > harakiri {limit} s)"
        )
        actions.append(Harakiri(child.pid, child.wid, child.place, line, slot.thread, slot.tid, now + WAIT))
    return actions


def next_harakiri(table: Table, readings: Mapping[int, WorkerStats], limit: float, now: float) -> float:
    """Seconds until the oldest running request reaches harakiri (at most 1), so kills are on time."""
    soonest = 1.0
    for child in having(table, *SERVING):
        if child.harakiri_kill is not None:  # already struck: next comes its SIGKILL
            soonest = min(soonest, child.harakiri_kill - now)
            continue
        if child.harakiri_strike is not None:  # its notice wakes the loop; else strike when time is up
            soonest = min(soonest, 0.0 if child.stacks_written else child.harakiri_strike - now)
            continue
        slot = readings[child.pid]
        if _running(slot, child.pid):
            soonest = min(soonest, slot.since + limit - now + 0.01)
    return max(0.01, soonest)


def _running(slot: WorkerStats, pid: int) -> bool:
    """Whether ``pid`` is in a request; one that began before it was spawned is its dead predecessor's."""
    return slot.busy and slot.pid == pid and slot.since >= slot.last_spawn


def lifetimes(table: Table, seats: Mapping[int, Seat], limit: float, now: float) -> list[Action]:
    """max-worker-lifetime: replace the oldest worker past ``limit`` seconds, one at a time.

    Workers started together reach the limit together; replacing them one by one keeps all
    but one accepting meanwhile.
    """
    if having(table, Role.REPLACEMENT) or any(seat.wanted for seat in seats.values()):
        return []
    ages = {child.wid: now - child.born for child in having(table, Role.WORKER)}
    oldest = max(ages, key=ages.__getitem__, default=None)
    if oldest is None or ages[oldest] <= limit:
        return []
    age = ages[oldest]
    return [Replace(oldest, f"lifetime reached after {age:.0f} s (max-worker-lifetime {limit:g} s)")]


def memory(table: Table, rss: Mapping[int, int], limit_mb: int) -> list[Action]:
    """evil-reload-on-rss: SIGKILL a worker over the limit, even mid-request (``rss`` by pid, bytes)."""
    actions: list[Action] = []
    for child in having(table, Role.WORKER):
        size = rss.get(child.pid)  # none: it exited meanwhile, and is reaped in the next step
        if size is not None and size > limit_mb * MB:
            line = (
                f"EVIL RELOAD worker {child.wid} (pid {child.pid}): rss {size / MB:.1f} MB > "
                f"evil-reload-on-rss {limit_mb} MB: SIGKILL"
            )
            actions.append(Signal(child.pid, signal.SIGKILL, line))
    return actions


def retries(seats: Mapping[int, Seat], now: float) -> list[Action]:
    """Respawn the workers whose boot failed once their pause is over; start the replacements that waited."""
    actions: list[Action] = [
        Respawn(wid, seat.respawn_place)
        for wid, seat in seats.items()
        if seat.respawn_place is not None and now >= seat.retry_at
    ]
    actions += [Replace(wid, seat.wanted) for wid, seat in seats.items() if seat.wanted]
    return actions


def deadlines(table: Table, phase: Phase, stop_deadline: float, now: float) -> list[Action]:
    """SIGKILL the children past their deadline: each one's own, and the graceful stop's.

    A child that outlives its SIGKILL (stuck in the kernel) gets another every few seconds; a
    probe gets one only, and its reload is refused.
    """
    actions: list[Action] = []
    if phase is Phase.STOPPING and now >= stop_deadline:
        for child in table.values():
            if child.role is not Role.PROBE:
                line = f"worker (pid {child.pid}) still running past the deadline: SIGKILL"
                actions.append(Signal(child.pid, signal.SIGKILL, line))
        actions.append(StopDeadline(now + AGAIN))
    for child in table.values():
        if now >= child.kill_by:
            again = math.inf if child.role is Role.PROBE else now + AGAIN
            actions.append(
                Kill(child.pid, f"{child.role.value} (pid {child.pid}) {child.kill_why}: SIGKILL", again)
            )
    return actions


def replaceable(table: Table, seat: Seat, wid: int, now: float) -> bool:
    """Whether a replacement for ``wid`` may start now.

    Not when no process serves it, nor while a replacement is starting, nor while the process
    that last left its other place is still finishing (its counters are there), nor during the
    pause after a failed boot.
    """
    busy = (Role.REPLACEMENT, Role.LEAVING, Role.CHEAPED)
    if worker(table, wid) is None or any(has(table, wid, role) for role in busy):
        return False
    return now >= seat.retry_at


def next_in_chain(chain: list[int], table: Table) -> tuple[int | None, list[int]]:
    """Chain reload: the next worker id to replace, and the ids left after it.

    Ids that no process serves any more (a boot failed meanwhile) are skipped.
    """
    for n, wid in enumerate(chain):
        if worker(table, wid) is not None:
            return wid, chain[n + 1 :]
    return None, []


def touched(seen: Mapping[str, float | None], mtimes: Mapping[str, float | None]) -> list[Action]:
    """touch-reload: the first watched file whose mtime changed triggers a graceful reload.

    Only that file is marked seen: another one touched meanwhile asks again in the next step.
    """
    for path, mtime in mtimes.items():
        if mtime != seen[path]:
            return [Seen(path, mtime, chain=False), Reload(f"{path} was touched")]
    return []


def chain_touched(
    seen: Mapping[str, float | None],
    mtimes: Mapping[str, float | None],
    workers: Iterable[int],
    running: bool,
) -> list[Action]:
    """touch-chain-reload: a watched file whose mtime changed starts a chain reload of ``workers``.

    A removed file reloads nothing; a touch during a chain reload (``running``) lets it go on.
    """
    actions: list[Action] = []
    for path, mtime in mtimes.items():
        if mtime == seen[path]:
            continue
        actions.append(Seen(path, mtime, chain=True))
        if mtime is None:
            continue
        if running:
            actions.append(Log(f"{path} was touched: a chain reload is already running, it goes on"))
        else:
            actions.append(Log(f"{path} was touched: chain reload, one worker at a time"))
            actions.append(StartChain(sorted(workers)))
        break
    return actions


# -- adaptive workers --------------------------------------------------------------------------
SPARE, BUSYNESS = "spare", "busyness"


@dataclass(frozen=True)
class Cheaper:
    """The cheaper settings (uWSGI's names): the bounds and how the algorithm reacts."""

    minimum: int  # cheaper
    maximum: int  # processes
    step: int = 1  # cheaper-step
    overload: float = 3.0  # cheaper-overload: seconds of overload (spare), or busyness's window
    idle: float = 10.0  # cheaper-idle: seconds with spare workers before one is retired (spare)
    algo: str = SPARE
    busyness_max: int = 50  # percent
    busyness_min: int = 25
    multiplier: int = 10  # idle windows before a worker is retired (busyness)
    penalty: int = 1  # added to the multiplier when a worker retired is needed again soon


@dataclass(frozen=True)
class Load:
    """What the cheaper algorithms remember between two looks at the scoreboard (kept by the master)."""

    overloaded_since: float | None = None  # spare: every worker busy since
    spare_since: float | None = None  # spare: more than one worker idle since
    window_start: float | None = None  # busyness: the current window began
    baseline: tuple[tuple[int, float], ...] = ()  # busyness: (pid, busy seconds) at the window's start
    idle_windows: int = 0  # busyness: windows in a row below busyness-min
    multiplier: int = 0  # busyness: the multiplier with its penalties (0: not set yet)
    last_cheap: float | None = None  # busyness: when a worker was last retired


def busy_seconds(stats: WorkerStats, now: float) -> float:
    """Seconds a worker's cores have spent in requests in all, the ones running now until ``now``."""
    return stats.running_time + sum(now - core.since for core in stats.cores if core.busy)


def _idle(stats: WorkerStats) -> bool:
    return not any(core.busy for core in stats.cores)


def _full(stats: WorkerStats) -> bool:
    return all(core.busy for core in stats.cores)


def _to_cheap(running: Mapping[int, WorkerStats]) -> int:
    """The worker to retire: the highest id among the idle ones (as uWSGI), else the highest."""
    idle = [wid for wid, stats in running.items() if _idle(stats)]
    return max(idle or running)


def cheaper(
    settings: Cheaper, load: Load, running: Mapping[int, WorkerStats], now: float
) -> tuple[Load, list[Action]]:
    """The cheaper algorithm's decision: more workers, one fewer, or none; and what it remembers.

    ``running``: the scoreboard reading of every running worker, by worker id (a cheap seat has
    none). ``now``: epoch, the scoreboard's clock.
    """
    if settings.algo == BUSYNESS:
        return _busyness(settings, load, running, now)
    return _spare(settings, load, running, now)


def _spare(
    settings: Cheaper, load: Load, running: Mapping[int, WorkerStats], now: float
) -> tuple[Load, list[Action]]:
    """spare: every worker busy for cheaper-overload seconds adds cheaper-step workers; more than
    one idle worker for cheaper-idle seconds retires one (the spare one is kept)."""
    live = len(running)
    actions: list[Action] = []
    overloaded_since = load.overloaded_since
    if running and all(_full(stats) for stats in running.values()) and live < settings.maximum:
        overloaded_since = now if overloaded_since is None else overloaded_since
        if now - overloaded_since >= settings.overload:
            count = min(settings.step, settings.maximum - live)
            line = (
                f"cheaper: every worker busy for {now - overloaded_since:.0f} s "
                f"(cheaper-overload {settings.overload:g} s): {count} more"
            )
            actions.append(Grow(count, line))
            overloaded_since = None
    else:
        overloaded_since = None
    spare_since = load.spare_since
    idle = sum(1 for stats in running.values() if _idle(stats))
    if idle > 1 and live > settings.minimum:
        spare_since = now if spare_since is None else spare_since
        if now - spare_since >= settings.idle and not actions:
            wid = _to_cheap(running)
            line = (
                f"cheaper: {idle} workers idle for {settings.idle:g} s (cheaper-idle): retiring worker {wid}"
            )
            actions.append(Cheap(wid, line))
            spare_since = now
    else:
        spare_since = None
    return dataclasses.replace(load, overloaded_since=overloaded_since, spare_since=spare_since), actions


def _busyness(
    settings: Cheaper, load: Load, running: Mapping[int, WorkerStats], now: float
) -> tuple[Load, list[Action]]:
    """busyness: the share of time the workers spent in requests over each cheaper-overload window.

    Above busyness-max: cheaper-step more workers. Below busyness-min for ``multiplier``
    windows in a row: one fewer; a window between the two takes one idle window back. A worker
    needed again within ``multiplier`` windows of the last retirement adds busyness-penalty to
    the multiplier, so the count does not swing back and forth.
    """
    multiplier = load.multiplier or settings.multiplier
    baseline = tuple((stats.pid, busy_seconds(stats, now)) for stats in running.values())
    if load.window_start is None or now - load.window_start < settings.overload:
        if load.window_start is None:
            return dataclasses.replace(load, window_start=now, baseline=baseline, multiplier=multiplier), []
        return load, []
    before = dict(load.baseline)
    spent = capacity = 0.0
    for stats in running.values():
        if stats.pid in before:  # a worker started during the window has no baseline: next window
            spent += busy_seconds(stats, now) - before[stats.pid]
            capacity += (now - load.window_start) * len(stats.cores)
    busyness = 100.0 * spent / capacity if capacity else 0.0
    live, idle_windows, last_cheap = len(running), load.idle_windows, load.last_cheap
    actions: list[Action] = []
    if busyness > settings.busyness_max and live < settings.maximum:
        count = min(settings.step, settings.maximum - live)
        if last_cheap is not None and now - last_cheap < multiplier * settings.overload:
            multiplier += settings.penalty
        line = (
            f"cheaper: busyness {busyness:.0f}% > cheaper-busyness-max {settings.busyness_max}%: {count} more"
        )
        actions.append(Grow(count, line))
        idle_windows = 0
    elif busyness < settings.busyness_min and live > settings.minimum:
        idle_windows += 1
        if idle_windows >= multiplier:
            wid = _to_cheap(running)
            line = (
                f"cheaper: busyness below cheaper-busyness-min {settings.busyness_min}% for {idle_windows} "
                f"window(s) of {settings.overload:g} s: retiring worker {wid}"
            )
            actions.append(Cheap(wid, line))
            idle_windows, last_cheap = 0, now
    elif busyness >= settings.busyness_min:
        idle_windows = max(0, idle_windows - 1)
    new = Load(
        window_start=now,
        baseline=baseline,
        idle_windows=idle_windows,
        multiplier=multiplier,
        last_cheap=last_cheap,
    )
    return new, actions


def by_hand(
    signame: str, times: int, running: Mapping[int, WorkerStats], minimum: int, maximum: int, floor: str
) -> list[Action]:
    """SIGTTIN or SIGTTOU (``signame``) ``times`` times: that many workers more or fewer, within
    ``minimum``..``maximum`` (``floor`` names where the minimum comes from); a refusal is logged."""
    live = len(running)
    if signame == "SIGTTIN":
        count = min(times, maximum - live)
        if count <= 0:
            return [Log(f"SIGTTIN refused: {live} workers run, the most processes ({maximum}) allows")]
        return [Grow(count, f"SIGTTIN: {count} worker(s) more, {live + count} of at most {maximum}")]
    actions: list[Action] = []
    left = dict(running)
    for _ in range(times):
        if len(left) <= minimum:
            actions.append(Log(f"SIGTTOU refused: {len(left)} worker(s) run, the fewest {floor} allows"))
            break
        wid = _to_cheap(left)
        del left[wid]
        actions.append(Cheap(wid, f"SIGTTOU: retiring worker {wid}, {len(left)} left"))
    return actions

"""The master's policies (binserve/supervision.py), driven with tables of states and times.

Each case is a table of children (one record per process), the time, and what was measured;
it names the actions the policy must return. The policies are pure, so no process, file or
clock is involved.
"""

from __future__ import annotations

import math
import signal
import time

import pytest

from binserve.reload import parse_retiring, retiring_spec
from binserve.scoreboard import WorkerStats
from binserve.stacks import WAIT
from binserve.supervision import (
    Action,
    Child,
    Harakiri,
    HarakiriKill,
    HarakiriStrike,
    Kill,
    Log,
    Phase,
    Reload,
    Replace,
    Respawn,
    Role,
    Seat,
    Seen,
    Signal,
    StartChain,
    StopDeadline,
    Table,
    chain_touched,
    deadlines,
    harakiri,
    lifetimes,
    memory,
    next_harakiri,
    next_in_chain,
    replaceable,
    retries,
    touched,
)

NOW = 1000.0
EPOCH = 1_700_000_000.0  # harakiri reads the scoreboard's wall-clock times
MB = 1 << 20
MERCY = "still running past worker-reload-mercy"


def table(*children: Child) -> Table:
    return {child.pid: child for child in children}


def reading(
    pid: int, busy: bool = True, since: float = EPOCH - 3, last_spawn: float = EPOCH - 60
) -> WorkerStats:
    """A scoreboard place whose process ``pid`` is in a request that began at ``since``."""
    return WorkerStats(pid, 1, 0, last_spawn, busy, since, "GET /slow", 1, 1, 0, 0, 0.0, [], THREAD, pid + 7)


THREAD = 0x7F0000001000  # the ident of the thread serving the request


def ask(pid: int, wid: int, place: int, since: float = EPOCH - 3) -> Harakiri:
    """Harakiri names the request and asks for the stacks, giving the worker WAIT seconds."""
    started = time.strftime("%H:%M:%S", time.localtime(since))
    took = f"{EPOCH - since:.1f} s > harakiri 2 s"
    line = f"HARAKIRI worker {wid} (pid {pid}): GET /slow running since {started} ({took})"
    return Harakiri(pid, wid, place, line, THREAD, pid + 7, EPOCH + WAIT)


W1 = Child(101, Role.WORKER, 1, 0, born=NOW - 50)
W2 = Child(102, Role.WORKER, 2, 1, born=NOW - 150)
R1 = Child(201, Role.REPLACEMENT, 1, 1, born=NOW - 1, kill_by=NOW + 59, kill_why="did not accept")
L2 = Child(202, Role.LEAVING, 2, 0, born=NOW - 300, kill_by=NOW + 30, kill_why=MERCY)
OLD = Child(301, Role.RETIRING, kill_by=NOW + 30, kill_why=MERCY)
PROBE = Child(401, Role.PROBE, kill_by=NOW + 30, kill_why=MERCY)


def struck(child: Child, at: float) -> Child:
    return Child(child.pid, child.role, child.wid, child.place, child.born, harakiri_kill=at)


def asked(child: Child, until: float, written: bool = False) -> Child:
    """Asked for its stacks, to be struck at ``until`` at the latest; ``written``: it said they are."""
    return Child(
        child.pid,
        child.role,
        child.wid,
        child.place,
        child.born,
        harakiri_strike=until,
        stacks_written=written,
    )


HARAKIRI_CASES = {
    "idle": (table(W1), {101: reading(101, busy=False)}, 0.0, []),
    "busy, not yet at the limit": (table(W1), {101: reading(101, since=EPOCH - 1.5)}, 0.0, []),
    "past the limit: named, and asked for its stacks": (
        table(W1),
        {101: reading(101)},
        0.0,
        [ask(101, 1, 0)],
    ),
    "asked, the stacks not written yet: it waits": (
        table(asked(W1, EPOCH + 0.5)),
        {101: reading(101)},
        0.0,
        [],
    ),
    "asked, the stacks written: SIGKILL": (
        table(asked(W1, EPOCH + 0.5, written=True)),
        {101: reading(101)},
        0.0,
        [HarakiriStrike(101, signal.SIGKILL, EPOCH)],
    ),
    "asked, not written in time (C code holding the GIL): SIGKILL all the same": (
        table(asked(W1, EPOCH)),
        {101: reading(101)},
        0.0,
        [HarakiriStrike(101, signal.SIGKILL, EPOCH)],
    ),
    "the stacks written, with a grace: SIGTERM first, SIGKILL after the grace": (
        table(asked(W1, EPOCH + 0.5, written=True)),
        {101: reading(101)},
        4.0,
        [HarakiriStrike(101, signal.SIGTERM, EPOCH + 4.0)],
    ),
    "a request of its dead predecessor in the slot": (table(W1), {101: reading(99)}, 0.0, []),
    "a request begun before it was spawned": (table(W1), {101: reading(101, last_spawn=EPOCH - 1)}, 0.0, []),
    "a replacement and a leaving worker are held to it too": (
        table(R1, L2),
        {201: reading(201), 202: reading(202)},
        0.0,
        [ask(201, 1, 1), ask(202, 2, 0)],
    ),
    "struck, its SIGKILL not due yet": (table(struck(W1, EPOCH + 1)), {101: reading(101)}, 4.0, []),
    "struck, its SIGKILL due": (
        table(struck(W1, EPOCH)),
        {101: reading(101)},
        4.0,
        [HarakiriKill(101, EPOCH + 5)],
    ),
}


@pytest.mark.parametrize(
    ("children", "readings", "grace", "expected"), HARAKIRI_CASES.values(), ids=HARAKIRI_CASES
)
def test_harakiri(
    children: Table, readings: dict[int, WorkerStats], grace: float, expected: list[Action]
) -> None:
    assert harakiri(children, readings, 2, grace, EPOCH) == expected


NEXT_HARAKIRI_CASES = {
    "nothing running: wake within a second": (table(W1), {101: reading(101, busy=False)}, 1.0),
    "a request 1.5 s old reaches 2 s in half a second": (
        table(W1),
        {101: reading(101, since=EPOCH - 1.5)},
        0.51,
    ),
    "past the limit already: at once": (table(W1), {101: reading(101)}, 0.01),
    "struck: at its SIGKILL time": (table(struck(W1, EPOCH + 0.3)), {101: reading(101)}, 0.3),
    "asked for its stacks: when its time to write them is up": (
        table(asked(W1, EPOCH + 0.4)),
        {101: reading(101)},
        0.4,
    ),
    "its stacks written: at once": (table(asked(W1, EPOCH + 0.4, written=True)), {101: reading(101)}, 0.01),
}


@pytest.mark.parametrize(
    ("children", "readings", "expected"), NEXT_HARAKIRI_CASES.values(), ids=NEXT_HARAKIRI_CASES
)
def test_next_harakiri(children: Table, readings: dict[int, WorkerStats], expected: float) -> None:
    assert next_harakiri(children, readings, 2, EPOCH) == pytest.approx(expected)


LIFETIME_CASES = {
    "all younger than the limit": (table(W1), {1: Seat()}, []),
    "the oldest past the limit is replaced": (
        table(W1, W2),
        {1: Seat(), 2: Seat()},
        [Replace(2, "lifetime reached after 150 s (max-worker-lifetime 40 s)")],
    ),
    "one at a time: not while a replacement starts": (table(W1, W2, R1), {1: Seat(), 2: Seat()}, []),
    "one at a time: not while a replacement waits": (table(W1, W2), {1: Seat(wanted="asked"), 2: Seat()}, []),
    "leaving and old workers do not count": (table(L2, OLD), {}, []),
}


@pytest.mark.parametrize(("children", "seats", "expected"), LIFETIME_CASES.values(), ids=LIFETIME_CASES)
def test_max_worker_lifetime(children: Table, seats: dict[int, Seat], expected: list[Action]) -> None:
    limit = 40 if len(children) > 1 else 100
    assert lifetimes(children, seats, limit, NOW) == expected


EVIL = "EVIL RELOAD worker 2 (pid 102): rss 300.0 MB > evil-reload-on-rss 200 MB: SIGKILL"
MEMORY_CASES = {
    "under the limit": ({101: 100 * MB, 102: 200 * MB}, []),
    "over the limit: SIGKILL, even mid-request": (
        {101: 100 * MB, 102: 300 * MB},
        [Signal(102, signal.SIGKILL, EVIL)],
    ),
    "exited before it was measured": ({101: 100 * MB}, []),
}


@pytest.mark.parametrize(("rss", "expected"), MEMORY_CASES.values(), ids=MEMORY_CASES)
def test_evil_reload_on_rss(rss: dict[int, int], expected: list[Action]) -> None:
    assert memory(table(W1, W2), rss, 200) == expected


RETRY_CASES = {
    "nothing to retry": ({1: Seat(), 2: Seat()}, []),
    "a failed boot waits out its pause": ({1: Seat(retry_at=NOW + 1, respawn_place=1)}, []),
    "then it is respawned in its place": ({1: Seat(retry_at=NOW, respawn_place=1)}, [Respawn(1, 1)]),
    "a replacement that had to wait is asked for again": (
        {1: Seat(), 2: Seat(wanted="asked by the worker")},
        [Replace(2, "asked by the worker")],
    ),
    "respawns first": (
        {1: Seat(wanted="chain reload"), 2: Seat(retry_at=NOW - 1, respawn_place=0)},
        [Respawn(2, 0), Replace(1, "chain reload")],
    ),
}


@pytest.mark.parametrize(("seats", "expected"), RETRY_CASES.values(), ids=RETRY_CASES)
def test_retries(seats: dict[int, Seat], expected: list[Action]) -> None:
    assert retries(seats, NOW) == expected


def line(child: Child, why: str) -> str:
    return f"{child.role.value} (pid {child.pid}) {why}: SIGKILL"


def stop_line(pid: int) -> str:
    return f"worker (pid {pid}) still running past the deadline: SIGKILL"


DEADLINE_CASES = {
    "nobody past a deadline": (table(W1, R1, L2, OLD, PROBE), Phase.RUNNING, NOW, []),
    "a replacement that does not accept in time": (
        table(W1, R1),
        Phase.RUNNING,
        NOW + 60,
        [Kill(201, line(R1, "did not accept"), NOW + 65)],
    ),
    "a replaced worker and an old one still running past the mercy": (
        table(L2, OLD),
        Phase.RUNNING,
        NOW + 30,
        [Kill(202, line(L2, MERCY), NOW + 35), Kill(301, line(OLD, MERCY), NOW + 35)],
    ),
    "a probe is killed once: its reload is refused": (
        table(PROBE),
        Phase.RUNNING,
        NOW + 30,
        [Kill(401, "reload probe (pid 401) still running past worker-reload-mercy: SIGKILL", math.inf)],
    ),
    "the graceful stop's deadline: SIGKILL every worker, again later": (
        table(W1, OLD),
        Phase.STOPPING,
        NOW + 10,
        [
            Signal(101, signal.SIGKILL, stop_line(101)),
            Signal(301, signal.SIGKILL, stop_line(301)),
            StopDeadline(NOW + 15),
        ],
    ),
    "before the stop's deadline": (table(W1), Phase.STOPPING, NOW + 9, []),
    "the stop's deadline does not apply while running": (table(W1), Phase.RUNNING, NOW + 10, []),
}


@pytest.mark.parametrize(
    ("children", "phase", "now", "expected"), DEADLINE_CASES.values(), ids=DEADLINE_CASES
)
def test_deadlines(children: Table, phase: Phase, now: float, expected: list[Action]) -> None:
    assert deadlines(children, phase, NOW + 10, now) == expected


REPLACEABLE_CASES = {
    "a serving worker": (table(W1), Seat(), 1, True),
    "no process serves it": (table(W2), Seat(), 1, False),
    "its replacement is starting": (table(W1, R1), Seat(), 1, False),
    "the process that left its other place is still finishing": (table(W2, L2), Seat(), 2, False),
    "the pause after a failed boot": (table(W1), Seat(retry_at=NOW + 1), 1, False),
    "the pause is over": (table(W1), Seat(retry_at=NOW), 1, True),
}


@pytest.mark.parametrize(
    ("children", "seat", "wid", "expected"), REPLACEABLE_CASES.values(), ids=REPLACEABLE_CASES
)
def test_replaceable(children: Table, seat: Seat, wid: int, expected: bool) -> None:
    assert replaceable(children, seat, wid, NOW) is expected


CHAIN_CASES = {
    "the next worker": ([1, 2], table(W1, W2), (1, [2])),
    "a worker id with no process is skipped": ([1, 2], table(W2), (2, [])),
    "the end of the chain": ([1], table(W2), (None, [])),
}


@pytest.mark.parametrize(("chain", "children", "expected"), CHAIN_CASES.values(), ids=CHAIN_CASES)
def test_next_in_chain(chain: list[int], children: Table, expected: tuple[int | None, list[int]]) -> None:
    assert next_in_chain(chain, children) == expected


TOUCH_CASES = {
    "untouched": ({"/a": 1.0, "/b": 2.0}, []),
    "touched": ({"/a": 1.5, "/b": 2.0}, [Seen("/a", 1.5, chain=False), Reload("/a was touched")]),
    "created": ({"/a": 1.0, "/b": 2.0, "/c": 3.0}, [Seen("/c", 3.0, chain=False), Reload("/c was touched")]),
    "two touched: the first now, the other in the next step": (
        {"/a": 1.5, "/b": 2.5},
        [Seen("/a", 1.5, chain=False), Reload("/a was touched")],
    ),
}


@pytest.mark.parametrize(("mtimes", "expected"), TOUCH_CASES.values(), ids=TOUCH_CASES)
def test_touch_reload(mtimes: dict[str, float | None], expected: list[Action]) -> None:
    assert touched({"/a": 1.0, "/b": 2.0, "/c": None}, {"/c": None, **mtimes}) == expected


CHAIN_TOUCH_CASES = {
    "untouched": ({"/a": 1.0}, False, []),
    "touched: every worker, in order": (
        {"/a": 1.5},
        False,
        [
            Seen("/a", 1.5, chain=True),
            Log("/a was touched: chain reload, one worker at a time"),
            StartChain([1, 2, 3]),
        ],
    ),
    "touched during a chain reload: it goes on": (
        {"/a": 1.5},
        True,
        [Seen("/a", 1.5, chain=True), Log("/a was touched: a chain reload is already running, it goes on")],
    ),
    "removed: nothing to reload": ({"/a": None}, False, [Seen("/a", None, chain=True)]),
}


@pytest.mark.parametrize(("mtimes", "running", "expected"), CHAIN_TOUCH_CASES.values(), ids=CHAIN_TOUCH_CASES)
def test_touch_chain_reload(mtimes: dict[str, float | None], running: bool, expected: list[Action]) -> None:
    assert chain_touched({"/a": 1.0}, mtimes, [3, 1, 2], running) == expected


# -- the reload handover: workers and their deadlines across the re-exec ----------------------------


@pytest.mark.parametrize(
    ("workers", "spec"),
    [
        ([], "7:"),
        ([(101, math.inf)], "7:101@inf"),
        ([(101, 12.5), (102, 1234567.891011)], "7:101@12.5,102@1234567.891011"),
    ],
)
def test_the_retiring_spec_carries_each_deadline_exactly(workers: list[tuple[int, float]], spec: str) -> None:
    assert retiring_spec(7, workers) == spec
    assert parse_retiring(spec) == (7, dict(workers))


def test_a_spec_without_deadlines_from_an_older_image_means_none_yet() -> None:
    assert parse_retiring("7:101,102") == (7, {101: math.inf, 102: math.inf})

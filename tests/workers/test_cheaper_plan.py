"""The cheaper algorithms and SIGTTIN/SIGTTOU (binserve/supervision.py), driven with tables.

Each case is what the scoreboard shows of the running workers (by worker id: which cores
are in a request, since when, how long they have spent in requests), what the algorithm
remembers, and the time; it names the decision. No process, file or clock is involved.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from binserve.config import Config, load
from binserve.scoreboard import CoreStats, WorkerStats
from binserve.supervision import (
    BUSYNESS,
    SERVING,
    Action,
    Cheap,
    Cheaper,
    Grow,
    Load,
    Log,
    Role,
    busy_seconds,
    by_hand,
    cheaper,
)
from binserve.tools.statsdoc import WorkerRow
from binserve.tools.top import worker_cells

from support import REPO

NOW = 1_700_000_000.0


def worker(pid: int, *busy: bool, spent: float = 0.0, since: float = NOW - 2) -> WorkerStats:
    """A worker whose cores are busy or not (one core if none given), having spent ``spent`` s."""
    cores = [CoreStats(1, b, since, "GET /slow", 0, 0, 0.0) for b in busy or (False,)]
    return WorkerStats(pid, 1, 0, NOW - 60, any(busy), since, "GET /slow", 1, 1, 0, 0, spent, cores)


BUSY, IDLE = (True,), (False,)
SPARE = Cheaper(minimum=1, maximum=4, step=1, overload=3, idle=10)


def workers(*states: tuple[bool, ...]) -> dict[int, WorkerStats]:
    return {wid: worker(100 + wid, *state) for wid, state in enumerate(states, start=1)}


SPARE_CASES: dict[str, tuple[Cheaper, Load, dict[int, WorkerStats], Load, list[Action]]] = {
    "every worker busy: the overload starts to count": (
        SPARE,
        Load(),
        workers(BUSY, BUSY),
        Load(overloaded_since=NOW),
        [],
    ),
    "busy for less than cheaper-overload: nothing yet": (
        SPARE,
        Load(overloaded_since=NOW - 2),
        workers(BUSY),
        Load(overloaded_since=NOW - 2),
        [],
    ),
    "busy for cheaper-overload: cheaper-step more": (
        SPARE,
        Load(overloaded_since=NOW - 3),
        workers(BUSY, BUSY),
        Load(),
        [Grow(1, "cheaper: every worker busy for 3 s (cheaper-overload 3 s): 1 more")],
    ),
    "a step never passes processes": (
        Cheaper(1, 4, step=3, overload=3),
        Load(overloaded_since=NOW - 5),
        workers(BUSY, BUSY, BUSY),
        Load(),
        [Grow(1, "cheaper: every worker busy for 5 s (cheaper-overload 3 s): 1 more")],
    ),
    "at processes: no more, whatever the load": (
        SPARE,
        Load(overloaded_since=NOW - 30),
        workers(BUSY, BUSY, BUSY, BUSY),
        Load(),
        [],
    ),
    "one idle worker ends the overload": (
        SPARE,
        Load(overloaded_since=NOW - 30),
        workers(BUSY, IDLE),
        Load(),
        [],
    ),
    "a worker with a free thread is not overloaded": (
        SPARE,
        Load(overloaded_since=NOW - 30),
        workers((True, False)),
        Load(),
        [],
    ),
    "one spare idle worker is kept": (
        SPARE,
        Load(spare_since=NOW - 60),
        workers(BUSY, IDLE),
        Load(),
        [],
    ),
    "two idle workers: the idle time starts to count": (
        SPARE,
        Load(),
        workers(BUSY, IDLE, IDLE),
        Load(spare_since=NOW),
        [],
    ),
    "idle for cheaper-idle: the highest idle worker is retired": (
        SPARE,
        Load(spare_since=NOW - 10),
        workers(IDLE, IDLE, BUSY),
        Load(spare_since=NOW),
        [Cheap(2, "cheaper: 2 workers idle for 10 s (cheaper-idle): retiring worker 2")],
    ),
    "never below cheaper": (
        Cheaper(2, 4, idle=10),
        Load(spare_since=NOW - 60),
        workers(IDLE, IDLE),
        Load(),
        [],
    ),
}


@pytest.mark.parametrize(
    ("settings", "load", "running", "after", "actions"), SPARE_CASES.values(), ids=SPARE_CASES
)
def test_spare(
    settings: Cheaper, load: Load, running: dict[int, WorkerStats], after: Load, actions: list[Action]
) -> None:
    assert cheaper(settings, load, running, NOW) == (after, actions)


BUSYNESS_SETTINGS = Cheaper(1, 4, step=2, overload=10, algo=BUSYNESS, multiplier=3, penalty=2)
BASE = ((101, 0.0), (102, 0.0))  # two workers that had spent nothing in requests at the window's start


def spent(*seconds: float) -> dict[int, WorkerStats]:
    return {wid: worker(100 + wid, False, spent=s) for wid, s in enumerate(seconds, start=1)}


def window(**changes: object) -> Load:
    fields: dict[str, object] = {"window_start": NOW - 10, "baseline": BASE, "multiplier": 3}
    fields.update(changes)
    return Load(**fields)  # type: ignore[arg-type]


def next_window(running: dict[int, WorkerStats], **changes: object) -> Load:
    baseline = tuple((stats.pid, busy_seconds(stats, NOW)) for stats in running.values())
    return window(window_start=NOW, baseline=baseline, **changes)


BUSYNESS_CASES: dict[str, tuple[Load, dict[int, WorkerStats], Load, list[Action]]] = {
    "the first look starts a window": (
        Load(),
        spent(0, 0),
        window(window_start=NOW, baseline=BASE),
        [],
    ),
    "within the window: nothing": (
        window(window_start=NOW - 5),
        spent(5, 5),
        window(window_start=NOW - 5),
        [],
    ),
    "above busyness-max: cheaper-step more": (
        window(idle_windows=2),
        spent(8, 6),
        next_window(spent(8, 6)),
        [Grow(2, "cheaper: busyness 70% > cheaper-busyness-max 50%: 2 more")],
    ),
    "needed again soon after a retirement: the penalty raises the multiplier": (
        window(last_cheap=NOW - 20),
        spent(8, 6),
        next_window(spent(8, 6), multiplier=5, last_cheap=NOW - 20),
        [Grow(2, "cheaper: busyness 70% > cheaper-busyness-max 50%: 2 more")],
    ),
    "below busyness-min: one idle window more": (
        window(idle_windows=1),
        spent(1, 1),
        next_window(spent(1, 1), idle_windows=2),
        [],
    ),
    "the multiplier's count of idle windows: one worker retired": (
        window(idle_windows=2),
        spent(1, 1),
        next_window(spent(1, 1), last_cheap=NOW),
        [
            Cheap(
                2,
                "cheaper: busyness below cheaper-busyness-min 25% for 3 window(s) of 10 s: retiring worker 2",
            )
        ],
    ),
    "between min and max: one idle window taken back": (
        window(idle_windows=2),
        spent(3, 4),
        next_window(spent(3, 4), idle_windows=1),
        [],
    ),
    "a request still running counts until now": (
        window(),
        {1: worker(101, True, since=NOW - 9), 2: worker(102, True, since=NOW - 9)},
        next_window({1: worker(101, True, since=NOW - 9), 2: worker(102, True, since=NOW - 9)}),
        [Grow(2, "cheaper: busyness 90% > cheaper-busyness-max 50%: 2 more")],
    ),
}


@pytest.mark.parametrize(("load", "running", "after", "actions"), BUSYNESS_CASES.values(), ids=BUSYNESS_CASES)
def test_busyness(load: Load, running: dict[int, WorkerStats], after: Load, actions: list[Action]) -> None:
    assert cheaper(BUSYNESS_SETTINGS, load, running, NOW) == (after, actions)


BY_HAND: dict[str, tuple[str, int, dict[int, WorkerStats], int, list[Action]]] = {
    "TTIN below processes": (
        "SIGTTIN",
        1,
        workers(IDLE),
        1,
        [Grow(1, "SIGTTIN: 1 worker(s) more, 2 of at most 3")],
    ),
    "TTIN at processes": (
        "SIGTTIN",
        1,
        workers(IDLE, IDLE, IDLE),
        1,
        [Log("SIGTTIN refused: 3 workers run, the most processes (3) allows")],
    ),
    "TTOU retires the highest idle worker": (
        "SIGTTOU",
        1,
        workers(IDLE, IDLE, BUSY),
        1,
        [Cheap(2, "SIGTTOU: retiring worker 2, 2 left")],
    ),
    "TTOU with every worker busy retires the highest": (
        "SIGTTOU",
        1,
        workers(BUSY, BUSY),
        1,
        [Cheap(2, "SIGTTOU: retiring worker 2, 1 left")],
    ),
    "TTOU twice, refused at the minimum": (
        "SIGTTOU",
        2,
        workers(IDLE, IDLE),
        1,
        [
            Cheap(2, "SIGTTOU: retiring worker 2, 1 left"),
            Log("SIGTTOU refused: 1 worker(s) run, the fewest F allows"),
        ],
    ),
    "TTOU at cheaper": (
        "SIGTTOU",
        1,
        workers(IDLE, IDLE),
        2,
        [Log("SIGTTOU refused: 2 worker(s) run, the fewest F allows")],
    ),
}


@pytest.mark.parametrize(("signame", "times", "running", "minimum", "actions"), BY_HAND.values(), ids=BY_HAND)
def test_ttin_and_ttou(
    signame: str, times: int, running: dict[int, WorkerStats], minimum: int, actions: list[Action]
) -> None:
    assert by_hand(signame, times, running, minimum, 3, "F") == actions


def test_a_cheaped_worker_is_one_that_may_still_hold_a_request() -> None:
    assert Role.CHEAPED in SERVING  # harakiri and the stop's deadlines still watch it


def test_binserve_top_shows_a_cheap_worker_without_a_pid() -> None:
    row = WorkerRow(3, 0, 12, None, 0, "cheap", 0.0, 0, None, 1024, 1, 0, "")
    cells = worker_cells(row)
    assert cells[:2] == ["3", "-"] and "cheap" in cells and cells[7] == "-"


def test_the_defaults_are_uwsgi_s() -> None:
    config = Config()
    assert (config.cheaper, config.cheaper_algo, config.cheaper_step, config.cheaper_overload) == (
        0,
        "spare",
        1,
        3,
    )
    assert (config.cheaper_busyness_max, config.cheaper_busyness_min) == (50, 25)
    assert (config.cheaper_busyness_multiplier, config.cheaper_busyness_penalty) == (10, 1)
    assert config.cheaper_idle == 10


def test_the_readme_example_is_a_valid_config(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Adaptive workers") :]
    example = section[
        section.index("```ini\n") + len("```ini\n") : section.index("```\n", section.index("```ini"))
    ]
    (tmp_path / "app.ini").write_text(example)
    config = load(["--ini", str(tmp_path / "app.ini")], {})
    assert (config.processes, config.cheaper, config.cheaper_initial, config.cheaper_step) == (8, 2, 4, 2)
    assert (config.cheaper_algo, config.cheaper_overload, config.cheaper_idle) == ("spare", 3, 10)

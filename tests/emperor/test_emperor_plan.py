"""The emperor's decisions, driven with tables: ``plan(desired, actual, now)`` and the others.

Every plan case starts from the same base: three vassal files (a, b, c) and three running
vassals that match them. A case changes the files, the vassals or both, and names the actions
the plan must return. The loop's other decisions (a dead vassal's throttle, which vassals are
past their mercy, how long to sleep) start from the same base. All are pure, so no process,
file or clock is involved.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from binserve.emperor.plan import (
    Reload,
    Respawn,
    Spawn,
    Stop,
    Vassal,
    VassalFile,
    Wait,
    after_death,
    overdue,
    plan,
    throttle,
    wake_timeout,
)
from binserve.emperor.watch import scan

NOW = 1000.0
UID, GID = 1000, 1000
A, B, C, D, E = (f"/etc/vassals/{name}.ini" for name in "abcde")
WHY = "died 2 time(s) without serving a request"

Desired = dict[str, VassalFile]
Actual = dict[str, Vassal]


def base() -> tuple[Desired, Actual]:
    """Three files and three running vassals that match them."""
    desired = {path: VassalFile(path, f"digest-{path[-5]}", UID, GID, 500.0) for path in (A, B, C)}
    actual = {
        path: Vassal(path, digest=f.digest, mtime=f.mtime, uid=UID, gid=GID, pid=100 + i, state="running")
        for i, (path, f) in enumerate(desired.items())
    }
    return desired, actual


def add(desired: Desired, actual: Actual) -> None:
    desired[D] = VassalFile(D, "digest-d", UID, GID, 600.0)


def remove(desired: Desired, actual: Actual) -> None:
    del desired[B]


def change(desired: Desired, actual: Actual) -> None:
    desired[B] = replace(desired[B], digest="digest-b2")


def change_older_mtime(desired: Desired, actual: Actual) -> None:
    # A deploy tool that keeps the old mtime (rsync -t, tar): the content still counts.
    desired[B] = replace(desired[B], digest="digest-b2", mtime=100.0)


def touch(desired: Desired, actual: Actual) -> None:
    desired[B] = replace(desired[B], mtime=501.0)


def mtime_back(desired: Desired, actual: Actual) -> None:
    # Only a forward move is a touch: an mtime set back with the same content is no change.
    desired[B] = replace(desired[B], mtime=400.0)


def rename(desired: Desired, actual: Actual) -> None:
    old = desired.pop(B)
    desired[E] = replace(old, path=E)  # same content, new name


def crash_waiting(desired: Desired, actual: Actual) -> None:
    actual[B] = replace_vassal(actual[B], state="waiting", pid=None, next_attempt=NOW + 4, waiting_why=WHY)


def crash_wait_over(desired: Desired, actual: Actual) -> None:
    actual[B] = replace_vassal(actual[B], state="waiting", pid=None, next_attempt=NOW - 0.1, waiting_why=WHY)


def crash_wait_ends_now(desired: Desired, actual: Actual) -> None:
    actual[B] = replace_vassal(actual[B], state="waiting", pid=None, next_attempt=NOW, waiting_why=WHY)


def crash_then_fixed(desired: Desired, actual: Actual) -> None:
    crash_waiting(desired, actual)
    desired[B] = replace(desired[B], digest="digest-b-fixed")


def crash_then_removed(desired: Desired, actual: Actual) -> None:
    crash_waiting(desired, actual)
    del desired[B]


def reowned_uid(desired: Desired, actual: Actual) -> None:
    desired[B] = replace(desired[B], uid=UID + 1)


def reowned_gid(desired: Desired, actual: Actual) -> None:
    desired[B] = replace(desired[B], gid=GID + 1)


def reowned_and_changed(desired: Desired, actual: Actual) -> None:
    desired[B] = replace(desired[B], uid=UID + 1, digest="digest-b2", mtime=900.0)


def stopping(desired: Desired, actual: Actual) -> None:
    actual[B].state = "stopping"


def stopping_and_changed(desired: Desired, actual: Actual) -> None:
    actual[B].state = "stopping"
    desired[B] = replace(desired[B], digest="digest-b2", mtime=900.0)


def stopping_and_removed(desired: Desired, actual: Actual) -> None:
    actual[B].state = "stopping"
    del desired[B]


def stopped_file_still_there(desired: Desired, actual: Actual) -> None:
    actual[B] = replace_vassal(actual[B], state="stopped", pid=None)


def stopped_file_gone(desired: Desired, actual: Actual) -> None:
    actual[B] = replace_vassal(actual[B], state="stopped", pid=None)
    del desired[B]


def starting_and_changed(desired: Desired, actual: Actual) -> None:
    actual[B].state = "starting"
    desired[B] = replace(desired[B], digest="digest-b2")


def reloading_and_touched(desired: Desired, actual: Actual) -> None:
    actual[B].state = "reloading"
    desired[B] = replace(desired[B], mtime=700.0)


def everything_gone(desired: Desired, actual: Actual) -> None:
    desired.clear()


def nothing_running(desired: Desired, actual: Actual) -> None:
    actual.clear()


def two_at_once(desired: Desired, actual: Actual) -> None:
    add(desired, actual)
    remove(desired, actual)
    desired[C] = replace(desired[C], mtime=999.0)


def replace_vassal(vassal: Vassal, **changes: object) -> Vassal:
    new = copy.copy(vassal)
    for name, value in changes.items():
        setattr(new, name, value)
    return new


@dataclass(frozen=True)
class Case:
    name: str
    mutate: Callable[[Desired, Actual], None]
    expected: list[object]


CASES = [
    Case("unchanged", lambda d, a: None, []),
    Case("add", add, [Spawn(D)]),
    Case("remove", remove, [Stop(B)]),
    Case("change", change, [Reload(B)]),
    Case("change with an older mtime", change_older_mtime, [Reload(B)]),
    Case("touch", touch, [Reload(B)]),
    Case("mtime moved back, same content", mtime_back, []),
    Case("rename", rename, [Spawn(E), Stop(B)]),
    Case("crash, throttled", crash_waiting, [Wait(B, NOW + 4, WHY)]),
    Case("crash, throttle over", crash_wait_over, [Spawn(B)]),
    Case("crash, throttle ends now", crash_wait_ends_now, [Spawn(B)]),
    Case("crash, file fixed while waiting", crash_then_fixed, [Spawn(B)]),
    Case("crash, file removed while waiting", crash_then_removed, [Stop(B)]),
    Case("reowned (uid)", reowned_uid, [Stop(B)]),
    Case("reowned (gid)", reowned_gid, [Stop(B)]),
    Case("reowned and changed", reowned_and_changed, [Stop(B)]),
    Case("stopping is left alone", stopping, []),
    Case("stopping, file changed", stopping_and_changed, []),
    Case("stopping, file removed", stopping_and_removed, []),
    Case("stopped, file still there", stopped_file_still_there, [Spawn(B)]),
    Case("stopped, file gone", stopped_file_gone, []),
    Case("starting, file changed", starting_and_changed, [Reload(B)]),
    Case("reloading, file touched", reloading_and_touched, [Reload(B)]),
    Case("every file removed", everything_gone, [Stop(A), Stop(B), Stop(C)]),
    Case("first scan", nothing_running, [Spawn(A), Spawn(B), Spawn(C)]),
    Case("add, remove and touch at once", two_at_once, [Reload(C), Spawn(D), Stop(B)]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_plan(case: Case) -> None:
    desired, actual = base()
    case.mutate(desired, actual)
    before = (copy.deepcopy(desired), copy.deepcopy(actual))
    actions = plan(desired, actual, NOW)
    assert sorted(actions, key=repr) == sorted(case.expected, key=repr)
    # Pure: the inputs are untouched and the same inputs give the same plan.
    assert (desired, actual) == before
    assert plan(desired, actual, NOW) == actions


def test_rename_stops_the_old_name_and_spawns_the_new_one_even_with_identical_content() -> None:
    desired, actual = base()
    rename(desired, actual)
    assert desired[E].digest == actual[B].digest
    assert set(plan(desired, actual, NOW)) == {Stop(B), Spawn(E)}


def test_waiting_until_the_throttle_is_over_then_spawning() -> None:
    """One vassal followed through time: waits while now < next_attempt, spawns from then on."""
    desired, actual = base()
    crash_waiting(desired, actual)
    until = actual[B].next_attempt
    for now in (NOW, until - 1, until - 0.001):
        assert plan(desired, actual, now) == [Wait(B, until, WHY)]
    for now in (until, until + 0.001, until + 100):
        assert plan(desired, actual, now) == [Spawn(B)]


@pytest.mark.parametrize(
    ("failures", "seconds"),
    [(0, 1), (1, 1), (2, 2), (3, 4), (4, 8), (5, 16), (6, 32), (7, 60), (8, 60), (50, 60)],
)
def test_throttle_doubles_up_to_the_cap(failures: int, seconds: float) -> None:
    assert throttle(failures, 1000, 60000) == seconds


def test_throttle_growth_is_monotonic_and_capped() -> None:
    delays = [throttle(n, 1000, 60000) for n in range(1, 30)]
    assert delays[:4] == [1, 2, 4, 8]
    assert delays == sorted(delays)
    assert max(delays) == 60
    assert throttle(3, 250, 700) == 0.7
    assert throttle(1, 250, 700) == 0.25


def test_scan_reports_unreadable_files_and_refuses_root_owned_ones_as_tyrant(tmp_path: Path) -> None:
    """The desired state as ``scan`` reads it: what plan gets, and the problems the emperor logs."""
    good = tmp_path / "good.ini"
    good.write_text("[uwsgi]\nprocesses = 1\n")
    (tmp_path / "dir.ini").mkdir()
    (tmp_path / "dangling.ini").symlink_to(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("not a vassal")
    found, problems = scan([str(tmp_path)], tyrant=False)
    assert list(found) == [str(good)]
    assert found[str(good)].mtime == good.stat().st_mtime
    assert len(problems) == 2
    assert any(str(tmp_path / "dir.ini") in p and "is a directory" in p.lower() for p in problems)
    assert any(str(tmp_path / "dangling.ini") in p and "No such file" in p for p in problems)

    owned_by_root = good.stat().st_uid == 0
    found, problems = scan([str(tmp_path / "good.ini")], tyrant=True)
    if owned_by_root:
        assert found == {}
        assert problems == [f"[emperor-tyrant] invalid permissions for vassal {good}: owned by root"]
    else:
        assert list(found) == [str(good)]


def test_scan_does_not_hang_on_a_fifo_named_like_a_vassal(tmp_path: Path) -> None:
    """A FIFO would block a plain open() forever; the scan reports it and goes on."""
    os.mkfifo(tmp_path / "pipe.ini")
    (tmp_path / "ok.ini").write_text("[uwsgi]\n")
    found, problems = scan([str(tmp_path)], tyrant=False)
    assert list(found) == [str(tmp_path / "ok.ini")]
    assert problems == [f"{tmp_path / 'pipe.ini'}: cannot read vassal file: is a FIFO, not a regular file"]


# -- the loop's other decisions -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("loyal", "failures", "expected"),
    [
        (True, 0, Respawn(0, 0.0, "")),
        (True, 5, Respawn(0, 0.0, "")),  # serving a request forgives the failures before it
        (False, 0, Respawn(1, 1.0, "died 1 time(s) without serving a request")),
        (False, 1, Respawn(2, 2.0, "died 2 time(s) without serving a request")),
        (False, 6, Respawn(7, 60.0, "died 7 time(s) without serving a request")),
        (False, 40, Respawn(41, 60.0, "died 41 time(s) without serving a request")),
    ],
)
def test_after_death(loyal: bool, failures: int, expected: Respawn) -> None:
    assert after_death(loyal, failures, 1000, 60000) == expected


def case(name: str, *values: object) -> Any:
    """A table row named for what it shows."""
    return pytest.param(*values, id=name)


def stopped_alone(deadline: float, pid: int | None = 200, state: str = "stopping") -> Actual:
    """The base vassals, with B stopped alone (its file removed) until ``deadline``."""
    _, actual = base()
    actual[B] = replace_vassal(actual[B], state=state, pid=pid, stop_deadline=deadline)
    return actual


@pytest.mark.parametrize(
    ("actual", "stopping", "deadline", "expected"),
    [
        case("nothing stopping", base()[1], False, 0.0, []),
        case("stopped alone, within its mercy", stopped_alone(NOW + 1), False, 0.0, []),
        case("stopped alone, mercy ends now", stopped_alone(NOW), False, 0.0, [B]),
        case("stopped alone, past its mercy", stopped_alone(NOW - 1), False, 0.0, [B]),
        case("stopped alone, already exited", stopped_alone(NOW - 1, pid=None), False, 0.0, []),
        case("stopped alone, no mercy set", stopped_alone(0.0), False, 0.0, []),
        case("running, a deadline left from before", stopped_alone(NOW - 1, state="running"), False, 0.0, []),
        case("emperor stopping, within its deadline", base()[1], True, NOW + 1, []),
        case("emperor stopping, deadline now", base()[1], True, NOW, [A, B, C]),
        case("emperor stopping, only those running", stopped_alone(NOW + 1, pid=None), True, NOW - 1, [A, C]),
    ],
)
def test_overdue(actual: Actual, stopping: bool, deadline: float, expected: list[str]) -> None:
    assert overdue(actual, NOW, stopping, deadline) == expected


@pytest.mark.parametrize(
    ("stopping", "deadline", "next_scan", "probes", "expected"),
    [
        case("until the next scan", False, 0.0, NOW + 3, [], 3.0),
        case("a scan overdue", False, 0.0, NOW - 1, [], 0.0),
        case("a stats reader due first", False, 0.0, NOW + 3, [NOW + 2, NOW + 1], 1.0),
        case("a stats reader overdue", False, 0.0, NOW + 3, [NOW - 1], 0.0),
        case("the scan before the reader", False, 0.0, NOW + 1, [NOW + 2], 1.0),
        case("stopping: no scans, half a second at most", True, NOW + 5, NOW - 1, [], 0.5),
        case("stopping: the deadline first", True, NOW + 0.2, NOW - 1, [], 0.2),
        case("stopping: past the deadline", True, NOW - 1, NOW + 3, [], 0.0),
        case("stopping: a stats reader first", True, NOW + 5, NOW, [NOW + 0.1], 0.1),
    ],
)
def test_wake_timeout(
    stopping: bool, deadline: float, next_scan: float, probes: list[float], expected: float
) -> None:
    assert wake_timeout(NOW, stopping, deadline, next_scan, probes) == pytest.approx(expected)

"""The emperor's decisions, apart from the processes and files they are about.

What to do with each vassal, how long a failing one waits, when one is past its mercy and how
long the loop may sleep are functions of the emperor's state and the time, with no I/O and no
clock, so tests drive them from tables; the loop (``run``) only gathers the state and carries
the answers out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the loop's handles on a vassal: the plan only carries them along
    import socket
    import subprocess


class State(StrEnum):
    """Where a vassal is in its life; the state file and the stats document show the value."""

    NEW = "new"
    STARTING = "starting"  # spawned, not yet accepting
    RUNNING = "running"
    RELOADING = "reloading"  # told to reload, not yet accepting again
    STOPPING = "stopping"  # told to stop; SIGKILL at its deadline
    WAITING = "waiting"  # died; respawned after a pause
    STOPPED = "stopped"


@dataclass(frozen=True)
class VassalFile:
    """A vassal as the directory describes it."""

    path: str
    digest: str
    uid: int
    gid: int
    mtime: float = 0.0
    real: str = ""  # the file itself, the link resolved: its directory is the vassal's cwd


@dataclass
class Vassal:
    """A vassal as the emperor knows it."""

    path: str
    digest: str = ""
    mtime: float = 0.0
    uid: int = 0
    gid: int = 0
    pid: int | None = None
    state: State = State.NEW
    born: float = 0.0
    last_reload: float = 0.0
    respawns: int = 0
    loyal: bool = False
    accepting: bool = False
    failures: int = 0
    next_attempt: float = 0.0  # monotonic time before which it is not respawned
    waiting_why: str = ""
    stop_deadline: float = 0.0
    stats: str | None = None  # the vassal's stats address, when its file names one
    first_failure: float = 0.0  # epoch of the first of the failures in a row
    unreadable: str = ""  # the digest whose stats address could not be read (logged once)
    last_attempt: float = 0.0  # epoch of the latest spawn attempt
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    pipe: socket.socket | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Spawn:
    """Start a vassal for this file."""

    path: str


@dataclass(frozen=True)
class Reload:
    """The file changed: reload the vassal gracefully."""

    path: str


@dataclass(frozen=True)
class Stop:
    """The file is gone (or now belongs to someone else): stop the vassal gracefully."""

    path: str


@dataclass(frozen=True)
class Wait:
    """A failing vassal is throttled until ``until`` (monotonic seconds)."""

    path: str
    until: float
    why: str


Action = Spawn | Reload | Stop | Wait

LIVE = (State.STARTING, State.RUNNING, State.RELOADING)


def plan(desired: dict[str, VassalFile], actual: dict[str, Vassal], now: float) -> list[Action]:
    """What to do to make the running vassals match the files. Pure: no I/O, no clock.

    A vassal being stopped is left alone until it has exited; one whose process died is
    respawned at once if it was loyal (had served a request), else after its throttle.
    """
    actions: list[Action] = []
    for path, wanted in desired.items():
        vassal = actual.get(path)
        if vassal is None or vassal.state == State.STOPPED:
            actions.append(Spawn(path))
        elif vassal.state == State.WAITING:
            # A fixed file is worth trying at once; an unchanged one waits out its throttle.
            if now >= vassal.next_attempt or wanted.digest != vassal.digest:
                actions.append(Spawn(path))
            else:
                actions.append(Wait(path, vassal.next_attempt, vassal.waiting_why))
        elif vassal.state in LIVE and (wanted.uid, wanted.gid) != (vassal.uid, vassal.gid):
            actions.append(Stop(path))
        elif vassal.state in LIVE and (wanted.digest != vassal.digest or wanted.mtime > vassal.mtime):
            actions.append(Reload(path))
    for path, vassal in actual.items():
        if path not in desired and vassal.state in (*LIVE, State.WAITING):
            actions.append(Stop(path))
    return actions


def throttle(failures: int, base_ms: int, max_ms: int) -> float:
    """Seconds to wait before respawning a vassal that failed ``failures`` times in a row."""
    return min(base_ms * 2 ** max(failures - 1, 0), max_ms) / 1000.0


@dataclass(frozen=True)
class Respawn:
    """When a vassal that died (or could not start) is tried again."""

    failures: int  # in a row without serving a request, this death included
    delay: float  # seconds from now
    why: str  # what the status shows while it waits ("" when it does not)


def after_death(loyal: bool, failures: int, base_ms: int, max_ms: int) -> Respawn:
    """A loyal vassal (one that served a request) is respawned at once and its failures are
    forgotten; one that never served counts one more failure and waits out its throttle."""
    if loyal:
        return Respawn(0, 0.0, "")
    failures += 1
    why = f"died {failures} time(s) without serving a request"
    return Respawn(failures, throttle(failures, base_ms, max_ms), why)


def overdue(actual: dict[str, Vassal], now: float, stopping: bool, deadline: float) -> list[str]:
    """The vassals to SIGKILL now.

    A stopping emperor kills every vassal still running once its own ``deadline`` has passed;
    otherwise only a vassal stopped alone (its file removed, or at its request) that is still
    running past its ``stop_deadline``.
    """
    if stopping:
        return [path for path, v in actual.items() if v.pid is not None] if now >= deadline else []
    return [
        path
        for path, v in actual.items()
        if v.state == State.STOPPING and v.pid is not None and 0 < v.stop_deadline <= now
    ]


def wake_timeout(
    now: float, stopping: bool, deadline: float, next_scan: float, probe_deadlines: Iterable[float]
) -> float:
    """How long the loop may wait for an event before it has something to do on its own."""
    if stopping:
        # No scans while stopping: wake for the deadline, and for the SIGCHLDs meanwhile.
        timeout = min(max(0.0, deadline - now), 0.5)
    else:
        timeout = max(0.0, next_scan - now)
    # A stats reader not done by its deadline is killed on time, whatever else is pending.
    return min([timeout, *(max(0.0, d - now) for d in probe_deadlines)])

"""What the emperor tells about its vassals, and ``binserve --emperor-status`` reading it back.

The emperor keeps a JSON state file (where, depends on whether its users may write the
directory it watches) and answers its stats socket in uWSGI's emperor layout; the status
command is a separate process that finds the state file and prints it as a table. A state
file in a directory users write may have been written by them, not by an emperor: reading it
is bounded, and a document that is not an emperor's is an error, not a crash.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable
from typing import Any

from .. import safefile
from ..log import log
from ..stats import VERSION
from .plan import State, Vassal, throttle

STATE_NAME = ".binserve-emperor.json"
# A tyrant's vassal directories are writable by its users: its state lives where only root writes.
RUN_DIR = "/run/binserve"
# A state file lists every vassal in a few hundred bytes each: this bound is thousands of them.
MAX_STATE_BYTES = 16 << 20


def tyrant_state_path(directory: str) -> str:
    """Where a tyrant emperor watching ``directory`` keeps its state: a root-only directory."""
    key = hashlib.sha256(os.fsencode(os.path.realpath(directory))).hexdigest()[:16]
    return os.path.join(RUN_DIR, f"emperor-{key}.json")


def default_state_path(directory: str, tyrant: bool) -> str | None:
    """The state file's default path; None (and a log line) when there is no safe place for it."""
    if not tyrant:
        return os.path.join(directory, STATE_NAME)
    try:
        safefile.private_directory(RUN_DIR)
    except OSError as exc:
        log(f"emperor: no state file (--emperor-status will not see it): {RUN_DIR}: {exc.strerror}")
        return None
    return tyrant_state_path(directory)


def _state_of(directory: str) -> str:
    """The state file of the emperor watching ``directory``: a tyrant's first, as no user can forge it."""
    tyrant = tyrant_state_path(directory)
    return tyrant if os.path.exists(tyrant) else os.path.join(directory, STATE_NAME)


def state_document(vassals: Iterable[Vassal], patterns: list[str]) -> dict[str, Any]:
    """The emperor's state as a JSON-able document, as its state file holds it."""
    now_mono, now = time.monotonic(), time.time()
    entries = []
    for vassal in vassals:
        entry: dict[str, Any] = {
            "id": os.path.basename(vassal.path),
            "path": vassal.path,
            "pid": vassal.pid,
            "state": vassal.state,
            "born": round(vassal.born),
            "last_reload": round(vassal.last_reload),
            "respawns": vassal.respawns,
            "loyal": vassal.loyal,
            "accepting": vassal.accepting,
            "failures": vassal.failures,
        }
        if vassal.state == State.WAITING:
            entry["throttled_until"] = round(now + max(0.0, vassal.next_attempt - now_mono), 1)
            entry["why"] = vassal.waiting_why
        entries.append(entry)
    return {"pid": os.getpid(), "emperor": patterns, "time": round(now), "vassals": entries}


def stats_document(
    vassals: Iterable[Vassal], patterns: list[str], tyrant: bool, base_ms: int, max_ms: int
) -> dict[str, Any]:
    """The emperor's stats in uWSGI's emperor layout, plus each vassal's state and stats address.

    ``base_ms`` and ``max_ms`` are the throttle's, to report a waiting vassal's level as uWSGI does.
    """
    now_mono, now = time.monotonic(), time.time()
    entries, blacklist = [], []
    for vassal in vassals:
        name = os.path.basename(vassal.path)
        waiting = vassal.state == State.WAITING
        entries.append(
            {
                "id": name,
                "pid": vassal.pid,
                "born": int(vassal.born),
                "last_mod": int(vassal.mtime),
                "loyal": int(vassal.loyal),
                "ready": int(vassal.pid is not None),
                "accepting": int(vassal.accepting),
                "respawns": vassal.respawns,
                "uid": vassal.uid,
                "gid": vassal.gid,
                "monitor": os.path.dirname(vassal.path),
                "state": vassal.state,
                "last_reload": int(vassal.last_reload),
                "throttled_until": now + max(0.0, vassal.next_attempt - now_mono) if waiting else None,
                "why": vassal.waiting_why if waiting else "",
                "stats": vassal.stats,
            }
        )
        if waiting:
            blacklist.append(
                {
                    "id": name,
                    "throttle_level": int(1000 * throttle(vassal.failures, base_ms, max_ms)),
                    "attempt": vassal.failures,
                    "first_attempt": int(vassal.first_failure),
                    "last_attempt": int(vassal.last_attempt),
                }
            )
    return {
        "version": VERSION,
        "pid": os.getpid(),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "cwd": os.getcwd(),
        "emperor": patterns,
        "emperor_tyrant": int(tyrant),
        "throttle_level": 0,
        "vassals": entries,
        "blacklist": blacklist,
    }


def print_status(target: str) -> int:
    """``binserve --emperor-status DIR|FILE``: print the vassals' state; 1 if there is none."""
    path = _state_of(target) if os.path.isdir(target) else target
    try:
        state = json.loads(safefile.read_bounded(path, MAX_STATE_BYTES))
    except (OSError, ValueError) as exc:
        print(f"binserve: no emperor state in {path}: {exc}", file=sys.stderr)
        return 1
    try:
        lines = _status_lines(state)
    except (LookupError, TypeError, ValueError, OverflowError) as exc:
        # Whoever may write the watched directory may have written this file, not an emperor.
        print(f"binserve: {path} is not an emperor state: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def _status_lines(state: Any) -> list[str]:
    """The status table of a state document; raises on a document no emperor wrote."""
    try:
        os.kill(state["pid"], 0)
        alive = ""
    except ProcessLookupError:
        alive = (
            f" (NOT RUNNING: state as of {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(state['time']))})"
        )
    except PermissionError:
        alive = ""
    lines = [
        f"emperor pid {state['pid']} watching {', '.join(state['emperor'])}{alive}",
        f"{'VASSAL':<24} {'PID':>7} {'STATE':<10} {'RESPAWNS':>8} {'LOYAL':<5} NOTE",
    ]
    for vassal in state["vassals"]:
        note = ""
        if vassal["state"] == "waiting":
            left = max(0.0, vassal["throttled_until"] - time.time())
            note = f"throttled for {left:.1f} s more: {vassal['why']}"
        pid = vassal["pid"] if vassal["pid"] is not None else "-"
        lines.append(
            f"{vassal['id']:<24} {pid:>7} {vassal['state']:<10} {vassal['respawns']:>8} "
            f"{'yes' if vassal['loyal'] else 'no':<5} {note}".rstrip()
        )
    return lines

"""The master's child processes: one table of records, and what happens to the workers in it.

Every process the master forked has one record (binserve/supervision.py's ``Child``) in one
table, by pid. This module keeps the table true as workers are spawned, replaced and lost.

A worker is replaced in three steps: its replacement is spawned beside it, in the worker id's
other scoreboard place, and is a REPLACEMENT until it accepts; then it is the WORKER and the
old process is LEAVING (SIGTERM: it finishes its requests). A replacement that fails to boot
leaves the old worker serving, and is tried again after a pause. A chain reload replaces the
workers so, one at a time. The master's loop (binserve/master.py) decides when; it asks
through ``running`` whether workers may be spawned, and is told through ``boot_failed`` when
no worker could ever start.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from collections.abc import Callable
from typing import NoReturn

from . import signals
from .config import Config
from .log import log
from .scoreboard import Scoreboard
from .signals import kill_quietly
from .stacks import StackFile
from .supervision import (
    QUICK_DEATH,
    RETRY_AFTER,
    Child,
    Role,
    Seat,
    Table,
    has,
    next_in_chain,
    replaceable,
    worker,
)
from .worker import BOOT_ERROR

MERCY_PASSED = "still running past worker-reload-mercy"


class Children:
    """The table of a master's children, and the worker ids' seats."""

    def __init__(
        self,
        config: Config,
        board: Scoreboard,
        running: Callable[[], bool],
        become_worker: Callable[[int, int, StackFile | None], NoReturn],
        boot_failed: Callable[[], None],
    ) -> None:
        self.config = config
        self.board = board
        self.running = running  # whether the master runs (neither stopping nor reloading)
        # In a forked child: serve as worker ``wid`` in ``place``, writing its stacks in the file given.
        self.become_worker = become_worker
        self.boot_failed = boot_failed  # no worker ever accepted and one failed to boot
        self.table: Table = {}  # every child process, by pid
        # With cheaper, the seats past the first cheaper-initial (else cheaper) workers start cheap.
        initial = (config.cheaper_initial or config.cheaper) if config.cheaper else config.processes
        self.seats = {wid: Seat(cheap=wid > initial) for wid in range(1, config.processes + 1)}
        self.accepted = False  # a worker has accepted: boot failures from then on are not fatal
        self.chain: list[int] = []  # wids still to replace in a chain reload
        self.chain_wait: int | None = None  # the wid being replaced in the chain reload

    def spawn(self, wid: int, place: int = 0, replacing: bool = False) -> None:
        """Fork a process for worker ``wid`` into ``place``; a replacement stays one until it accepts."""
        when = time.time()  # before the fork: the child may start a request before the parent runs on
        stacks = self._stack_file(wid)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = signals.fork_worker(signals.MASTER)  # the worker unblocks once its handlers are in place
        except OSError as exc:  # the user's process limit, a cgroup's pids.max: try again later
            if stacks is not None:
                stacks.close()
            self.cannot_fork(wid, place, replacing, exc)
            return
        if pid == 0:
            self.become_worker(wid, place, stacks)
        self.board.spawned(wid, pid, place, when)
        now = time.monotonic()
        if replacing:
            old = worker(self.table, wid)
            assert old is not None
            mercy = self.config.worker_reload_mercy
            self.table[pid] = Child(
                pid,
                Role.REPLACEMENT,
                wid,
                place,
                now,
                now + mercy,
                "did not accept within worker-reload-mercy",
                stacks=stacks,
            )
            log(f"spawned worker {wid} (pid {pid}) to replace pid {old.pid}")
        else:
            self.board.promote(wid, place)
            self.table[pid] = Child(pid, Role.WORKER, wid, place, now, stacks=stacks)
            log(f"spawned worker {wid} (pid {pid})")

    def _stack_file(self, wid: int) -> StackFile | None:
        """The file the worker writes its stacks into on harakiri (none without harakiri)."""
        if not self.config.harakiri:
            return None
        try:
            return StackFile()
        except OSError as exc:
            log(f"worker {wid}: no stack file ({exc.strerror}): a harakiri will not show where it was stuck")
            return None

    def forget(self, pid: int) -> Child | None:
        """Take an exited child out of the table, closing what the master kept for it."""
        child = self.table.pop(pid, None)
        if child is not None and child.stacks is not None:
            child.stacks.close()
        return child

    def cannot_fork(self, wid: int, place: int, replacing: bool, exc: OSError) -> None:
        """A worker could not be forked: the one it was to replace serves on, or it is respawned later."""
        log(f"cannot fork worker {wid}: {exc.strerror}; next try in {RETRY_AFTER:g} s")
        seat = self.seats[wid]
        seat.retry_at = time.monotonic() + RETRY_AFTER
        if replacing:
            seat.wanted = seat.wanted or "trying again to replace it"
        else:
            seat.respawn_place = place

    def on_recycling(self, pid: int) -> None:
        """A worker asks to be recycled (it goes on serving until its replacement accepts)."""
        child = self.table.get(pid)
        if child is not None and child.role is Role.WORKER and self.running():
            self.replace(child.wid, "asked by the worker")

    def replace(self, wid: int, why: str) -> None:
        """Start a replacement for worker ``wid`` in its other place, now or as soon as it can be."""
        seat = self.seats[wid]
        seat.wanted = why
        if not self.running() or not replaceable(self.table, seat, wid, time.monotonic()):
            return
        seat.wanted = ""
        old = worker(self.table, wid)
        assert old is not None
        log(f"worker {wid} (pid {old.pid}): {why}; spawning its replacement")
        self.spawn(wid, 1 - old.place, replacing=True)

    def on_accepting(self, pid: int) -> None:
        """A replacement accepts: it becomes the worker, and the old process may leave."""
        self.accepted = True
        new = self.table.get(pid)
        if new is not None:
            new.accepting = True
        if new is None or new.role is not Role.REPLACEMENT:
            return
        wid = new.wid
        old = worker(self.table, wid)
        self.seats[wid].wanted = ""  # asked for while this one was starting: it is the new process
        self.board.promote(wid, new.place)
        new.role, new.kill_by, new.kill_why = Role.WORKER, math.inf, ""
        if old is not None:
            old.role, old.kill_why = Role.LEAVING, MERCY_PASSED
            old.kill_by = time.monotonic() + self.config.worker_reload_mercy
            log(f"worker {wid} (pid {pid}) accepts: retiring pid {old.pid}")
            kill_quietly(old.pid, signal.SIGTERM)
        if wid == self.chain_wait:
            self.chain_wait = None
            self.advance_chain()

    def advance_chain(self) -> None:
        """Chain reload: replace the next worker, once the previous replacement accepts."""
        if self.chain_wait is None and self.running():
            self.chain_wait, self.chain = next_in_chain(self.chain, self.table)
            if self.chain_wait is not None:
                self.replace(self.chain_wait, "chain reload")
        if not self.chain and self.chain_wait is None:
            log("chain reload: every worker replaced")

    def abort_chain(self, why: str) -> None:
        """Stop a chain reload: the workers not yet replaced keep running."""
        if self.chain or self.chain_wait is not None:
            log(f"chain reload stopped: {why}; {len(self.chain) + 1} worker(s) keep their old process")
        self.chain = []
        self.chain_wait = None

    def workers(self) -> list[Child]:
        """Every worker process: current, replacements, leaving and those of the previous image."""
        return [child for child in self.table.values() if child.role is not Role.PROBE]

    def lost_replacement(self, child: Child, code: int, how: str) -> None:
        """A replacement exited before it accepted: the worker it was to replace goes on serving."""
        wid, pid = child.wid, child.pid
        if not self.running():
            log(f"worker {wid}'s replacement (pid {pid}) {how}")
            return
        current = worker(self.table, wid)
        if code == BOOT_ERROR:
            log(
                f"worker {wid}'s replacement (pid {pid}) failed to boot (see above); pid "
                f"{current.pid if current else '-'} goes on serving; next try in {RETRY_AFTER:g} s"
            )
        else:
            log(
                f"worker {wid}'s replacement (pid {pid}) {how} before accepting; "
                f"next try in {RETRY_AFTER:g} s"
            )
        seat = self.seats[wid]
        seat.retry_at = time.monotonic() + RETRY_AFTER
        chained = wid == self.chain_wait
        if chained:
            self.abort_chain("a replacement did not start")
        if current is None:  # the worker it was to replace has left already: respawn later
            seat.respawn_place = child.place
        elif not chained:
            seat.wanted = seat.wanted or "trying again to replace it"

    def lost_worker(self, child: Child, code: int, how: str) -> None:
        """A worker exited on its own (crash, harakiri, SIGKILL): respawn it in its place."""
        wid, pid, seat = child.wid, child.pid, self.seats[child.wid]
        seat.wanted = ""
        if not self.running():
            log(f"worker {wid} (pid {pid}) {how}")
            return
        if has(self.table, wid, Role.REPLACEMENT):
            # It left without waiting (reload-on-rss): its replacement takes over when it accepts.
            log(f"worker {wid} (pid {pid}) recycled: {how}; its replacement is starting")
            return
        if code == BOOT_ERROR and not self.accepted:
            log(f"worker {wid} (pid {pid}) failed to boot; stopping instead of respawning")
            self.boot_failed()
            return
        if code == BOOT_ERROR:
            # lazy-apps with broken code on disk: the other workers go on; no respawn storm.
            log(f"worker {wid} (pid {pid}) failed to boot (see above); next try in {RETRY_AFTER:g} s")
            seat.retry_at, seat.respawn_place = time.monotonic() + RETRY_AFTER, child.place
            if wid == self.chain_wait:
                self.abort_chain("a respawned worker did not start")
            return
        # SIGKILL comes from outside (an operator, a test, the OOM killer): respawned at once.
        quick = not child.accepting and time.monotonic() - child.born < QUICK_DEATH
        if quick and code != -signal.SIGKILL:
            log(f"worker {wid} (pid {pid}) died as it started: {how}; next try in {QUICK_DEATH:g} s")
            seat.retry_at, seat.respawn_place = time.monotonic() + QUICK_DEATH, child.place
            if wid == self.chain_wait:
                self.abort_chain("a respawned worker did not start")
            return
        log(f"worker {wid} (pid {pid}) died: {how}; respawning")
        self.spawn(wid, child.place)
        if wid == self.chain_wait:  # the respawn is a new process: this step of the chain is done
            self.chain_wait = None
            self.advance_chain()

    def grow(self, count: int) -> None:
        """Start up to ``count`` workers in cheap seats, lowest worker id first.

        A seat whose cheaped process is still finishing takes the new one in its other place.
        """
        for wid, seat in self.seats.items():
            if count <= 0:
                break
            if not seat.cheap:
                continue
            finishing = [c for c in self.table.values() if c.wid == wid]
            if any(c.role is not Role.CHEAPED for c in finishing):
                continue
            seat.cheap, count = False, count - 1
            place = 1 - finishing[0].place if finishing else self.board.current[wid]
            self.spawn(wid, place)

    def cheap(self, wid: int, line: str) -> None:
        """Retire worker ``wid``: SIGTERM, it finishes its requests; its seat stays cheap."""
        child = worker(self.table, wid)
        if child is None or has(self.table, wid, Role.REPLACEMENT) or wid == self.chain_wait:
            return  # it is being replaced: the algorithm looks again next time
        log(line)
        seat = self.seats[wid]
        seat.cheap, seat.wanted = True, ""
        child.role, child.kill_why = Role.CHEAPED, MERCY_PASSED
        child.kill_by = time.monotonic() + self.config.worker_reload_mercy
        kill_quietly(child.pid, signal.SIGTERM)

    def left(self, child: Child, how: str) -> None:
        """A replaced worker finished its requests and exited: its place is free for the next replacement."""
        log(f"worker {child.wid} (pid {child.pid}) recycled: {how}")
        if self.seats[child.wid].wanted:  # it was waiting for this place to free up
            self.replace(child.wid, self.seats[child.wid].wanted)

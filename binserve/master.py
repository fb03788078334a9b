"""The pre-fork master: one loop that waits on file descriptors and supervises the workers.

Signal handlers do nothing; ``signal.set_wakeup_fd`` turns each signal into a byte on a
pipe that the loop reads (gunicorn crashed for years from work done inside a SIGCHLD
handler). What each signal means is binserve/signals.py's MASTER table: HUP graceful
reload, TERM and INT graceful stop with a deadline, QUIT fast stop; the others are logged
or ignored. A reload first runs a probe of the new image (the same command line, loading the
config and the app, binding nothing); if it fails the reload is refused and the workers
serve on. Otherwise the master re-executes with the listening sockets inherited, so the
new code is loaded fresh while the old workers finish their requests; connections that
arrive meanwhile wait in the listen backlog.

Workers write short notices on one pipe: "accepting" when they start serving, "recycling"
when they want to be replaced (max-requests, reload-on-rss, a SIGHUP sent to the worker).
The master replaces a worker (for those, and for max-worker-lifetime and chain reloads) by
spawning the replacement beside it, in the worker's other scoreboard place; the old one goes
on serving and gets SIGTERM only once the new one accepts. A replacement that fails to boot
(lazy-apps with broken code) leaves the old worker serving.
"""

from __future__ import annotations

import os
import selectors
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import psutil

from . import signals
from .config import Config
from .log import log, printable
from .scoreboard import Scoreboard
from .signals import kill_quietly
from .sockets import Listener, hand_over, remove_files
from .stats import STATS_INHERIT_ENV, CpuMeter, Recent, StatsServer, instance_document
from .vassal_link import (
    CMD_GRACEFUL_STOP,
    CMD_RELOAD,
    CMD_STOP,
    EMPEROR_FD_ENV,
    MSG_ACCEPTING,
    MSG_SPAWNED,
    emperor_fd_from_env,
)
from .worker import BOOT_ERROR, MB, NOTE_ACCEPTING, NOTE_RECYCLING, NOTICE, run_worker

RETIRING_ENV = "_BINSERVE_RETIRING"
PROBE_ENV = "_BINSERVE_PROBE"  # the command line loads the config and the app, then exits
RUNNING, STOPPING, RELOADING = "running", "stopping", "reloading"
RETRY_AFTER = 10.0  # seconds before trying again to start a worker whose boot failed


def describe_exit(status: int) -> str:
    """``exited with code N`` or ``killed by signal N (SIGNAME)`` for a waitpid status."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = "unknown"
    return f"killed by signal {-code} ({name})"


class Master:
    """Supervises ``processes`` workers sharing ``listeners``; answers stats on ``stats`` if given."""

    def __init__(
        self,
        config: Config,
        app: Callable[..., Any] | None,
        listeners: list[Listener],
        start_cwd: str,
        stats: Listener | None = None,
    ) -> None:
        self.config = config
        self.app = app
        self.listeners = listeners
        self.state = RUNNING
        self.exit_code = 0
        self.workers: dict[int, int] = {}  # wid -> pid
        self.by_pid: dict[int, int] = {}  # pid -> wid
        self.born: dict[int, float] = {}  # pid -> when it was spawned (monotonic)
        self.place: dict[int, int] = {}  # pid -> its place in the scoreboard
        # A worker is replaced in three steps: its replacement is *incoming* until it accepts,
        # then it is the worker and the old process is *leaving* (SIGTERM: it finishes its requests).
        self.incoming: dict[int, int] = {}  # pid -> wid
        self.leaving: dict[int, int] = {}  # pid -> wid
        # Incoming and leaving pids -> (SIGKILL past this, what it failed to do): worker-reload-mercy.
        self.kill_by: dict[int, tuple[float, str]] = {}
        self.wanted: dict[int, str] = {}  # wid -> why: a replacement to start as soon as it can
        self.retry_at: dict[int, float] = {}  # wid -> no replacement before (after one failed to boot)
        self.missing: dict[int, tuple[float, int]] = {}  # wid -> (respawn at, place): its boot failed
        self.accepted = False  # a worker has accepted: boot failures from then on are not fatal
        self.chain: list[int] = []  # wids still to replace in a chain reload
        self.chain_wait: int | None = None  # the wid being replaced in the chain reload
        self.measured: dict[int, psutil.Process] = {}  # evil-reload-on-rss: pid -> its process
        self.next_periodic = 0.0  # chain-reload files, lifetimes and memory: checked every second
        self.retiring: set[int] = set()  # workers of the previous image, finishing their requests
        self.retiring_pipe: int | None = None
        self.pending = b""  # signal numbers read from the wakeup pipe, not yet handled
        self.emperor_fd = emperor_fd_from_env()
        self.board = Scoreboard(config.processes, config.threads)
        self.stats = (
            StatsServer(stats, config.stats_format, config.stats_http, config.uwsgi_allow_from)
            if stats
            else None
        )
        self.cpu = CpuMeter()
        self.harakiri_kills: dict[int, float] = {}  # pid -> when to SIGKILL it
        self.touched = {path: _mtime(path) for path in config.touch_reload}
        self.chain_touched = {path: _mtime(path) for path in config.touch_chain_reload}
        self.recent = Recent()
        self.started = time.time()
        self.retire_deadline = 0.0
        self.deadline = 0.0
        self.selector = selectors.DefaultSelector()
        self.wake: signals.WakePipe | None = None
        self.life_r = self.life_w = -1
        self.notify_r = self.notify_w = -1
        self.start_cwd = start_cwd  # where binserve started: the reload re-executes from there
        self.probe: Probe | None = None  # the new image's check, while a reload waits for it
        self.probe_again = False  # a reload was asked for while the probe ran

    # -- setup -----------------------------------------------------------------------------
    def start(self) -> None:
        """Install the wakeup pipe and signal handlers, spawn the workers, retire the old ones.

        The handled signals stay blocked until the handlers are in place; those that arrived
        since the first line (after a reload: since the previous image blocked them before
        ``execv``) wait in the start's pipe, and ``signals.install`` passes them on.
        """
        signals.block(signals.MASTER)
        self.wake = signals.WakePipe(signals.MASTER)
        self.selector.register(self.wake, selectors.EVENT_READ, self.wake)
        if self.emperor_fd is not None:
            self.selector.register(self.emperor_fd, selectors.EVENT_READ)
        if self.stats is not None:
            self.selector.register(self.stats.fileno(), selectors.EVENT_READ)
        # Workers watch the read end: when the master dies, the write end closes and they leave.
        self.life_r, self.life_w = os.pipe2(os.O_CLOEXEC)
        # Workers tell the master when they accept and when they are recycling, on one pipe.
        self.notify_r, self.notify_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.notify_r, False)
        self.selector.register(self.notify_r, selectors.EVENT_READ)
        if self.config.harakiri and self.config.threads > 1:
            log(
                f"harakiri {self.config.harakiri} s with threads {self.config.threads}: harakiri kills the "
                "whole worker, and with it the requests of its other threads; set "
                "harakiri-graceful-timeout to let them finish first, or use processes instead of threads"
            )
        if self.chain_touched and not self.config.lazy_apps:
            log(
                "touch-chain-reload without lazy-apps: the new workers are forked from the master and run "
                "the code it loaded; set lazy-apps = true for a chain reload to load new code"
            )
        reloaded = self._adopt_previous_image()
        for wid in range(1, self.config.processes + 1):
            self.spawn(wid)
        if self.retiring_pipe is not None:
            os.close(self.retiring_pipe)  # the old workers' life pipe: they finish their request and exit
            self.retiring_pipe = None
        for pid in self.retiring:
            kill_quietly(pid, signal.SIGTERM)
        signals.unblock(signals.MASTER)
        names = ", ".join(lst.name for lst in self.listeners)
        log(f"master ready: {self.config.processes} workers on {names}")
        # As a uWSGI master does: "spawned" on the first boot only, "accepting" every time.
        self._tell_emperor(b"" if reloaded else bytes((MSG_SPAWNED,)))
        self._tell_emperor(bytes((MSG_ACCEPTING,)))

    def _adopt_previous_image(self) -> bool:
        previous = _previous_image()
        if previous:
            self.retiring_pipe, self.retiring = previous
            self.retire_deadline = time.monotonic() + self.config.worker_reload_mercy
        return previous is not None

    def _tell_emperor(self, message: bytes) -> None:
        if self.emperor_fd is not None and message:
            try:
                os.write(self.emperor_fd, message)
            except OSError as exc:
                log(f"cannot write to the emperor: {exc.strerror}")

    def on_emperor(self) -> None:
        """A command from the emperor: stop now, reload, or stop gracefully; EOF: it is gone."""
        assert self.emperor_fd is not None
        try:
            data = os.read(self.emperor_fd, 64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            log("lost connection with the emperor: stopping")
            self.selector.unregister(self.emperor_fd)
            os.close(self.emperor_fd)
            self.emperor_fd = None
            self.graceful_stop("emperor gone")
            return
        for command in data:
            log(f"received message {command} from the emperor")
            byte = bytes((command,))
            if byte == CMD_STOP:
                self.handle_quit()
            elif byte == CMD_RELOAD:
                self.reload("the emperor")
            elif byte == CMD_GRACEFUL_STOP:
                self.graceful_stop("emperor")

    def spawn(self, wid: int, place: int = 0, replacing: bool = False) -> None:
        """Fork a process for worker ``wid`` into ``place``; a replacement stays incoming until it accepts."""
        when = time.time()  # before the fork: the child may start a request before the parent runs on
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = signals.fork_worker(signals.MASTER)  # the worker unblocks once its handlers are in place
        except OSError as exc:  # the user's process limit, a cgroup's pids.max: try again later
            self.cannot_fork(wid, place, replacing, exc)
            return
        if pid == 0:
            code = 1
            try:
                assert self.wake is not None
                self.wake.close()
                os.close(self.life_w)
                os.close(self.notify_r)
                if self.retiring_pipe is not None:
                    os.close(self.retiring_pipe)
                self.selector.close()
                if self.stats is not None:
                    self.stats.sock.close()
                # Counters are kept only when someone reads them (stats, harakiri): the request
                # path stays lean otherwise.
                keep = self.stats is not None or self.config.harakiri
                code = run_worker(
                    wid,
                    self.app,
                    self.listeners,
                    self.config,
                    self.life_r,
                    self.notify_w,
                    self.emperor_fd,
                    self.board if keep else None,
                    place,
                )
            except BaseException:  # a forked child must never return into the master's code
                traceback.print_exc()
            finally:
                os._exit(code)
        self.board.spawned(wid, pid, place, when)
        self.place[pid] = place
        self.born[pid] = time.monotonic()
        if replacing:
            self.incoming[pid] = wid
            self.kill_by[pid] = (
                time.monotonic() + self.config.worker_reload_mercy,
                "did not accept within worker-reload-mercy",
            )
            log(f"spawned worker {wid} (pid {pid}) to replace pid {self.workers[wid]}")
        else:
            self.board.promote(wid, place)
            self.workers[wid] = pid
            self.by_pid[pid] = wid
            log(f"spawned worker {wid} (pid {pid})")

    def cannot_fork(self, wid: int, place: int, replacing: bool, exc: OSError) -> None:
        """A worker could not be forked: the one it was to replace serves on, or it is respawned later."""
        log(f"cannot fork worker {wid}: {exc.strerror}; next try in {RETRY_AFTER:g} s")
        if replacing:
            self.retry_at[wid] = time.monotonic() + RETRY_AFTER
            self.wanted.setdefault(wid, "trying again to replace it")
        else:
            self.missing[wid] = (time.monotonic() + RETRY_AFTER, place)

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> int:
        """Run until stopped; returns the exit code."""
        self.start()
        while self.state != "done":
            self.step()
        return self.exit_code

    def step(self) -> None:
        """Wait for a signal or the next deadline, then act on it."""
        timeout = 1.0
        now = time.monotonic()
        if self.state == STOPPING:
            timeout = max(0.0, min(timeout, self.deadline - now))
        elif self.config.harakiri:
            timeout = min(timeout, self.next_harakiri())
        for key, _ in self.selector.select(timeout):
            if isinstance(key.data, signals.WakePipe):
                self.pending += key.data.read()
            elif key.fd == self.notify_r:
                self.on_notices()
            elif self.stats is not None and key.fd == self.stats.fileno():
                self.stats.answer(self.document)
            else:
                self.on_emperor()
        while self.pending:
            signum, self.pending = self.pending[0], self.pending[1:]
            if signals.has_effect(signals.MASTER, signum):
                getattr(self, f"handle_{signals.name(signum)[3:].lower()}")()
            else:
                log(signals.received(signals.MASTER, signum))
        self.reap()
        if self.state == RELOADING:
            self.reexec()
        self.check_deadlines()

    def document(self) -> dict[str, Any]:
        """The stats document of this master and its workers."""
        return instance_document(
            self.board, self.listeners, self.started, self.cpu, self.recent, self.state == RUNNING
        )

    def on_notices(self) -> None:
        """Workers' messages: one accepts now, or one is recycling and wants its replacement."""
        try:
            data = os.read(self.notify_r, NOTICE.size * 64)
        except BlockingIOError:
            return
        for kind, pid in NOTICE.iter_unpack(data[: len(data) // NOTICE.size * NOTICE.size]):
            if kind == NOTE_ACCEPTING:
                self.on_accepting(pid)
            elif kind == NOTE_RECYCLING:
                self.on_recycling(pid)

    def on_recycling(self, pid: int) -> None:
        """A worker asks to be recycled (it goes on serving until its replacement accepts)."""
        wid = self.by_pid.get(pid)
        if wid is not None and self.state == RUNNING:
            self.replace(wid, "asked by the worker")

    def replace(self, wid: int, why: str) -> None:
        """Start a replacement for worker ``wid`` in its other place, now or as soon as it can be.

        Not while one is incoming, nor while the process that last left that place is still
        finishing (its counters are there), nor during the pause after a failed boot.
        """
        self.wanted[wid] = why
        if self.state != RUNNING or wid not in self.workers or wid in self.incoming.values():
            return
        if wid in self.leaving.values() or time.monotonic() < self.retry_at.get(wid, 0.0):
            return
        del self.wanted[wid]
        old = self.workers[wid]
        log(f"worker {wid} (pid {old}): {why}; spawning its replacement")
        self.spawn(wid, 1 - self.place[old], replacing=True)

    def on_accepting(self, pid: int) -> None:
        """A replacement accepts: it becomes the worker, and the old process may leave."""
        self.accepted = True
        self.kill_by.pop(pid, None)
        wid = self.incoming.pop(pid, None)
        if wid is None:
            return
        old = self.workers.get(wid)
        self.wanted.pop(wid, None)  # asked for while this one was starting: it is the new process
        self.board.promote(wid, self.place[pid])
        self.workers[wid] = pid
        self.by_pid[pid] = wid
        if old is not None:
            del self.by_pid[old]
            self.leaving[old] = wid
            self.kill_by[old] = (
                time.monotonic() + self.config.worker_reload_mercy,
                "still running past worker-reload-mercy",
            )
            log(f"worker {wid} (pid {pid}) accepts: retiring pid {old}")
            kill_quietly(old, signal.SIGTERM)
        if wid == self.chain_wait:
            self.chain_wait = None
            self.advance_chain()

    def advance_chain(self) -> None:
        """Chain reload: replace the next worker, once the previous replacement accepts."""
        while self.chain and self.chain_wait is None and self.state == RUNNING:
            wid = self.chain.pop(0)
            if wid in self.workers:
                self.chain_wait = wid
                self.replace(wid, "chain reload")
        if not self.chain and self.chain_wait is None:
            log("chain reload: every worker replaced")

    def abort_chain(self, why: str) -> None:
        """Stop a chain reload: the workers not yet replaced keep running."""
        if self.chain or self.chain_wait is not None:
            log(f"chain reload stopped: {why}; {len(self.chain) + 1} worker(s) keep their old process")
        self.chain = []
        self.chain_wait = None

    def handle_chld(self) -> None:
        """Children changed state: reaped in ``reap`` after every step."""

    def handle_hup(self) -> None:
        """Graceful reload: once a probe of the new image loads, re-execute with the sockets inherited."""
        self.reload("SIGHUP")

    def reload(self, why: str) -> None:
        """Start the probe of the new image; the workers serve on meanwhile (SIGHUP, touch, emperor)."""
        if self.state != RUNNING:
            log(f"{why}: no reload, the master is {self.state}")
            return
        if self.probe is not None:
            # The running probe may have read the old files: a failure is checked again.
            log(f"{why}: a reload is already being checked; it is checked again if that fails")
            self.probe_again = True
            return
        try:
            self.probe = Probe(self.start_cwd, self.config.worker_reload_mercy, self.emperor_fd)
        except OSError as exc:  # fork failed: the user's process limit, a cgroup's pids.max
            self.refuse_reload(f"{why}: reload refused: cannot start the probe ({exc.strerror})")
            return
        log(f"{why}: graceful reload, checking that the new image loads (probe pid {self.probe.pid})")

    def on_probe_exit(self, how: str, code: int) -> None:
        """The probe is done: re-execute, or refuse the reload and serve on with the same workers."""
        assert self.probe is not None
        killed, self.probe = self.probe.killed, None
        if self.state != RUNNING:
            return
        if code == 0 and not killed:
            log("the new image loads: re-executing")
            self.state = RELOADING  # once every exited child is reaped
            return
        again, self.probe_again = self.probe_again, False
        if again:
            self.reload("a reload asked for meanwhile")
            return
        mercy = self.config.worker_reload_mercy
        reason = f"it did not load within worker-reload-mercy ({mercy:g} s)" if killed else f"probe {how}"
        self.refuse_reload(f"reload refused: the new image cannot start ({reason}, see above)")

    def refuse_reload(self, why: str) -> None:
        """Serve on with the same workers; a vassal tells its emperor the reload is over."""
        log(f"{why}; the workers serve on")
        self._tell_emperor(bytes((MSG_ACCEPTING,)))

    def handle_term(self) -> None:
        """Graceful stop: workers finish their request and the queued ones, then exit."""
        self.graceful_stop("SIGTERM")

    def handle_int(self) -> None:
        """Graceful stop, as SIGTERM (Ctrl-C)."""
        self.graceful_stop("SIGINT")

    def handle_quit(self) -> None:
        """Fast stop: kill the workers now."""
        log("SIGQUIT: fast stop, killing workers")
        self.cancel_probe()
        for pid in self.children():
            kill_quietly(pid, signal.SIGKILL)
        self.state = STOPPING
        self.deadline = time.monotonic() + 5

    def graceful_stop(self, why: str) -> None:
        """Ask every worker to stop after its request; SIGKILL past worker-reload-mercy."""
        if self.state == STOPPING:
            return
        mercy = self.config.worker_reload_mercy
        log(f"{why}: graceful stop, workers have {mercy:g} s to finish")
        self.cancel_probe()
        self.state = STOPPING
        self.deadline = time.monotonic() + mercy
        for pid in self.children():
            kill_quietly(pid, signal.SIGTERM)

    def cancel_probe(self) -> None:
        """A stop while a reload is being checked: the probe is of no use any more."""
        if self.probe is not None:
            kill_quietly(self.probe.pid, signal.SIGKILL)
            os.waitpid(self.probe.pid, 0)  # at once: nothing of this master may outlive its stop
            self.probe = None

    def serving(self) -> list[tuple[int, int]]:
        """(pid, wid) of every process of this image that may be in a request."""
        return [*self.by_pid.items(), *self.incoming.items(), *self.leaving.items()]

    def children(self) -> list[int]:
        """Every worker process: current, incoming, leaving and those of the previous image."""
        return [*self.by_pid, *self.incoming, *self.leaving, *self.retiring]

    def reap(self) -> None:
        """Collect every exited child; respawn workers that died while running."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            how = describe_exit(status)
            code = os.waitstatus_to_exitcode(status)
            if self.probe is not None and pid == self.probe.pid:
                self.on_probe_exit(how, code)
                continue
            self.born.pop(pid, None)
            self.kill_by.pop(pid, None)
            self.measured.pop(pid, None)
            self.harakiri_kills.pop(pid, None)
            place = self.place.pop(pid, 0)
            if pid in self.leaving:
                wid = self.leaving.pop(pid)
                log(f"worker {wid} (pid {pid}) recycled: {how}")
                if wid in self.wanted:
                    self.replace(wid, self.wanted[wid])  # it was waiting for this place to free up
            elif pid in self.retiring:
                self.retiring.discard(pid)
                log(f"old worker (pid {pid}) {how}")
            elif pid in self.incoming:
                self.lost_replacement(self.incoming.pop(pid), pid, place, code, how)
            elif pid in self.by_pid:
                self.lost_worker(self.by_pid.pop(pid), pid, place, code, how)
            else:
                log(f"reaped unknown child (pid {pid}) {how}")
        if self.state == STOPPING and not self.children():
            self.finish()

    def lost_replacement(self, wid: int, pid: int, place: int, code: int, how: str) -> None:
        """A replacement exited before it accepted: the worker it was to replace goes on serving."""
        if self.state != RUNNING:
            log(f"worker {wid}'s replacement (pid {pid}) {how}")
            return
        if code == BOOT_ERROR:
            log(
                f"worker {wid}'s replacement (pid {pid}) failed to boot (see above); pid "
                f"{self.workers.get(wid, '-')} goes on serving; next try in {RETRY_AFTER:g} s"
            )
        else:
            log(
                f"worker {wid}'s replacement (pid {pid}) {how} before accepting; "
                f"next try in {RETRY_AFTER:g} s"
            )
        self.retry_at[wid] = time.monotonic() + RETRY_AFTER
        chained = wid == self.chain_wait
        if chained:
            self.abort_chain("a replacement did not start")
        if wid not in self.workers:  # the worker it was to replace has left already: respawn later
            self.missing[wid] = (self.retry_at[wid], place)
        elif not chained:
            self.wanted.setdefault(wid, "trying again to replace it")

    def lost_worker(self, wid: int, pid: int, place: int, code: int, how: str) -> None:
        """A worker exited on its own (crash, harakiri, SIGKILL): respawn it in its place."""
        del self.workers[wid]
        self.wanted.pop(wid, None)
        if self.state != RUNNING:
            log(f"worker {wid} (pid {pid}) {how}")
            return
        if wid in self.incoming.values():
            # It left without waiting (reload-on-rss): its replacement takes over when it accepts.
            log(f"worker {wid} (pid {pid}) recycled: {how}; its replacement is starting")
            return
        if code == BOOT_ERROR and not self.accepted:
            log(f"worker {wid} (pid {pid}) failed to boot; stopping instead of respawning")
            self.exit_code = BOOT_ERROR
            self.graceful_stop("boot failure")
            return
        if code == BOOT_ERROR:
            # lazy-apps with broken code on disk: the other workers go on; no respawn storm.
            log(f"worker {wid} (pid {pid}) failed to boot (see above); next try in {RETRY_AFTER:g} s")
            self.missing[wid] = (time.monotonic() + RETRY_AFTER, place)
            if wid == self.chain_wait:
                self.abort_chain("a respawned worker did not start")
            return
        log(f"worker {wid} (pid {pid}) died: {how}; respawning")
        self.spawn(wid, place)
        if wid == self.chain_wait:  # the respawn is a new process: this step of the chain is done
            self.chain_wait = None
            self.advance_chain()

    def check_harakiri(self) -> None:
        """Kill the workers whose request has run longer than harakiri seconds.

        The log names the worker, its pid and the request, so the slow endpoint can be found.
        With harakiri-graceful-timeout, SIGTERM first (the worker leaves after the request, if
        it ends in time), then SIGKILL.
        """
        limit = self.config.harakiri
        now = time.time()
        for pid, wid in self.serving():
            slot = self.board.read_place(wid, self.place[pid])
            if pid in self.harakiri_kills:
                if now >= self.harakiri_kills[pid]:
                    kill_quietly(pid, signal.SIGKILL)
                    self.harakiri_kills[pid] = now + 5
                continue
            # A request that began before this pid was spawned is its dead predecessor's.
            if not slot.busy or slot.pid != pid or slot.since < slot.last_spawn or now - slot.since <= limit:
                continue
            since = time.strftime("%H:%M:%S", time.localtime(slot.since))
            log(
                f"HARAKIRI worker {wid} (pid {pid}): {printable(slot.current)} running since {since} "
                f"({now - slot.since:.1f} s > harakiri {limit} s)"
            )
            self.board.harakiri(wid, self.place[pid])
            grace = self.config.harakiri_graceful_timeout
            kill_quietly(pid, signal.SIGTERM if grace else signal.SIGKILL)
            self.harakiri_kills[pid] = now + grace

    def next_harakiri(self) -> float:
        """Seconds until the oldest running request reaches harakiri (at most 1), so kills are on time."""
        now = time.time()
        soonest = 1.0
        for pid, wid in self.serving():
            if pid in self.harakiri_kills:  # already killed: next comes its SIGKILL deadline
                soonest = min(soonest, self.harakiri_kills[pid] - now)
                continue
            slot = self.board.read_place(wid, self.place[pid])
            if slot.busy and slot.pid == pid and slot.since >= slot.last_spawn:
                soonest = min(soonest, slot.since + self.config.harakiri - now + 0.01)
        return max(0.01, soonest)

    def check_touched(self) -> None:
        """touch-reload: a watched file whose mtime changed triggers a graceful reload."""
        for path, seen in self.touched.items():
            mtime = _mtime(path)
            if mtime != seen:
                self.touched[path] = mtime  # a refused reload is tried again on the next touch
                self.reload(f"{path} was touched")
                return

    def check_chain_touched(self) -> None:
        """touch-chain-reload: a watched file whose mtime changed starts a chain reload."""
        for path, seen in self.chain_touched.items():
            now = _mtime(path)
            if now == seen:
                continue
            self.chain_touched[path] = now
            if now is None:
                continue  # removed: nothing to reload
            if self.chain or self.chain_wait is not None:
                log(f"{path} was touched: a chain reload is already running, it goes on")
                return
            log(f"{path} was touched: chain reload, one worker at a time")
            self.chain = sorted(self.workers)
            self.advance_chain()
            return

    def check_lifetimes(self) -> None:
        """max-worker-lifetime: replace a worker that has run that long, one at a time.

        Workers started together reach the limit together; replacing them one by one keeps
        all but one accepting meanwhile.
        """
        if self.incoming or self.wanted:
            return
        limit = self.config.max_worker_lifetime
        now = time.monotonic()
        ages = {wid: now - self.born.get(pid, now) for wid, pid in self.workers.items()}
        oldest = max(ages, key=ages.__getitem__, default=None)
        if oldest is not None and ages[oldest] > limit:
            age = ages[oldest]
            self.replace(oldest, f"lifetime reached after {age:.0f} s (max-worker-lifetime {limit:g} s)")

    def check_retries(self) -> None:
        """Respawn workers whose boot failed, and start the replacements that had to wait."""
        now = time.monotonic()
        for wid, (at, place) in list(self.missing.items()):
            if now >= at:
                del self.missing[wid]
                self.spawn(wid, place)
        for wid, why in list(self.wanted.items()):
            self.replace(wid, why)

    def check_memory(self) -> None:
        """evil-reload-on-rss: SIGKILL a worker over the limit, even mid-request."""
        limit = self.config.evil_reload_on_rss * MB
        for wid, pid in list(self.workers.items()):
            try:
                proc = self.measured.get(pid) or self.measured.setdefault(pid, psutil.Process(pid))
                rss = proc.memory_info().rss
            except psutil.Error:
                continue  # exited meanwhile: reaped in the next step
            if rss > limit:
                log(
                    f"EVIL RELOAD worker {wid} (pid {pid}): rss {rss / MB:.1f} MB > evil-reload-on-rss "
                    f"{self.config.evil_reload_on_rss} MB: SIGKILL"
                )
                kill_quietly(pid, signal.SIGKILL)

    def check_deadlines(self) -> None:
        """Escalate to SIGKILL for workers past their mercy; enforce harakiri and touch-reload."""
        if self.config.harakiri and self.state == RUNNING:
            self.check_harakiri()
        if self.touched and self.state == RUNNING:
            self.check_touched()
        now = time.monotonic()
        if self.state == RUNNING and now >= self.next_periodic:
            self.next_periodic = now + 1.0
            if self.chain_touched:
                self.check_chain_touched()
            if self.config.max_worker_lifetime:
                self.check_lifetimes()
            if self.config.evil_reload_on_rss:
                self.check_memory()
            if self.missing or self.wanted:
                self.check_retries()
        if self.state == STOPPING and now >= self.deadline:
            for pid in self.children():
                log(f"worker (pid {pid}) still running past the deadline: SIGKILL")
                kill_quietly(pid, signal.SIGKILL)
            self.deadline = now + 5
        for pid, (by, what) in list(self.kill_by.items()):
            if now >= by:
                role = "replacement" if pid in self.incoming else "replaced worker"
                log(f"{role} (pid {pid}) {what}: SIGKILL")
                kill_quietly(pid, signal.SIGKILL)
                self.kill_by[pid] = (now + 5, what)
        if self.probe is not None and now >= self.probe.deadline and not self.probe.killed:
            log(f"reload probe (pid {self.probe.pid}) still running past worker-reload-mercy: SIGKILL")
            self.probe.killed = True
            kill_quietly(self.probe.pid, signal.SIGKILL)
        if self.retiring and now >= self.retire_deadline:
            for pid in self.retiring:
                log(f"old worker (pid {pid}) still running past worker-reload-mercy: SIGKILL")
                kill_quietly(pid, signal.SIGKILL)
            self.retire_deadline = now + 5

    def finish(self) -> None:
        """Everything has exited: remove the socket files and the pidfile."""
        remove_files(self.listeners, self.config.pidfile, self.config.vacuum)
        if self.stats is not None:
            self.stats.close()
        log("master stopped")
        self.state = "done"

    def reexec(self) -> None:
        """Replace this process with a fresh binserve that inherits the sockets and the workers."""
        signals.block(signals.MASTER)
        # Signals already turned into bytes would die with the pipe on exec: make them pending
        # again (blocked, so they wait for the new image's handlers).
        assert self.wake is not None
        self.pending += self.wake.read()
        for signum in set(self.pending) - {signal.SIGCHLD}:
            signal.raise_signal(signum)
        hand_over(self.listeners)
        hand_over([self.stats.listener] if self.stats else [], STATS_INHERIT_ENV)
        os.set_inheritable(self.life_w, True)
        # Workers of an earlier image still finishing are handed on too, so the next image
        # keeps their deadline and reaps them.
        pids = ",".join(map(str, self.children()))
        os.environ[RETIRING_ENV] = f"{self.life_w}:{pids}"
        os.chdir(self.start_cwd)
        sys.stdout.flush()
        sys.stderr.flush()
        signal.set_wakeup_fd(-1)
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


class Probe:
    """The new image, run up to loading its config and app, binding and writing nothing.

    The same command line as the re-execution, from the same directory, as the same user:
    what it cannot read or import, the new image could not either. Its stderr is the
    master's log, where it says why it failed.
    """

    def __init__(self, cwd: str, mercy: float, emperor_fd: int | None) -> None:
        self.deadline = time.monotonic() + mercy
        self.killed = False
        argv = [sys.executable, *sys.orig_argv[1:]]
        # Not the emperor's channel: what the probe's app does at import must not reach it.
        env = {key: value for key, value in os.environ.items() if key != EMPEROR_FD_ENV}
        env[PROBE_ENV] = "1"
        sys.stdout.flush()
        sys.stderr.flush()
        master = os.getpid()
        self.pid = os.fork()  # the child gets the default signal dispositions back (signals.py)
        if self.pid == 0:
            try:
                # A dead master no longer kills a probe past its mercy: the kernel does then.
                signals.die_with_parent(signal.SIGKILL)
                if os.getppid() != master:
                    os._exit(127)  # the master died before the line above
                if emperor_fd is not None:
                    os.close(emperor_fd)
                os.chdir(cwd)
                os.execve(argv[0], argv, env)
            except OSError as exc:
                log(f"reload probe: cannot run {argv[0]}: {exc.strerror}")
            os._exit(127)


def abandon_reload(mercy: float) -> None:
    """After a reload whose new image cannot load the app: stop the old workers gracefully.

    They finish the requests they hold (up to ``mercy`` seconds); the caller then exits, and
    the sockets and pidfile are removed as on any stop.
    """
    previous = _previous_image()
    if not previous:
        return
    pipe, retiring = previous
    os.close(pipe)
    for pid in retiring:
        kill_quietly(pid, signal.SIGTERM)
    deadline = time.monotonic() + mercy
    while retiring and time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid:
            retiring.discard(pid)
        else:
            time.sleep(0.05)
    for pid in retiring:
        kill_quietly(pid, signal.SIGKILL)


def _previous_image() -> tuple[int, set[int]] | None:
    """The life pipe and worker pids a reloading image handed over, if this is a reload."""
    spec = os.environ.pop(RETIRING_ENV, "")
    if not spec:
        return None
    fd, _, pids = spec.partition(":")
    return int(fd), {int(p) for p in pids.split(",") if p}


def _mtime(path: str) -> float | None:
    """A file's mtime, or None while it does not exist."""
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None

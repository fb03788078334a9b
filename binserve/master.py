"""The pre-fork master: one loop that waits, plans and acts, supervising the workers.

Wait: on file descriptors, until a signal, a worker's notice, the emperor, a stats client or
the next deadline. Signal handlers only record the signal, and ``signal.set_wakeup_fd`` writes
a byte on a pipe that wakes the loop (gunicorn crashed for years from work done inside a
SIGCHLD handler). What each signal means is binserve/signals.py's MASTER table: HUP graceful
reload (binserve/reload.py), TERM and INT graceful stop with a deadline, QUIT fast stop, TTIN
and TTOU one worker more or fewer; the others are logged or ignored. The emperor's commands are
the bytes binserve/vassal_link.py names. Plan: the policies of binserve/supervision.py read the
table of children and the time, and return actions. Act: this module carries them out.

The table holds one record per child process, and binserve/children.py keeps it true as
workers are spawned, replaced and reaped. Workers write short notices on one pipe:
"accepting" when they start serving, "recycling" when they want to be replaced
(max-requests, reload-on-rss, a SIGHUP sent to the worker). The master replaces a worker
(for those, and for max-worker-lifetime and chain reloads) by spawning the replacement
beside it; the old one goes on serving and gets SIGTERM only once the new one accepts.

With ``cheaper`` (adaptive workers), some worker ids have no process by choice: their seats
are cheap. The cheaper algorithm (binserve/supervision.py) reads the scoreboard the workers
already write, and the master starts workers in cheap seats or retires idle ones (SIGTERM:
they finish their requests); SIGTTIN and SIGTTOU do the same by hand.
"""

from __future__ import annotations

import os
import selectors
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import psutil

from . import log as logs
from . import signals, supervision
from .children import MERCY_PASSED, Children
from .config import Config
from .core import Core
from .log import log
from .notify import Notifier
from .reload import PROBE_LOADED, previous_image, reexec, start_probe
from .scoreboard import Scoreboard, WorkerStats
from .signals import kill_quietly
from .sockets import Listener, remove_files
from .stacks import WAIT, StackFile, kernel_lines, report
from .stats import CpuMeter, Recent, StatsServer, instance_document
from .supervision import SERVING, Child, Phase, Role, having
from .vassal_link import (
    CMD_GRACEFUL_STOP,
    CMD_RELOAD,
    CMD_STOP,
    MSG_ACCEPTING,
    MSG_SPAWNED,
    emperor_fd_from_env,
)
from .worker import BOOT_ERROR, NOTE_ACCEPTING, NOTE_RECYCLING, NOTE_STACKS, NOTICE, run_worker

# Where a worker's stack enters the app: a harakiri shows the stuck request's stack from there.
APP_CALL = (Core._serve.__code__.co_filename, Core._serve.__name__)


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
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.app = app
        self.listeners = listeners
        self.phase = Phase.RUNNING
        self.exit_code = 0
        self.next_periodic = 0.0  # chain-reload files, lifetimes and memory: checked every second
        self.retiring_pipe: int | None = None  # the previous image's life pipe, until its workers are told
        # Signals taken from the wakeup pipe and not handled yet, each with how many times.
        self.pending: dict[int, int] = {}
        self.emperor_fd = emperor_fd_from_env()
        # A vassal's emperor is the service systemd watches: the vassal tells only the emperor.
        self.notifier = notifier if notifier is not None and self.emperor_fd is None else Notifier(None)
        self.notified_ready = False  # READY=1 sent to systemd for this image (once its first worker accepts)
        self.board = Scoreboard(config.processes, config.threads)
        self.children = Children(config, self.board, self.running, self._serve_as_worker, self.boot_failed)
        self.stats = (
            StatsServer(stats, config.stats_format, config.stats_http, config.uwsgi_allow_from)
            if stats
            else None
        )
        self.cpu = CpuMeter()
        self.touched = {path: _mtime(path) for path in config.touch_reload}
        self.chain_touched = {path: _mtime(path) for path in config.touch_chain_reload}
        self.log_touched = {path: _mtime(path) for path in config.touch_logreopen}
        self.rotate_failed: set[str] = set()  # log-maxsize: the files whose rename failed (said once)
        self.recent = Recent()
        self.started = time.time()
        self.stop_deadline = 0.0
        self.selector = selectors.DefaultSelector()
        self.wake: signals.WakePipe | None = None
        self.life_r = self.life_w = -1
        self.notify_r = self.notify_w = -1
        self.start_cwd = start_cwd  # where binserve started: the reload re-executes from there
        self.probe_again = False  # a reload was asked for while the probe ran
        self.cheaper = (
            supervision.Cheaper(
                config.cheaper,
                config.processes,
                config.cheaper_step,
                config.cheaper_overload,
                config.cheaper_idle,
                config.cheaper_algo,
                config.cheaper_busyness_max,
                config.cheaper_busyness_min,
                config.cheaper_busyness_multiplier,
                config.cheaper_busyness_penalty,
            )
            if config.cheaper
            else None
        )
        self.load = supervision.Load()  # what the cheaper algorithm remembers between two looks

    # -- setup -----------------------------------------------------------------------------
    def start(self) -> None:
        """Install the wakeup pipe and signal handlers, spawn the workers, retire the old ones.

        The handled signals stay blocked until the handlers are in place; those that arrived
        since the first line (after a reload: since the previous image blocked them before
        ``execv``) wait in the start's pipe, and ``signals.install`` passes them on.
        """
        signals.block(signals.MASTER)
        self.wake = signals.WakePipe(signals.MASTER)
        self.selector.register(self.wake, selectors.EVENT_READ, self.on_wake)
        if self.emperor_fd is not None:
            self.selector.register(self.emperor_fd, selectors.EVENT_READ, self.on_emperor)
        if self.stats is not None:
            self.selector.register(self.stats.fileno(), selectors.EVENT_READ, self.on_stats)
        # Workers watch the read end: when the master dies, the write end closes and they leave.
        self.life_r, self.life_w = os.pipe2(os.O_CLOEXEC)
        # Workers tell the master when they accept and when they are recycling, on one pipe.
        self.notify_r, self.notify_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.notify_r, False)
        self.selector.register(self.notify_r, selectors.EVENT_READ, self.on_notices)
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
        for wid, seat in self.children.seats.items():
            if not seat.cheap:
                self.children.spawn(wid)
        if self.retiring_pipe is not None:
            os.close(self.retiring_pipe)  # the old workers' life pipe: they finish their request and exit
            self.retiring_pipe = None
        for child in having(self.children.table, Role.RETIRING):
            kill_quietly(child.pid, signal.SIGTERM)
        signals.unblock(signals.MASTER)
        names = ", ".join(lst.name for lst in self.listeners)
        count = sum(not seat.cheap for seat in self.children.seats.values())
        bounds = f" (cheaper: {self.config.cheaper}..{self.config.processes})" if self.cheaper else ""
        log(f"master ready: {count} workers{bounds} on {names}")
        # As a uWSGI master does: "spawned" on the first boot only, "accepting" every time.
        if not reloaded:
            self._tell_emperor(MSG_SPAWNED)
        self._tell_emperor(MSG_ACCEPTING)

    def _adopt_previous_image(self) -> bool:
        previous = previous_image()
        if previous:
            self.retiring_pipe, handed = previous
            deadline = time.monotonic() + self.config.worker_reload_mercy
            for pid, kill_by in handed.items():
                self.children.table[pid] = Child(
                    pid, Role.RETIRING, kill_by=min(kill_by, deadline), kill_why=MERCY_PASSED
                )
        return previous is not None

    def _tell_emperor(self, message: int) -> None:
        if self.emperor_fd is not None:
            try:
                os.write(self.emperor_fd, bytes((message,)))
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

    def running(self) -> bool:
        """Whether workers may be spawned and replaced: neither stopping nor reloading."""
        return self.phase is Phase.RUNNING

    def boot_failed(self) -> None:
        """A worker failed to boot before any accepted: the app cannot serve, stop."""
        self.exit_code = BOOT_ERROR
        self.graceful_stop("boot failure")

    def _serve_as_worker(self, wid: int, place: int, stacks: StackFile | None) -> NoReturn:
        """In the forked child: drop the master's descriptors and run the worker."""
        code = 1
        try:
            assert self.wake is not None
            self.wake.close()
            for child in self.children.table.values():  # the other workers' stack files
                if child.stacks is not None:
                    child.stacks.close()
            os.close(self.life_w)
            os.close(self.notify_r)
            if self.retiring_pipe is not None:
                os.close(self.retiring_pipe)
            self.selector.close()
            if self.stats is not None:
                self.stats.sock.close()
            self.notifier.close()
            board = self.board if self.counting else None
            life, notify = self.life_r, self.notify_w
            stack_fd = stacks.fd if stacks is not None else None
            code = run_worker(
                wid,
                self.app,
                self.listeners,
                self.config,
                life,
                notify,
                self.emperor_fd,
                board,
                place,
                stack_fd,
            )
        except BaseException:  # a forked child must never return into the master's code
            traceback.print_exc()
        finally:
            os._exit(code)

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> int:
        """Run until stopped; returns the exit code."""
        self.start()
        while self.phase is not Phase.DONE:
            self.step()
        return self.exit_code

    def step(self) -> None:
        """Wait for a signal or the next deadline, act on it, then on what the policies plan."""
        timeout = 1.0
        now = time.monotonic()
        if signals.waiting():  # caught after the loop last emptied the pipe: its byte is gone
            timeout = 0.0
        elif self.phase is Phase.STOPPING:
            timeout = max(0.0, min(timeout, self.stop_deadline - now))
        elif self.config.harakiri:
            soonest = supervision.next_harakiri(
                self.children.table, self.readings(), self.config.harakiri, time.time()
            )
            timeout = min(timeout, soonest)
        for key, _ in self.selector.select(timeout):
            key.data()
        # Signals caught after the pipe was last read: through the pipe's own count, which also
        # counts their bytes when they come (a record taken apart from it would count them twice).
        self.on_wake()
        while self.pending:
            signum = next(iter(self.pending))
            times = self.pending.pop(signum)
            if signals.has_effect(signals.MASTER, signum):
                handler = getattr(self, f"handle_{signals.name(signum)[3:].lower()}")
                for _ in range(times if signum in COUNTED else 1):
                    handler()
            else:
                log(signals.received(signals.MASTER, signum, times))
        self.reap()
        if self.phase is Phase.RELOADING:
            assert self.wake is not None
            stats = self.stats.listener if self.stats else None
            children = [(child.pid, child.kill_by) for child in self.children.workers()]
            self.notifier.hand_over()
            reexec(self.wake, self.pending, self.listeners, stats, self.life_w, children, self.start_cwd)
        self.supervise()

    def on_wake(self) -> None:
        assert self.wake is not None
        self.pending = _merge(self.pending, self.wake.take())

    def on_stats(self) -> None:
        assert self.stats is not None
        self.stats.answer(self.document)

    def document(self) -> dict[str, Any]:
        """The stats document of this master and its workers."""
        running = self.running()
        cheap = {wid for wid, seat in self.children.seats.items() if seat.cheap}
        return instance_document(
            self.board, self.listeners, self.started, self.cpu, self.recent, running, cheap
        )

    def supervise(self) -> None:
        """Plan with each policy that applies now; its actions are carried out before the next one plans."""
        config, now, running = self.config, time.monotonic(), self.running()
        table, seats = self.children.table, self.children.seats
        if config.harakiri and running:
            grace = config.harakiri_graceful_timeout
            self.act(supervision.harakiri(table, self.readings(), config.harakiri, grace, time.time()))
        if self.touched and running:
            self.act(supervision.touched(self.touched, {path: _mtime(path) for path in self.touched}))
        if self.log_touched:
            self.check_log_touched()
        if running and now >= self.next_periodic:
            self.next_periodic = now + 1.0
            if config.log_maxsize:
                self.check_log_sizes()
            if self.notified_ready:
                self.notifier.status(self.status_line())
            if self.chain_touched:
                mtimes = {path: _mtime(path) for path in self.chain_touched}
                chaining = bool(self.children.chain) or self.children.chain_wait is not None
                wids = [child.wid for child in having(table, Role.WORKER)]
                self.act(supervision.chain_touched(self.chain_touched, mtimes, wids, chaining))
            if config.max_worker_lifetime:
                self.act(supervision.lifetimes(table, seats, config.max_worker_lifetime, now))
            if config.evil_reload_on_rss:
                self.act(supervision.memory(table, self.measure(), config.evil_reload_on_rss))
            self.act(supervision.retries(seats, now))
        if self.cheaper is not None and running:
            self.load, actions = supervision.cheaper(
                self.cheaper, self.load, self.running_workers(), time.time()
            )
            self.act(actions)
        self.act(supervision.deadlines(table, self.phase, self.stop_deadline, now))

    def status_line(self) -> str:
        """What ``systemctl status`` shows: the workers serving and the requests this image served."""
        workers = len(having(self.children.table, Role.WORKER))
        served = sum(self.board.read(wid).requests for wid in self.children.seats)
        return f"{workers} workers, {served} requests served"

    def check_log_touched(self) -> None:
        """touch-logreopen: a watched file whose mtime changed reopens the logs, once for all of them."""
        mtimes = {path: _mtime(path) for path in self.log_touched}
        touched = [path for path, mtime in mtimes.items() if mtime != self.log_touched[path]]
        self.log_touched = mtimes
        if touched:
            self.reopen_logs(f"{touched[0]} was touched")

    def check_log_sizes(self) -> None:
        """log-maxsize: a log file past it is renamed, and every process reopens its logs."""
        rotated = []
        moved: set[tuple[int, int]] = set()  # req-logger may name the logger's file: renamed once
        for sink in logs.files():
            try:
                open_file = os.fstat(sink.fd)
                if (
                    open_file.st_size <= self.config.log_maxsize
                    or (open_file.st_dev, open_file.st_ino) in moved
                ):
                    continue
                # Only the file this process writes: one already renamed (by logrotate) is not ours to move.
                if open_file.st_ino != os.stat(sink.path).st_ino:
                    continue
                moved.add((open_file.st_dev, open_file.st_ino))
                backup = self.config.log_backupname if sink.fd == 2 else None  # the log's own file
                rotated.append(f"{sink.path} ({open_file.st_size} bytes) to {logs.rotate(sink, backup)}")
                self.rotate_failed.discard(sink.path)
            except OSError as exc:
                # Checked every second: a lasting cause (log-backupname on another file system)
                # is said once, not once a second into the very file that cannot be rotated.
                if sink.path not in self.rotate_failed:
                    self.rotate_failed.add(sink.path)
                    why = f"{exc.strerror} (not logged again until it can)"
                    log(f"log-maxsize: cannot rotate {sink.path}: {why}")
        if rotated:
            self.reopen_logs(f"log-maxsize {self.config.log_maxsize} bytes: renamed {', '.join(rotated)}")

    def reopen_logs(self, why: str) -> None:
        """Reopen this process's log files, then every worker's (each reopens its own)."""
        problems = logs.reopen()
        for child in self.children.table.values():
            if child.role is not Role.PROBE:
                kill_quietly(child.pid, signal.SIGUSR1)
        for problem in problems:
            log(f"{why}: cannot reopen {problem}; logging on to the file as it was")
        done = f"{len(problems)} log file(s) not reopened (above)" if problems else "log files reopened"
        log(f"{why}: {done}; {self.summary()}")

    @property
    def counting(self) -> bool:
        """Whether workers keep their counters: only when something reads them (stats, harakiri,
        cheaper, systemd's status line), so that the request path stays lean otherwise."""
        config = self.config
        return self.stats is not None or bool(config.harakiri or config.cheaper) or self.notifier.active

    def summary(self) -> str:
        """One line of the stats, for the operator who sent SIGUSR1."""
        document = self.document()
        workers = [worker for worker in document["workers"] if worker["status"] != "cheap"]
        rss = sum(worker["rss"] for worker in workers) / (1 << 20)
        if self.counting:
            busy = sum(worker["status"] == "busy" for worker in workers)
            requests = sum(worker["requests"] for worker in workers)
            activity = f"{busy} busy, {requests} requests served"
        else:
            activity = "requests not counted (set stats, harakiri or cheaper)"
        return (
            f"{len(workers)} workers ({activity}), listen queue {document['listen_queue']}, "
            f"workers' rss {rss:.1f} MB, up {document['uptime']:.0f} s"
        )

    def readings(self) -> dict[int, WorkerStats]:
        """The scoreboard place of every process of this image that may be in a request, by pid."""
        return {c.pid: self.board.read_place(c.wid, c.place) for c in having(self.children.table, *SERVING)}

    def running_workers(self) -> dict[int, WorkerStats]:
        """The scoreboard place of every running worker, by worker id (a cheap seat has none)."""
        return {
            c.wid: self.board.read_place(c.wid, c.place) for c in having(self.children.table, Role.WORKER)
        }

    def measure(self) -> dict[int, int]:
        """The rss of every worker, by pid (none for one that exited meanwhile: it is reaped next)."""
        rss = {}
        for child in having(self.children.table, Role.WORKER):
            try:
                child.process = child.process or psutil.Process(child.pid)
                rss[child.pid] = child.process.memory_info().rss
            except psutil.Error:
                continue
        return rss

    def act(self, actions: list[supervision.Action]) -> None:
        """Carry out what a policy planned."""
        for action in actions:
            match action:
                case supervision.Signal(pid, signum, line):
                    log(line)
                    kill_quietly(pid, signum)
                case supervision.Kill(pid, line, again):
                    log(line)
                    kill_quietly(pid, signal.SIGKILL)
                    self.children.table[pid].kill_by, self.children.table[pid].sigkilled = again, True
                case supervision.Harakiri(pid, wid, place, line, thread, tid, strike_at):
                    log(line)
                    self.board.harakiri(wid, place)
                    child = self.children.table[pid]
                    child.harakiri_strike = strike_at
                    if child.stacks is None:
                        child.stacks_written = True  # nothing to wait for
                    else:
                        child.stacks.ask(pid, thread, tid, signals.STACKS)
                case supervision.HarakiriStrike(pid, signum, kill_at):
                    child = self.children.table[pid]
                    self.log_stacks(child)
                    kill_quietly(pid, signum)
                    child.harakiri_strike, child.harakiri_kill = None, kill_at
                case supervision.HarakiriKill(pid, again):
                    kill_quietly(pid, signal.SIGKILL)
                    self.children.table[pid].harakiri_kill = again
                case supervision.StopDeadline(at):
                    self.stop_deadline = at
                case supervision.Replace(wid, why):
                    self.children.replace(wid, why)
                case supervision.Respawn(wid, place):
                    self.children.seats[wid].respawn_place = None
                    self.children.spawn(wid, place)
                case supervision.Seen(path, mtime, chain):
                    (self.chain_touched if chain else self.touched)[path] = mtime
                case supervision.Reload(why):
                    self.reload(why)
                case supervision.StartChain(wids):
                    self.children.chain = list(wids)
                    self.children.advance_chain()
                case supervision.Log(line):
                    log(line)
                case supervision.Grow(count, line):
                    log(line)
                    self.children.grow(count)
                case supervision.Cheap(wid, line):
                    self.children.cheap(wid, line)

    def log_stacks(self, child: Child) -> None:
        """Where the harakiri'd request of ``child`` was stuck, in one log write (before it is struck)."""
        stacks = child.stacks
        if stacks is None:
            return
        lines = report(stacks.read(), stacks.thread, self.config.harakiri_verbose, app_call=APP_CALL)
        if not lines:
            lines = [f"no stacks written within {WAIT:g} s"]
        if self.config.harakiri_verbose:
            lines += kernel_lines(child.pid, stacks.tid)
        log(f"HARAKIRI worker {child.wid} (pid {child.pid}): " + "\n".join(lines))

    # -- workers' notices ------------------------------------------------------------------
    def on_notices(self) -> None:
        """Workers' messages: one accepts now, or one is recycling and wants its replacement."""
        try:
            data = os.read(self.notify_r, NOTICE.size * 64)
        except BlockingIOError:
            return
        for kind, pid in NOTICE.iter_unpack(data[: len(data) // NOTICE.size * NOTICE.size]):
            if kind == NOTE_ACCEPTING:
                self.children.on_accepting(pid)
                if self.notifier.active and not self.notified_ready and self.running():
                    # The first worker of this image accepts: a request sent now is served.
                    self.notified_ready = True
                    self.notifier.ready(self.status_line())
            elif kind == NOTE_RECYCLING:
                self.children.on_recycling(pid)
            elif kind == NOTE_STACKS:
                child = self.children.table.get(pid)
                if child is not None and child.harakiri_strike is not None:  # not a stray signal's
                    child.stacks_written = True

    # -- signals ---------------------------------------------------------------------------
    def handle_chld(self) -> None:
        """Children changed state: reaped in ``reap`` after every step."""

    def handle_usr1(self) -> None:
        """Reopen the log files (logrotate's postrotate), everywhere, and log a summary of the stats."""
        self.reopen_logs("SIGUSR1")

    def handle_hup(self) -> None:
        """Graceful reload: once a probe of the new image loads, re-execute with the sockets inherited."""
        self.reload("SIGHUP")

    def reload(self, why: str) -> None:
        """Start the probe of the new image; the workers serve on meanwhile (SIGHUP, touch, emperor)."""
        if not self.running():
            log(f"{why}: no reload, the master is {self.phase.value}")
            return
        if self.probe() is not None:
            # The running probe may have read the old files: a failure is checked again.
            log(f"{why}: a reload is already being checked; it is checked again if that fails")
            self.probe_again = True
            return
        deadline = time.monotonic() + self.config.worker_reload_mercy
        try:
            pid = start_probe(self.start_cwd, self.emperor_fd)
        except OSError as exc:  # fork failed: the user's process limit, a cgroup's pids.max
            self.refuse_reload(f"{why}: reload refused: cannot start the probe ({exc.strerror})")
            return
        self.children.table[pid] = Child(pid, Role.PROBE, kill_by=deadline, kill_why=MERCY_PASSED)
        log(f"{why}: graceful reload, checking that the new image loads (probe pid {pid})")
        self.notifier.reloading(f"reloading ({why}): checking that the new image loads")

    def probe(self) -> Child | None:
        """The probe of the new image, while a reload waits for it."""
        return next(iter(having(self.children.table, Role.PROBE)), None)

    def on_probe_exit(self, probe: Child, how: str, code: int) -> None:
        """The probe is done: re-execute, or refuse the reload and serve on with the same workers."""
        if not self.running():
            return
        if code == PROBE_LOADED and not probe.sigkilled:
            log("the new image loads: re-executing")
            self.phase = Phase.RELOADING  # once every exited child is reaped
            return
        again, self.probe_again = self.probe_again, False
        if again:
            self.reload("a reload asked for meanwhile")
            return
        mercy = self.config.worker_reload_mercy
        late = f"it did not load within worker-reload-mercy ({mercy:g} s)"
        reason = late if probe.sigkilled else f"probe {how}"
        if code == 0:  # nothing above says why: the probe never reached its own exit
            reason += " before it had loaded the app: something it imports ended the process"
        self.refuse_reload(f"reload refused: the new image cannot start ({reason}, see above)")

    def refuse_reload(self, why: str) -> None:
        """Serve on with the same workers; a vassal tells its emperor the reload is over."""
        log(f"{why}; the workers serve on")
        self._tell_emperor(MSG_ACCEPTING)
        if self.notifier.active:
            self.notifier.ready(f"reload refused; {self.status_line()}")

    def handle_ttin(self) -> None:
        """One worker more, up to processes."""
        self.by_hand("SIGTTIN")

    def handle_ttou(self) -> None:
        """One worker fewer, down to cheaper (without it, one)."""
        self.by_hand("SIGTTOU")

    def by_hand(self, signame: str) -> None:
        """SIGTTIN or SIGTTOU: within cheaper (else 1) .. processes, refused and logged at a bound."""
        if not self.running():
            log(f"{signame}: no change, the master is {self.phase.value}")
            return
        cheaper = self.config.cheaper
        floor = f"cheaper ({cheaper})" if cheaper else "binserve (1)"
        running = self.running_workers()
        self.act(supervision.by_hand(signame, 1, running, cheaper or 1, self.config.processes, floor))

    def handle_term(self) -> None:
        """Graceful stop: workers finish their request and the queued ones, then exit."""
        self.graceful_stop("SIGTERM")

    def handle_int(self) -> None:
        """Graceful stop, as SIGTERM (Ctrl-C)."""
        self.graceful_stop("SIGINT")

    def handle_quit(self) -> None:
        """Fast stop: kill the workers now."""
        log("SIGQUIT: fast stop, killing workers")
        self.notifier.stopping("fast stop (SIGQUIT)")
        self.cancel_probe()
        for child in self.children.workers():
            kill_quietly(child.pid, signal.SIGKILL)
        self.phase = Phase.STOPPING
        self.stop_deadline = time.monotonic() + 5

    def graceful_stop(self, why: str) -> None:
        """Ask every worker to stop after its request; SIGKILL past worker-reload-mercy."""
        if self.phase is Phase.STOPPING:
            return
        mercy = self.config.worker_reload_mercy
        log(f"{why}: graceful stop, workers have {mercy:g} s to finish")
        self.notifier.stopping(f"stopping ({why})")
        self.cancel_probe()
        self.phase = Phase.STOPPING
        self.stop_deadline = time.monotonic() + mercy
        for child in self.children.workers():
            kill_quietly(child.pid, signal.SIGTERM)

    def cancel_probe(self) -> None:
        """A stop while a reload is being checked: the probe is of no use any more."""
        probe = self.probe()
        if probe is not None:
            kill_quietly(probe.pid, signal.SIGKILL)
            os.waitpid(probe.pid, 0)  # at once: nothing of this master may outlive its stop
            del self.children.table[probe.pid]

    # -- reaping ---------------------------------------------------------------------------
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
            child = self.children.forget(pid)
            match child:
                case None:
                    log(f"reaped unknown child (pid {pid}) {how}")
                case Child(role=Role.PROBE):
                    self.on_probe_exit(child, how, code)
                case Child(role=Role.LEAVING):
                    self.children.left(child, how)
                case Child(role=Role.RETIRING):
                    log(f"old worker (pid {pid}) {how}")
                case Child(role=Role.CHEAPED):
                    log(f"worker {child.wid} (pid {pid}) cheaped: {how}")
                case Child(role=Role.REPLACEMENT):
                    self.children.lost_replacement(child, code, how)
                case Child(role=Role.WORKER):
                    self.children.lost_worker(child, code, how)
        if self.phase is Phase.STOPPING and not self.children.workers():
            self.finish()

    def finish(self) -> None:
        """Everything has exited: remove the socket files and the pidfile."""
        remove_files(self.listeners, self.config.pidfile, self.config.vacuum)
        if self.stats is not None:
            self.stats.close()
        log("master stopped")
        # From here on a signal stays pending and dies with the process: the interpreter's
        # shutdown restores default actions, and most would end it killed instead of exiting 0.
        signals.block(signals.MASTER)
        self.phase = Phase.DONE


COUNTED = (signal.SIGTTIN, signal.SIGTTOU)  # each one counts: three SIGTTIN, three workers more


def _merge(pending: dict[int, int], taken: dict[int, int]) -> dict[int, int]:
    """Signals taken from the pipe added to those not handled yet, each with how many times."""
    for signum, times in taken.items():
        pending[signum] = pending.get(signum, 0) + times
    return pending


def _mtime(path: str) -> float | None:
    """A file's mtime, or None while it does not exist."""
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None

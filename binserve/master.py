"""The pre-fork master: one loop that waits on file descriptors and supervises the workers.

Signal handlers do nothing; ``signal.set_wakeup_fd`` turns each signal into a byte on a
pipe that the loop reads (gunicorn crashed for years from work done inside a SIGCHLD
handler). Signals: HUP graceful reload, TERM and INT graceful stop with a deadline, QUIT
fast stop. A reload re-executes the master with the listening sockets inherited, so the
new code is loaded fresh while the old workers finish their requests; connections that
arrive meanwhile wait in the listen backlog.
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

from .config import Config
from .log import log
from .scoreboard import Scoreboard
from .sockets import Listener, hand_over, remove_files
from .stats import CpuMeter, Recent, StatsServer, instance_document
from .worker import BOOT_ERROR, MSG_ACCEPTING, MSG_SPAWNED, RECYCLED, run_worker, wake_only

RETIRING_ENV = "_BINSERVE_RETIRING"
EMPEROR_FD_ENV = "UWSGI_EMPEROR_FD"
RUNNING, STOPPING, RELOADING = "running", "stopping", "reloading"
HANDLED = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD)


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
    """Supervises ``processes`` workers sharing ``listeners``."""

    def __init__(
        self, config: Config, app: Callable[..., Any] | None, listeners: list[Listener], start_cwd: str
    ) -> None:
        self.config = config
        self.app = app
        self.listeners = listeners
        self.state = RUNNING
        self.exit_code = 0
        self.workers: dict[int, int] = {}  # wid -> pid
        self.by_pid: dict[int, int] = {}  # pid -> wid
        self.retiring: set[int] = set()  # workers of the previous image, finishing their requests
        self.retiring_pipe: int | None = None
        self.pending = b""  # signal numbers read from the wakeup pipe, not yet handled
        self.emperor_fd = emperor_fd_from_env()
        self.board = Scoreboard(config.processes)
        self.stats: StatsServer | None = None
        self.cpu = CpuMeter()
        self.harakiri_kills: dict[int, float] = {}  # pid -> when to SIGKILL it
        self.touched = {path: _mtime(path) for path in config.touch_reload}
        self.recent = Recent()
        self.started = time.time()
        self.retire_deadline = 0.0
        self.deadline = 0.0
        self.selector = selectors.DefaultSelector()
        self.wake_r = self.wake_w = -1
        self.life_r = self.life_w = -1
        self.start_cwd = start_cwd  # where binserve started: the reload re-executes from there

    # -- setup -----------------------------------------------------------------------------
    def start(self) -> None:
        """Install the wakeup pipe and signal handlers, spawn the workers, retire the old ones.

        The handled signals stay blocked until the handlers are in place: after a reload they
        were blocked before ``execv``, so one that arrived meanwhile is pending, not lost.
        """
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for signum in HANDLED:
            signal.signal(signum, wake_only)
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        if self.emperor_fd is not None:
            self.selector.register(self.emperor_fd, selectors.EVENT_READ)
        if self.config.stats:
            self.stats = StatsServer(self.config.stats, self.config.stats_format, self.config.stats_http)
            self.selector.register(self.stats.fileno(), selectors.EVENT_READ)
        # Workers watch the read end: when the master dies, the write end closes and they leave.
        self.life_r, self.life_w = os.pipe2(os.O_CLOEXEC)
        reloaded = self._adopt_previous_image()
        if self.config.pidfile:
            with open(self.config.pidfile, "w") as handle:
                handle.write(f"{os.getpid()}\n")
        for wid in range(1, self.config.processes + 1):
            self.spawn(wid)
        if self.retiring_pipe is not None:
            os.close(self.retiring_pipe)  # the old workers' life pipe: they finish their request and exit
            self.retiring_pipe = None
        for pid in self.retiring:
            kill_quietly(pid, signal.SIGTERM)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
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
        """A command from the emperor: 0 stop now, 1 reload, 2 stop gracefully; EOF: it is gone."""
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
            if command == 0:
                self.handle_quit()
            elif command == 1:
                self.handle_hup()
            elif command == 2:
                self.graceful_stop("emperor")

    def spawn(self, wid: int) -> None:
        """Fork worker ``wid``."""
        sys.stdout.flush()
        sys.stderr.flush()
        # Blocked across fork so a signal meant for the new worker never reaches the master's
        # handlers in it; the worker unblocks once its own handlers are installed.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(self.wake_r)
                os.close(self.wake_w)
                os.close(self.life_w)
                if self.retiring_pipe is not None:
                    os.close(self.retiring_pipe)
                self.selector.close()
                if self.stats is not None:
                    self.stats.sock.close()
                # Counters are kept only when someone reads them (stats, harakiri): the request
                # path stays lean otherwise.
                keep = self.stats is not None or self.config.harakiri
                slot = self.board.slot(wid) if keep else None
                code = run_worker(
                    wid, self.app, self.listeners, self.config, self.life_r, self.emperor_fd, slot
                )
            except BaseException:  # a forked child must never return into the master's code
                traceback.print_exc()
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.board.spawned(wid, pid)
        self.workers[wid] = pid
        self.by_pid[pid] = wid
        log(f"spawned worker {wid} (pid {pid})")

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
        for key, _ in self.selector.select(timeout):
            if key.fd == self.wake_r:
                self.pending += os.read(self.wake_r, 256)
            elif self.stats is not None and key.fd == self.stats.fileno():
                self.stats.answer(self.document)
            else:
                self.on_emperor()
        while self.pending:
            signum, self.pending = self.pending[0], self.pending[1:]
            handler = getattr(self, f"handle_{signal.Signals(signum).name[3:].lower()}", None)
            if handler:
                handler()
        self.reap()
        self.check_deadlines()

    def document(self) -> dict[str, Any]:
        """The stats document of this master and its workers."""
        return instance_document(
            self.board, self.listeners, self.started, self.cpu, self.recent, self.state == RUNNING
        )

    def handle_chld(self) -> None:
        """Children changed state: reaped in ``reap`` after every step."""

    def handle_hup(self) -> None:
        """Graceful reload: re-execute with the sockets inherited; old workers finish their requests."""
        if self.state != RUNNING:
            return
        log("SIGHUP: graceful reload")
        self.state = RELOADING
        self.reexec()

    def handle_term(self) -> None:
        """Graceful stop: workers finish their request and the queued ones, then exit."""
        self.graceful_stop("SIGTERM")

    def handle_int(self) -> None:
        """Graceful stop, as SIGTERM (Ctrl-C)."""
        self.graceful_stop("SIGINT")

    def handle_quit(self) -> None:
        """Fast stop: kill the workers now."""
        log("SIGQUIT: fast stop, killing workers")
        for pid in [*self.by_pid, *self.retiring]:
            kill_quietly(pid, signal.SIGKILL)
        self.state = STOPPING
        self.deadline = time.monotonic() + 5

    def graceful_stop(self, why: str) -> None:
        """Ask every worker to stop after its request; SIGKILL past worker-reload-mercy."""
        if self.state == STOPPING:
            return
        mercy = self.config.worker_reload_mercy
        log(f"{why}: graceful stop, workers have {mercy:g} s to finish")
        self.state = STOPPING
        self.deadline = time.monotonic() + mercy
        for pid in [*self.by_pid, *self.retiring]:
            kill_quietly(pid, signal.SIGTERM)

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
            if pid in self.retiring:
                self.retiring.discard(pid)
                log(f"old worker (pid {pid}) {how}")
                continue
            wid = self.by_pid.pop(pid, None)
            if wid is None:
                log(f"reaped unknown child (pid {pid}) {how}")
                continue
            del self.workers[wid]
            if self.state != RUNNING:
                log(f"worker {wid} (pid {pid}) {how}")
                continue
            if os.waitstatus_to_exitcode(status) == BOOT_ERROR:
                log(f"worker {wid} (pid {pid}) failed to boot; stopping instead of respawning")
                self.exit_code = BOOT_ERROR
                self.graceful_stop("boot failure")
                continue
            if os.waitstatus_to_exitcode(status) == RECYCLED:
                log(f"worker {wid} (pid {pid}) recycled after max-requests; respawning")
            else:
                log(f"worker {wid} (pid {pid}) died: {how}; respawning")
            self.harakiri_kills.pop(pid, None)
            self.spawn(wid)
        if self.state == STOPPING and not self.by_pid and not self.retiring:
            self.finish()

    def check_harakiri(self) -> None:
        """Kill the workers whose request has run longer than harakiri seconds.

        The log names the worker, its pid and the request, so the slow endpoint can be found.
        With harakiri-graceful-timeout, SIGTERM first (the worker leaves after the request, if
        it ends in time), then SIGKILL.
        """
        limit = self.config.harakiri
        now = time.time()
        for wid, pid in self.workers.items():
            slot = self.board.read(wid)
            if pid in self.harakiri_kills:
                if now >= self.harakiri_kills[pid]:
                    kill_quietly(pid, signal.SIGKILL)
                    self.harakiri_kills[pid] = now + 5
                continue
            if not slot.busy or slot.pid != pid or now - slot.since <= limit:
                continue
            since = time.strftime("%H:%M:%S", time.localtime(slot.since))
            log(
                f"HARAKIRI worker {wid} (pid {pid}): {slot.current} running since {since} "
                f"({now - slot.since:.1f} s > harakiri {limit} s)"
            )
            self.board.harakiri(wid)
            grace = self.config.harakiri_graceful_timeout
            kill_quietly(pid, signal.SIGTERM if grace else signal.SIGKILL)
            self.harakiri_kills[pid] = now + grace

    def check_touched(self) -> None:
        """touch-reload: a watched file whose mtime changed triggers a graceful reload."""
        for path, seen in self.touched.items():
            if _mtime(path) != seen:
                log(f"{path} was touched: graceful reload")
                self.handle_hup()
                return

    def check_deadlines(self) -> None:
        """Escalate to SIGKILL for workers past their mercy; enforce harakiri and touch-reload."""
        if self.config.harakiri and self.state == RUNNING:
            self.check_harakiri()
        if self.touched and self.state == RUNNING:
            self.check_touched()
        now = time.monotonic()
        if self.state == STOPPING and now >= self.deadline:
            for pid in [*self.by_pid, *self.retiring]:
                log(f"worker (pid {pid}) still running past the deadline: SIGKILL")
                kill_quietly(pid, signal.SIGKILL)
            self.deadline = now + 5
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
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        # Signals already turned into bytes would die with the pipe on exec: make them pending
        # again (blocked, so they wait for the new image's handlers).
        try:
            self.pending += os.read(self.wake_r, 256)
        except BlockingIOError:
            pass
        for signum in set(self.pending) - {signal.SIGCHLD}:
            signal.raise_signal(signum)
        hand_over(self.listeners)
        os.set_inheritable(self.life_w, True)
        # Workers of an earlier image still finishing are handed on too, so the next image
        # keeps their deadline and reaps them.
        pids = ",".join(map(str, [*self.by_pid, *self.retiring]))
        os.environ[RETIRING_ENV] = f"{self.life_w}:{pids}"
        os.chdir(self.start_cwd)
        sys.stdout.flush()
        sys.stderr.flush()
        signal.set_wakeup_fd(-1)
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


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


def emperor_fd_from_env() -> int | None:
    """The socket to the emperor when running as a vassal (``UWSGI_EMPEROR_FD``, kept for reloads)."""
    value = os.environ.get(EMPEROR_FD_ENV)
    if not value or not value.isdigit():
        return None
    fd = int(value)
    try:
        os.set_blocking(fd, False)
    except OSError:
        log(f"{EMPEROR_FD_ENV}={value} is not an open descriptor: running without the emperor")
        return None
    return fd


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


def kill_quietly(pid: int, signum: int) -> None:
    """Signal ``pid``; one that has already exited is not an error."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass

"""The worker process: its cores, its signals, and how it leaves.

A worker serves with one core (binserve/core.py) in its main thread, or with ``threads``
cores in threads of their own while the main thread waits for signals. It watches the pipe
from the master: EOF there means the master died, and the worker leaves with it.

Leaving. SIGTERM/SIGINT: stop accepting, finish the requests in hand and the connections
already queued, exit 0 (17 when it had asked to be recycled). SIGQUIT: exit at once. The
master's pipe closing (it died, or a reload handed the sockets to a new image): close the
listeners, finish the requests in hand, exit 0; a watchdog thread ends the process after
harakiri (else worker-reload-mercy) seconds if they are not done. Recycling (max-requests,
SIGHUP): the worker tells the master and goes on serving; the master starts a replacement
and sends the old worker SIGTERM once the new one accepts, so no worker id is ever without a
process accepting for it. (The master replaces workers for max-worker-lifetime and chain
reloads the same way, without asking them.) Over reload-on-rss the worker stops accepting at
once and leaves without draining.

Every graceful exit (a stop, a reload, a recycling) runs the app's exit hooks
(binserve/hooks.py) and then Python's ``atexit`` handlers before the process ends, as a normal
interpreter exit would; a worker killed (SIGKILL past its mercy or on harakiri, SIGQUIT, the
orphan's watchdog) runs none. A worker ends with ``os._exit``, never with the interpreter's
own shutdown: that would also finalize what it inherited from the master (a temporary file
the master made would be removed by the first worker to leave).

On harakiri the master asks the worker for its threads' stacks (binserve/stacks.py): a signal
loop that never serves requests tells it when they are written. With ``threads`` it is the
main thread; with one core in the main thread, the thread that watches the master's pipe.
"""

from __future__ import annotations

import atexit
import faulthandler
import functools
import itertools
import os
import random
import select
import signal
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import psutil

from . import hooks, signals
from .app import import_modules, load_app
from .config import Config
from .core import Core
from .log import log, reopen
from .scoreboard import Scoreboard, Slot
from .sockets import Listener
from .vassal_link import MSG_LOYAL

RECYCLED = 17  # exit code of a recycled worker (uWSGI's reload code)
BOOT_ERROR = 3  # exit code of a worker that cannot start: the master stops instead of respawning

STOPPING = (signal.SIGTERM, signal.SIGINT)
# Worker -> master messages on the notify pipe: (kind, pid), one atomic write each.
NOTICE = struct.Struct("=Bxxxi")
NOTE_ACCEPTING, NOTE_RECYCLING, NOTE_STACKS = 1, 2, 3
MB = 1 << 20


class Worker:
    """One worker process."""

    def __init__(
        self,
        wid: int,
        app: Callable[..., Any],
        listeners: list[Listener],
        config: Config,
        master_fd: int,
        notify_fd: int,
        emperor_fd: int | None = None,
        board: Scoreboard | None = None,
        place: int = 0,
        stack_fd: int | None = None,
    ) -> None:
        self.wid = wid
        self.place = place  # this process's place in the scoreboard (a replacement takes the other)
        self.app = app
        self.listeners = listeners
        self.config = config
        self.master_fd = master_fd
        self.notify_fd = notify_fd
        self.board = board  # the master's scoreboard: each core writes its own slot
        self.stack_fd = stack_fd  # where faulthandler writes the stacks the master asks for on harakiri
        # Under an emperor, the first request served makes the vassal "loyal" (uWSGI's term):
        # a vassal that dies after that is respawned without throttling.
        self.emperor_fd = emperor_fd
        if emperor_fd is not None:
            os.set_inheritable(emperor_fd, False)  # the app's own subprocesses must not hold it
        self.pid = os.getpid()
        self.who = f"worker {wid} (pid {self.pid})"  # how its log lines name it
        self.started = time.monotonic()
        self.counter: Iterator[int] = itertools.count(1)
        # Jitter per worker (max-requests-delta) so the workers do not all recycle together.
        self.max_requests = (
            config.max_requests + random.randint(0, config.max_requests_delta) if config.max_requests else 0
        )
        self.rss_limit = config.reload_on_rss * MB
        self.process = psutil.Process() if self.rss_limit else None
        # Checked after every request only when something needs it: the plain path pays one test.
        self.after_each = bool(self.max_requests or self.rss_limit or emperor_fd is not None)
        self.accepting = True
        self.orphaned = False  # the master's pipe closed: finish and leave, without draining the queue
        self.recycling = ""  # why this worker asked to be replaced, once it has
        self.over_memory = False  # over reload-on-rss: it stopped accepting at once
        self.lock = threading.Lock()
        self.wake: signals.WakePipe | None = None
        self.stop_r = self.stop_w = -1  # closing stop_w wakes every core
        self.cores: list[Core] = []

    def run(self) -> int:
        """Serve until told to stop; returns the exit code."""
        self.wake = wake = signals.WakePipe(signals.WORKER)
        # "At once": the loop may be held by the app for a whole request; the handler is not.
        signal.signal(signal.SIGQUIT, _quit_at_once)
        if self.stack_fd is not None:
            # Chained: once the stacks are written, the signal reaches the wakeup pipe, and the
            # signal loop tells the master they are.
            faulthandler.register(signals.STACKS, file=self.stack_fd, all_threads=True, chain=True)
        # The master blocked its signals across fork; the worker's handlers are now in place.
        signals.unblock(signals.WORKER)
        # Once the signals are this worker's: a process a hook starts must not inherit them
        # blocked, and a stop sent meanwhile waits in the wakeup pipe for the loop.
        hooks.run_postfork(self.who)
        self.stop_r, self.stop_w = os.pipe2(os.O_CLOEXEC)
        if self.config.threads == 1:
            core = Core(self, self._slot(0))
            self.cores = cores = [core]
            core.watch(self.stop_r, functools.partial(core.unwatch, self.stop_r))
            # The signals are read there, not in the core's loop: a request stuck in the app
            # holds that loop, and the master waits for the answer to its harakiri stacks request.
            self._watch_master(wake)
            self._notify(NOTE_ACCEPTING)
            core.run()
        else:
            cores = self._run_threads(wake)
        if self.orphaned:
            return 0
        if self.over_memory:
            return RECYCLED  # every request it served now would grow it further: the queue is others'
        # What is queued is served before leaving: on a stop nobody else may take it.
        for core in cores:
            if self.config.threads > 1:
                core.watch(wake.fileno(), self._on_signals)  # the signals are still read while draining
            core.drain_backlog()
        return RECYCLED if self.recycling else 0

    def _slot(self, core: int) -> Slot | None:
        return self.board.slot(self.wid, core, self.place) if self.board else None

    def _run_threads(self, wake: signals.WakePipe) -> list[Core]:
        """``threads`` cores in threads; this thread handles signals until they are all done."""
        cores = self.cores
        for n in range(self.config.threads):
            core = Core(self, self._slot(n), n)
            # The stop pipe stays readable once closed: each core stops watching it after the wakeup.
            core.watch(self.stop_r, functools.partial(core.unwatch, self.stop_r))
            cores.append(core)
        self._watch_master()
        done_r, done_w = os.pipe2(os.O_CLOEXEC)
        threads = [
            threading.Thread(target=_run_core, args=(self, core, done_w), name=f"core {n}", daemon=True)
            for n, core in enumerate(cores)
        ]
        for thread in threads:
            thread.start()
        self._notify(NOTE_ACCEPTING)
        poller = select.poll()
        for fd in (wake.fileno(), done_r):
            poller.register(fd, select.POLLIN)
        finished = 0
        while finished < len(threads):
            for fd, _ in poller.poll():
                if fd == wake.fileno():
                    self._on_signals()
                else:
                    finished += len(os.read(done_r, 64))
        for thread in threads:
            thread.join()
        return cores

    def _on_signals(self) -> None:
        assert self.wake is not None
        for signum, times in self.wake.take().items():
            if signum in STOPPING:
                self.stop_accepting()
            elif signum == signal.SIGHUP:
                self.recycle("SIGHUP")
            elif signum == signal.SIGUSR1:
                problems = reopen()
                for problem in problems:
                    log(f"worker {self.wid}: cannot reopen {problem}; logging on to the file as it was")
                if not problems:
                    log(f"worker {self.wid} (pid {self.pid}): log files reopened")
            elif signum == signals.STACKS:
                self._notify(NOTE_STACKS)
            elif not signals.has_effect(signals.WORKER, signum):
                log(f"worker {self.wid} (pid {self.pid}): {signals.received(signals.WORKER, signum, times)}")

    def _watch_master(self, wake: signals.WakePipe | None = None) -> None:
        """Watch the master's pipe from a thread of its own: every core may be busy with a request
        when the master dies. Started once the cores exist, which its wakeup takes out of accepting.

        With one core in the main thread, that thread reads the ``wake`` pipe too (one thread
        more would count against a user's process limit).
        """
        threading.Thread(
            target=self._await_master_gone, args=(wake,), name="master pipe", daemon=True
        ).start()

    def _await_master_gone(self, wake: signals.WakePipe | None) -> None:
        poller = select.poll()
        poller.register(self.master_fd, select.POLLIN)
        if wake is not None:
            poller.register(wake.fileno(), select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd != self.master_fd:
                    self._on_signals()
                elif not os.read(self.master_fd, 64):  # EOF: the master never writes on it
                    poller.unregister(self.master_fd)
                    self._on_master_gone()
                    if wake is None:
                        return

    def _on_master_gone(self) -> None:
        """Close the listeners at once and leave within a bound, the requests in hand finished if they can.

        The listeners are closed, not just left alone: a socket still open in a worker that no
        longer accepts would take connections into its backlog, never to answer them, and
        keep a new server from binding it. Nobody may enforce harakiri any more, so a watchdog
        thread (no signal: the app may block or ignore them) ends the process in time.
        """
        bound = self.config.harakiri or self.config.worker_reload_mercy
        log(
            f"worker {self.wid}: the master's pipe closed (a reload, or the master died): listeners closed, "
            f"finishing the requests in hand within {bound:g} s, then exiting"
        )
        self.orphaned = True
        self.stop_accepting()
        with self.lock:
            for core in self.cores:
                core.drop_listeners()
            for listener in self.listeners:
                listener.close()
        threading.Thread(target=self._watchdog, args=(bound,), name="watchdog", daemon=True).start()

    def _watchdog(self, seconds: float) -> None:
        time.sleep(seconds)
        log(
            f"worker {self.wid}: requests still running {seconds:g} s after the master's pipe closed; exiting"
        )
        os._exit(1)

    def stop_accepting(self) -> None:
        """Every core stops accepting; each returns once its requests in hand are done."""
        with self.lock:
            if not self.accepting:
                return
            self.accepting = False
            if self.stop_w >= 0:
                os.close(self.stop_w)  # EOF wakes every core thread
                self.stop_w = -1

    def recycle(self, why: str, now: bool = False) -> None:
        """Ask the master for a replacement; go on serving until it sends SIGTERM.

        ``now``: stop accepting at once and leave after the requests in hand, without draining
        the queue (over reload-on-rss, every request served meanwhile would grow the process).
        """
        with self.lock:
            if self.recycling or not self.accepting:
                return
            self.recycling = why
        log(f"worker {self.wid} (pid {self.pid}): {why}, recycling")
        self._notify(NOTE_RECYCLING)
        if now:
            self.over_memory = True
            self.stop_accepting()

    def after_request(self, n: int) -> None:
        """Bookkeeping after request number ``n``: loyalty to the emperor, recycling checks."""
        if self.emperor_fd is not None:
            self._announce_loyalty()
        if self.recycling or time.monotonic() - self.started < self.config.min_worker_lifetime:
            return
        if self.max_requests and n >= self.max_requests:
            self.recycle(f"{n} requests served (max-requests {self.max_requests})")
        elif self.process is not None:
            rss = self.process.memory_info().rss
            if rss > self.rss_limit:
                self.recycle(
                    f"rss {rss / MB:.1f} MB > reload-on-rss {self.config.reload_on_rss} MB", now=True
                )

    def _notify(self, kind: int) -> None:
        try:
            os.write(self.notify_fd, NOTICE.pack(kind, self.pid))
        except OSError as exc:
            # EPIPE: the master is re-executing for a reload (or died); either way the pipe
            # closes for this worker too and it leaves after its requests.
            log(f"worker {self.wid}: cannot tell the master ({exc.strerror}): it is reloading or gone")

    def _announce_loyalty(self) -> None:
        fd, self.emperor_fd = self.emperor_fd, None  # once per worker, as uWSGI does
        if fd is None:
            return
        try:
            os.write(fd, bytes((MSG_LOYAL,)))
        except OSError as exc:
            log(f"worker {self.wid}: cannot write to the emperor: {exc.strerror}")
        self.after_each = bool(self.max_requests or self.rss_limit)


def _quit_at_once(signum: int, frame: object) -> None:
    os._exit(0)


def _run_core(worker: Worker, core: Core, done_w: int) -> None:
    try:
        core.run()
    except BaseException:
        log(f"worker {worker.wid}: a core thread failed:\n" + traceback.format_exc().rstrip())
        worker.stop_accepting()
    finally:
        os.write(done_w, b"x")


def run_worker(
    wid: int,
    app: Callable[..., Any] | None,
    listeners: list[Listener],
    config: Config,
    master_fd: int,
    notify_fd: int,
    emperor_fd: int | None = None,
    board: Scoreboard | None = None,
    place: int = 0,
    stack_fd: int | None = None,
) -> int:
    """Entry point in a freshly forked worker; never returns to the master's code.

    ``app`` is None with lazy-apps: the worker loads it itself. The modules of the ``import``
    option come next (a worker that cannot import them fails to boot), then, once the worker's
    signal handlers are in place, the postfork hooks.
    """
    try:
        if app is None:
            app = _import_watched(config, wid, master_fd)
        import_modules(config)
        worker = Worker(wid, app, listeners, config, master_fd, notify_fd, emperor_fd, board, place, stack_fd)
    except Exception:
        log(f"worker {wid} failed to boot:\n" + traceback.format_exc().rstrip())
        return BOOT_ERROR
    try:
        return worker.run()
    finally:
        _leave(worker.who)


def _leave(who: str) -> None:
    """A graceful exit: the app's exit hooks, then Python's atexit handlers, their errors logged."""
    hooks.run_atexit(who)
    previous = sys.unraisablehook
    # An atexit handler that raises is reported through the unraisable hook: in one log write,
    # not as several writes that other processes' lines could split.
    sys.unraisablehook = functools.partial(_unraisable, who)
    try:
        atexit._run_exitfuncs()
    finally:
        sys.unraisablehook = previous
    sys.stdout.flush()
    sys.stderr.flush()


def _unraisable(who: str, unraisable: Any) -> None:
    trace = "".join(
        traceback.format_exception(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)
    )
    message = unraisable.err_msg or "Exception ignored in"
    log(f"{who}: {message}: {unraisable.object!r}:\n{trace.rstrip()}")


def _import_watched(config: Config, wid: int, master_fd: int) -> Callable[..., Any]:
    """lazy-apps: import the app while a thread watches the master's pipe.

    An import may hang; if the master dies meanwhile, nobody would ever stop this worker,
    and the listening sockets it inherited would take connections nobody answers. It holds
    no request yet: it leaves at once.
    """
    imported = threading.Event()

    def watch() -> None:
        poller = select.poll()
        poller.register(master_fd, select.POLLIN)
        while not imported.is_set():
            if poller.poll(100) and not imported.is_set():
                log(f"worker {wid}: the master's pipe closed while the app was being imported; exiting")
                os._exit(0)

    threading.Thread(target=watch, name="master pipe (import)", daemon=True).start()
    try:
        return load_app(config)
    finally:
        imported.set()

"""What every signal means to a master, a worker and an emperor: the one table per role.

A caught signal's handler does nothing; ``signal.set_wakeup_fd`` turns it into a byte the
role's loop reads, and the loop acts on it there. One exception: a worker's ``STACKS`` goes
first through faulthandler's C handler, which writes the threads' stacks for the master
(binserve/stacks.py) when no Python code may be able to run. Every signal an operator may send either
has a meaning, is logged with no other effect, or is one whose default is harmless: none
ends a process without a log line. Only the fault signals (SEGV, BUS, FPE, ILL, ABRT, TRAP,
SYS), which the kernel sends for a bug in the process itself, keep their default action;
KILL and STOP cannot be caught.

Giving a signal a meaning is one line in a table (and the role's handler for it).

Processes the app forks (``multiprocessing``, a forked helper) must not keep any of this:
they would write their signals into the worker's wakeup pipe and ignore SIGTERM. After
every fork but a master's fork of its own worker, the child gets the defaults back.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Mapping

NO_EFFECT = "no effect"  # caught and logged: its default action would end or stop the process
IGNORED = "ignored"  # the kernel drops it (PIPE: failed writes are reported as errors instead)
DEFAULT = "default action"  # left to the process (a worker's SIGCHLD belongs to the app)

Table = Mapping[int, str]
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _no_effect() -> dict[int, str]:
    """Every catchable signal whose default terminates or stops the process, but faults and meanings."""
    names = (
        "SIGUSR1",
        "SIGUSR2",
        "SIGALRM",
        "SIGVTALRM",
        "SIGPROF",
        "SIGIO",
        "SIGTTIN",
        "SIGTTOU",
        "SIGTSTP",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGPWR",
        "SIGSTKFLT",
    )
    found = {getattr(signal, name) for name in names if hasattr(signal, name)}
    found.update(range(signal.SIGRTMIN, signal.SIGRTMAX + 1))
    return dict.fromkeys(sorted(found), NO_EFFECT)


_COMMON = {**_no_effect(), signal.SIGWINCH: IGNORED, signal.SIGPIPE: IGNORED}

# The master asks a worker for its threads' stacks on harakiri (binserve/stacks.py): a real-time
# signal no operator habit sends. faulthandler writes them from C before this table's handler runs.
STACKS = signal.SIGRTMIN + 1

MASTER: Table = {
    **_COMMON,
    signal.SIGHUP: "graceful reload, once a probe of the new image loads the config and the app",
    signal.SIGTERM: "graceful stop",
    signal.SIGINT: "graceful stop",
    signal.SIGQUIT: "fast stop: the workers are killed",
    signal.SIGCHLD: "reap the workers that exited",
    signal.SIGUSR1: "reopen the log files, in every worker too, and log a summary of the stats",
}
WORKER: Table = {
    **_COMMON,
    signal.SIGHUP: "recycle: a replacement is started, then this worker leaves",
    signal.SIGTERM: "finish the requests in hand and the queued connections, then exit",
    signal.SIGINT: "finish the requests in hand and the queued connections, then exit",
    signal.SIGQUIT: "exit at once",
    signal.SIGCHLD: DEFAULT,
    signal.SIGUSR1: "reopen the log files",
    STACKS: "write every thread's stack for the master (it sends this on harakiri), then go on",
}
EMPEROR: Table = {
    **_COMMON,
    signal.SIGHUP: "reload every vassal",
    signal.SIGTERM: "stop every vassal gracefully, then exit",
    signal.SIGINT: "stop every vassal gracefully, then exit",
    signal.SIGQUIT: "stop every vassal gracefully, then exit",
    signal.SIGCHLD: "reap the vassals that exited",
    signal.SIGUSR1: "reopen the log files, log a summary of the vassals, and pass SIGUSR1 to every vassal",
}

_installed: Table | None = None  # the table this process installed, reset in forked children
_forking_own = False  # a master forking its worker: the child installs its own table
_held: set[int | signal.Signals] | None = None  # the forking thread's mask while the app forks
_early: WakePipe | None = None  # the start's wakeup pipe, until a role's table takes it over
_listening: list[int] = []  # the listening sockets: no process the app forks may hold them


def name(signum: int) -> str:
    """``SIGUSR1``, ``SIGRTMIN+3``: the name an operator would type."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        if signal.SIGRTMIN < signum < signal.SIGRTMAX:
            return f"SIGRTMIN+{signum - signal.SIGRTMIN}"
        return f"signal {signum}"


def caught(table: Table) -> list[int]:
    """The signals ``table`` gives a handler (the wakeup fd turns them into bytes)."""
    return [signum for signum, meaning in table.items() if meaning not in (IGNORED, DEFAULT)]


def has_effect(table: Table, signum: int) -> bool:
    """Whether the loop acts on ``signum`` beyond logging it."""
    return table.get(signum, NO_EFFECT) != NO_EFFECT


def received(table: Table, signum: int) -> str:
    """The log line for a signal: ``SIGUSR1 received: no effect``."""
    return f"{name(signum)} received: {table.get(signum, NO_EFFECT)}"


def block(table: Table) -> None:
    """Hold the caught signals pending (across a fork, an exec, or until the handlers are in place)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, caught(table))


def hold_without_meaning() -> None:
    """From the first line of a binserve process: a signal without a meaning, and SIGHUP, wait,
    caught into a pipe, until the role's table is installed and acts on them (the app's import
    may take seconds): SIGHUP's default would end the process without a word, its sockets left.

    Caught, not blocked: a blocked signal would stay blocked in every process the app starts
    meanwhile, and a caught one takes its default action again in them. A stop (TERM, INT,
    QUIT) ends the start where it is, so that the process can say so and remove what it made;
    after a reload, the previous image held the master's signals across the exec: those are
    caught into the pipe too, for the new image's loop.
    """
    global _early
    held = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    waiting = {signum for signum in caught(MASTER) if signum in held} | {signal.SIGHUP}
    table = {**_COMMON, **{signum: MASTER[signum] for signum in (*waiting, *STOPS)}}
    _early = WakePipe(table)
    for signum in STOPS:
        if signum not in waiting:
            signal.signal(signum, _stop_while_starting)
    unblock(table)


class Stopped(BaseException):
    """A stop signal (TERM, INT, QUIT) that arrived while binserve was starting: named by its args."""


STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def _stop_while_starting(signum: int, frame: object) -> None:
    """Until the role's table is in place, a stop ends the start where it is."""
    raise Stopped(name(signum))


def unblock(table: Table) -> None:
    """Deliver every signal of ``table`` again, those held pending meanwhile first."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, list(table))


def install(table: Table, wake_w: int) -> None:
    """Give every signal of ``table`` its disposition; caught ones write their number on ``wake_w``.

    Signals stay as blocked as they were: the caller unblocks once its loop can read them.
    """
    global _installed
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    for signum, meaning in table.items():
        if meaning == IGNORED:
            signal.signal(signum, _fresh(signum))
        elif meaning == DEFAULT:
            signal.signal(signum, signal.SIG_DFL)
        else:
            signal.signal(signum, wake_only)
    _installed = table
    if _early is not None:
        _pass_on(wake_w)


def _pass_on(wake_w: int) -> None:
    """What was caught before the role's table: into its wakeup pipe, for its loop to act on."""
    global _early
    assert _early is not None
    early, _early = _early, None
    while data := early.read():
        os.write(wake_w, data)
    early.close()


class WakePipe:
    """The pipe a role's loop waits on: ``signal.set_wakeup_fd`` writes each caught signal's number.

    Made by installing ``table``; non-blocking, so a loop woken for nothing reads nothing,
    and close-on-exec, so no program the app executes can write into it.
    """

    def __init__(self, table: Table) -> None:
        self.read_end, self.write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        install(table, self.write_end)

    def fileno(self) -> int:
        """The end to wait on (selectors and poll take the object itself)."""
        return self.read_end

    def read(self) -> bytes:
        """The signal numbers caught since the last read, oldest first."""
        try:
            return os.read(self.read_end, 256)
        except BlockingIOError:
            return b""

    def close(self) -> None:
        """Close both ends: the start's pipe once passed on, the master's in a forked worker."""
        os.close(self.read_end)
        os.close(self.write_end)


def listening(fds: list[int]) -> None:
    """Name the listening sockets, which processes the app forks must not keep open.

    A helper holding one would keep it accepting into a backlog nobody reads once the
    workers are gone (the master killed), and keep a new server from binding it.
    """
    _listening[:] = fds


def fork_worker(table: Table) -> int:
    """``os.fork`` for a master's own worker: its signals wait, blocked, for the worker's table.

    Without the block, a signal meant for the new worker would reach the master's handlers
    in it (and write into the master's wakeup pipe).
    """
    global _forking_own
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, caught(table))
    _forking_own = True
    pid = -1  # stays so when fork fails
    try:
        pid = os.fork()
    finally:
        if pid:  # the parent, or a fork that failed: the master goes on as before
            _forking_own = False
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    return pid


def die_with_parent(signum: int) -> None:
    """In a forked child: the kernel sends it ``signum`` once its parent dies (Linux's prctl).

    Kept across exec, lost when the child changes its user.
    """
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)


def kill_quietly(pid: int, signum: int) -> None:
    """Signal ``pid``; one that has already exited is not an error."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def wake_only(signum: int, frame: object) -> None:
    """The handler of every caught signal: the wakeup fd already woke the loop."""


def _fresh(signum: int) -> signal.Handlers:
    """The disposition a fresh Python process has: the default, but PIPE ignored.

    For WINCH the default is to ignore it, and unlike SIG_IGN it does not pass on to the
    programs an app executes.
    """
    return signal.SIG_IGN if signum == signal.SIGPIPE else signal.SIG_DFL


def _hold_across_fork() -> None:
    """Before the app forks: a signal sent to the child before its reset must wait for the reset
    (else the inherited handler takes it, and it ends up in this process's wakeup pipe)."""
    global _held
    if _installed is not None and not _forking_own:
        _held = signal.pthread_sigmask(signal.SIG_BLOCK, caught(_installed))


def _release_in_parent() -> None:
    global _held
    if _held is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, _held)
        _held = None


def _reset_in_child() -> None:
    """In a child forked by the app: no wakeup pipe, default dispositions, nothing blocked."""
    global _installed, _forking_own, _held, _early
    if _early is not None:
        _early.close()
        _early = None
    if _forking_own:
        _forking_own = False  # this worker's own forks (a lazy app's import may fork) are the app's
        return
    _release_listeners()
    if _installed is None:
        return
    signal.set_wakeup_fd(-1)
    for signum in _installed:
        signal.signal(signum, _fresh(signum))
    signal.pthread_sigmask(signal.SIG_SETMASK, [])  # what was held meanwhile now takes its default action
    _installed, _held = None, None


def _release_listeners() -> None:
    """In a child the app forked: /dev/null takes the listeners' descriptors (the app's socket
    objects may still close them: the numbers must stay this process's own)."""
    if not _listening:
        return
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    for fd in _listening:
        os.dup2(null, fd, inheritable=False)
    os.close(null)


os.register_at_fork(
    before=_hold_across_fork, after_in_parent=_release_in_parent, after_in_child=_reset_in_child
)

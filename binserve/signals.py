"""What every signal means to a master, a worker and an emperor: the one table per role.

A caught signal's handler only records its number (``take`` hands the loop what was recorded);
``signal.set_wakeup_fd`` writes a byte that wakes the role's loop, and the loop acts on the
signal there. The byte only wakes: under a flood the pipe fills and bytes are dropped, but the
record keeps every signal's meaning (a SIGTERM after thousands of SIGUSR2 still stops). One
exception: a worker's ``STACKS`` goes first through faulthandler's C handler, which writes the
threads' stacks for the master (binserve/stacks.py) when no Python code may be able to run.
Every signal an operator may send either has a meaning, is logged with no other effect, or is
one whose default is harmless: none ends a process without a log line. Only the fault signals
(SEGV, BUS, FPE, ILL, ABRT, TRAP, SYS), which the kernel sends for a bug in the process itself,
keep their default action; KILL and STOP cannot be caught.

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
IGNORED = "ignored"  # dropped without a log line (PIPE: failed writes are reported as errors instead)
DEFAULT = "default action"  # left to the process (a worker's SIGCHLD belongs to the app)

Table = Mapping[int, str]
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
PIPE_CAPACITY = 65536  # Linux's default pipe size


def _no_effect() -> dict[int, str]:
    """Every catchable signal whose default terminates or stops the process, but faults and meanings."""
    names = (
        "SIGUSR1",
        "SIGUSR2",
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


_COMMON = {**_no_effect(), signal.SIGWINCH: IGNORED, signal.SIGPIPE: IGNORED, signal.SIGALRM: IGNORED}
# Ignored by a handler that drops them, not by SIG_IGN: their default action ends a process, and
# SIG_IGN would pass on to the programs an app executes, which may count on that default.
_DROPPED = frozenset({signal.SIGALRM})

# The master asks a worker for its threads' stacks on harakiri (binserve/stacks.py): a real-time
# signal no operator habit sends. faulthandler writes them from C before this table's handler runs.
STACKS = signal.SIGRTMIN + 1

_GRACEFUL_STOP = (
    "graceful stop: workers finish their request and the queued ones, then exit; "
    "past `worker-reload-mercy` they are killed"
)
_VASSALS_STOP = "stop every vassal gracefully, SIGKILL past `worker-reload-mercy`, then exit"
MASTER: Table = {
    **_COMMON,
    signal.SIGHUP: "graceful reload, once a probe of the new image loads the config and the app",
    signal.SIGTERM: _GRACEFUL_STOP,
    signal.SIGINT: _GRACEFUL_STOP,
    signal.SIGQUIT: "fast stop: the workers are killed",
    signal.SIGCHLD: "reap the workers that exited",
    signal.SIGUSR1: "reopen the log files, in every worker too, and log a summary of the stats",
    signal.SIGTTIN: "one worker more, up to `processes`; refused (and logged) at that bound",
    signal.SIGTTOU: "one worker fewer, down to `cheaper` (without it, 1); refused (and logged) at that bound",
}
WORKER: Table = {
    **_COMMON,
    signal.SIGHUP: "recycle: a replacement starts beside it, and it leaves once the replacement accepts",
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
    signal.SIGTERM: _VASSALS_STOP,
    signal.SIGINT: _VASSALS_STOP,
    signal.SIGQUIT: _VASSALS_STOP,
    signal.SIGCHLD: "reap the vassals that exited",
    signal.SIGUSR1: "reopen the log files, log a summary of the vassals, and pass SIGUSR1 to every vassal",
}

# Not in the tables: the kernel's own, shown in the README's table after them.
UNCAUGHT = (
    (
        "SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP, SIGSYS",
        "default action: these report a fault in the process itself",
    ),
    ("SIGKILL, SIGSTOP", "cannot be caught"),
)

_installed: Table | None = None  # the table this process installed, reset in forked children
_forking_own = False  # a master forking its worker: the child installs its own table
_held: set[int | signal.Signals] | None = None  # the forking thread's mask while the app forks
_early: WakePipe | None = None  # the start's wakeup pipe, until a role's table takes it over
_listening: list[int] = []  # the listening sockets: no process the app forks may hold them
_recorded: dict[int, int] = {}  # signal -> how many times it was caught since the loop last took them


def name(signum: int) -> str:
    """``SIGUSR1``, ``SIGRTMIN+3``: the name an operator would type."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        if signal.SIGRTMIN < signum < signal.SIGRTMAX:
            return f"SIGRTMIN+{signum - signal.SIGRTMIN}"
        return f"signal {signum}"


def signals_table() -> str:
    """The three tables as one markdown table, for the README: a row per set of signals that
    mean the same to each role."""
    rows: dict[tuple[str, str, str], list[int]] = {}
    for signum in sorted({*MASTER, *WORKER, *EMPEROR}):
        meanings = tuple(_cell(table.get(signum, NO_EFFECT)) for table in (MASTER, WORKER, EMPEROR))
        rows.setdefault((meanings[0], meanings[1], meanings[2]), []).append(signum)
    lines = ["| signal | master | worker | emperor |", "| --- | --- | --- | --- |"]
    for (master, worker, emperor), signums in rows.items():
        lines.append(f"| {_names(signums)} | {master} | {worker} | {emperor} |")
    lines += [f"| {names} | {meaning} | same | same |" for names, meaning in UNCAUGHT]
    return "\n".join(lines)


def _cell(meaning: str) -> str:
    if meaning == NO_EFFECT:
        return "logged, nothing else"
    if meaning == DEFAULT:
        return "default action (the app's)"
    return meaning


def _names(signums: list[int]) -> str:
    """``SIGUSR2, SIGTSTP, SIGRTMIN, SIGRTMIN+2 … SIGRTMAX``: runs of real-time signals written as one."""
    names = [name(s) for s in signums if not signal.SIGRTMIN <= s <= signal.SIGRTMAX]
    run: list[int] = []
    for signum in [*sorted(s for s in signums if signal.SIGRTMIN <= s <= signal.SIGRTMAX), -1]:
        if run and signum != run[-1] + 1:
            names.append(f"{name(run[0])} … {name(run[-1])}" if len(run) > 2 else ", ".join(map(name, run)))
            run = []
        run.append(signum)
    return ", ".join(names)


def caught(table: Table) -> list[int]:
    """The signals ``table`` gives a handler (the wakeup fd turns them into bytes)."""
    return [
        signum
        for signum, meaning in table.items()
        if meaning not in (IGNORED, DEFAULT) or (meaning == IGNORED and signum in _DROPPED)
    ]


def has_effect(table: Table, signum: int) -> bool:
    """Whether the loop acts on ``signum`` beyond logging it."""
    return table.get(signum, NO_EFFECT) not in (NO_EFFECT, IGNORED, DEFAULT)


def received(table: Table, signum: int, times: int = 1) -> str:
    """The log line for a signal: ``SIGUSR1 received: no effect``, ``(N times)`` for a batch."""
    batch = f" ({times} times)" if times > 1 else ""
    return f"{name(signum)} received: {table.get(signum, NO_EFFECT)}{batch}"


def take() -> dict[int, int]:
    """The signals caught since the last call, each with how many times, in the order they came.

    Swapped out whole: a handler that runs meanwhile records into the next batch.
    """
    global _recorded
    taken, _recorded = _recorded, {}
    return taken


def waiting() -> bool:
    """Whether signals were caught that the loop has not taken yet (its wakeup byte may be read)."""
    return bool(_recorded)


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
    # A full pipe only drops wakeups: the handler has recorded the signal itself.
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    for signum, meaning in table.items():
        if meaning == IGNORED and signum in _DROPPED:
            signal.signal(signum, _drop)
        elif meaning == IGNORED:
            signal.signal(signum, _fresh(signum))
        elif meaning == DEFAULT:
            signal.signal(signum, signal.SIG_DFL)
        else:
            signal.signal(signum, record)
    _installed = table
    if _early is not None:
        _pass_on(wake_w)


def _pass_on(wake_w: int) -> None:
    """What was caught before the role's table stays recorded; its wakeup pipe wakes the role's loop."""
    global _early
    assert _early is not None
    early, _early = _early, None
    early.close()
    if _recorded:
        os.write(wake_w, b"\0")


class WakePipe:
    """The pipe a role's loop waits on: ``signal.set_wakeup_fd`` writes a byte for each caught signal.

    Made by installing ``table``; non-blocking, so a loop woken for nothing reads nothing,
    and close-on-exec, so no program the app executes can write into it.
    """

    def __init__(self, table: Table) -> None:
        self.read_end, self.write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Each signal counted two ways since the pipe was made: by its bytes (lost when the pipe
        # is full) and by its handler's records (late when the handler has not run yet); and how
        # many of it were handed to the loop.
        self.by_bytes: dict[int, int] = {}
        self.by_records: dict[int, int] = {}
        self.handed: dict[int, int] = {}
        # The signals whose handler records them: a byte of another (a dropped SIGALRM, the
        # start's pipe waking the loop with 0) only wakes it.
        self.counted = frozenset(signum for signum in caught(table) if signum not in _DROPPED)
        install(table, self.write_end)

    def fileno(self) -> int:
        """The end to wait on (selectors and poll take the object itself)."""
        return self.read_end

    def take(self) -> dict[int, int]:
        """Empty the pipe, then take the signals recorded (``take``): each with how many times.

        Emptied in one read of what a pipe holds (reading until it is empty would never end
        under a flood). The loop reading the pipe is usually the main thread, where Python runs
        the handlers, so a byte's signal is recorded by the time it is read. A worker with one
        core reads it in another thread, which can be woken before the main thread, busy with a
        request, has run the handler (or ever will, until the request ends: a C call that goes
        on after EINTR): there the byte itself says which signal came. Either count alone may
        fall short; neither counts a signal twice, so each signal is handed on as many times as
        the larger count says, once.
        """
        try:
            data = os.read(self.read_end, PIPE_CAPACITY)
        except BlockingIOError:
            data = b""
        recorded = take()
        came = [signum for signum in data if signum in self.counted]
        for signum in came:
            self.by_bytes[signum] = self.by_bytes.get(signum, 0) + 1
        for signum, times in recorded.items():
            self.by_records[signum] = self.by_records.get(signum, 0) + times
        taken = {}
        for signum in {**recorded, **dict.fromkeys(came)}:
            seen = max(self.by_bytes.get(signum, 0), self.by_records.get(signum, 0))
            new = seen - self.handed.get(signum, 0)
            if new > 0:
                taken[signum] = new
                self.handed[signum] = seen
        return taken

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


def record(signum: int, frame: object) -> None:
    """The handler of every caught signal: note it for the loop (the wakeup fd wakes the loop)."""
    # One read of the global: a one-core worker's take() swaps it from another thread, and a
    # count read from the old dict must not land in the new one (the signal would count twice;
    # landing in the old one, it is counted by its byte).
    recorded = _recorded
    recorded[signum] = recorded.get(signum, 0) + 1


def _drop(signum: int, frame: object) -> None:
    """The handler of a signal ignored whose default would end the process (SIGALRM)."""


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
    _recorded.clear()  # the parent's signals: its loop acts on them, not this child
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

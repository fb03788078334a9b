"""Where a request was stuck: the stacks a worker writes on harakiri, read back as a traceback.

On harakiri the master sends the worker ``signals.STACKS``. In the worker, faulthandler's
C-level handler writes every thread's stack into the worker's stack file there and then: it
needs no GIL, so it works when the app spins in Python, waits in a blocking call, or runs C
code that holds the GIL (where a Python-level handler would never run). It then passes the
signal on to the worker's wakeup pipe, and the worker's signal loop tells the master that the
stacks are written; when C code holds the GIL that loop cannot run, and the master stops
waiting after ``WAIT`` seconds, the stacks being written all the same.

The master reads the file, keeps the stuck request's thread (the scoreboard names it) and logs
its frames most recent call last, as a Python traceback reads, in one write. With
harakiri-verbose it adds the other threads and, as uWSGI does, the stuck thread's kernel wait
channel and system call from /proc.

The stack file is an anonymous memory file (memfd) the master creates before forking the
worker: the worker inherits it, and the master reads it with ``pread``, whatever became of
the worker, without touching the offset the two share.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from .safefile import read_bounded

WAIT = 1.0  # seconds the master waits for the stacks before it strikes anyway
MAX_BYTES = 1 << 20  # of stacks read back (faulthandler writes at most 100 threads of 100 frames)
MAX_SOURCE_BYTES = 4 << 20  # of a source file read to show a frame's line, as a traceback does

_THREAD = re.compile(r"(Current thread|Thread) (0x[0-9a-fA-F]+)\b.*:$")
_FRAME = re.compile(r'  File "(.*)", line (\d+|\?\?\?) in (.*)$')


@dataclass(frozen=True)
class Frame:
    """One frame as faulthandler wrote it; ``line`` is 0 when it did not know."""

    path: str
    line: int
    function: str


@dataclass
class Thread:
    """One thread's stack, most recent call first as written; ``notes``: faulthandler's other lines."""

    ident: int
    current: bool  # the thread that ran faulthandler's handler
    frames: list[Frame] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def parse(text: str) -> list[Thread]:
    """The threads of a faulthandler dump (``all_threads``), in the order written."""
    threads: list[Thread] = []
    for line in text.splitlines():
        head = _THREAD.match(line)
        if head:
            threads.append(Thread(int(head.group(2), 16), head.group(1) == "Current thread"))
            continue
        if not threads or not line.strip():
            continue
        frame = _FRAME.match(line)
        if frame:
            number = frame.group(2)
            threads[-1].frames.append(
                Frame(frame.group(1), int(number) if number.isdigit() else 0, frame.group(3))
            )
        else:
            threads[-1].notes.append(line.strip())  # "<no Python frame>", "...", "Garbage-collecting"
    return threads


Source = Callable[[str, int], str | None]


def traceback_lines(thread: Thread, source: Source) -> list[str]:
    """``thread``'s frames most recent call last, each with its source line, as a Python traceback."""
    lines = [f"  {note}" for note in thread.notes if note != "..."]
    if "..." in thread.notes:  # faulthandler stopped at its depth limit: the oldest frames are missing
        lines.append("  ... (older frames not written)")
    for frame in reversed(thread.frames):
        where = f"line {frame.line}" if frame.line else "line ?"
        lines.append(f'  File "{frame.path}", {where}, in {frame.function}')
        text = source(frame.path, frame.line) if frame.line else None
        if text:
            lines.append(f"    {text}")
    return lines


def source_reader() -> Source:
    """A reader of source lines that reads each file once, only if it is a regular file of bounded size."""
    files: dict[str, list[str] | None] = {}

    def line(path: str, number: int) -> str | None:
        if path not in files:
            try:
                files[path] = read_bounded(path, MAX_SOURCE_BYTES).decode("utf-8", "replace").splitlines()
            except (OSError, ValueError):
                files[path] = None  # "<frozen ...>", "<string>", a file gone or refused: no line, as Python
        lines = files[path]
        if lines is None or not 0 < number <= len(lines):
            return None
        return lines[number - 1].strip() or None

    return line


def from_app_call(thread: Thread, app_call: tuple[str, str]) -> Thread:
    """``thread`` without the frames older than ``app_call`` (path, function): the server's own,
    from the process's start down to the call of the app, which say nothing about the request."""
    path, function = app_call
    for n, frame in enumerate(thread.frames):
        if frame.path == path and frame.function == function:
            return Thread(thread.ident, thread.current, thread.frames[: n + 1], [])
    return thread


def report(
    text: str,
    thread: int,
    verbose: bool,
    source: Source | None = None,
    app_call: tuple[str, str] | None = None,
) -> list[str]:
    """The lines that say where ``thread`` was, from the dump ``text``; all threads when ``verbose``.

    ``app_call``: the frame that calls the app; the stuck thread is shown from there, unless ``verbose``.
    """
    source = source or source_reader()
    threads = parse(text)
    stuck = next((t for t in threads if t.ident == thread), None)
    lines: list[str] = []
    if stuck is not None:
        lines.append(f"the request was stuck in thread 0x{thread:x} (most recent call last):")
        shown = stuck if verbose or app_call is None else from_app_call(stuck, app_call)
        lines += traceback_lines(shown, source)
    elif threads:
        lines.append(f"no stack of thread 0x{thread:x} among the {len(threads)} written")
    if verbose or (stuck is None and threads):
        for other in threads:
            if other is not stuck:
                lines.append(f"thread 0x{other.ident:x} (most recent call last):")
                lines += traceback_lines(other, source)
    return lines


class StackFile:
    """The memory file one worker writes its stacks into; the master keeps it and reads it."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("binserve-stacks", os.MFD_CLOEXEC)
        self.start = 0  # where the stacks asked for last begin
        self.thread = 0  # the stuck request's thread ident
        self.tid = 0  # and its native id

    def ask(self, pid: int, thread: int, tid: int, signum: int) -> None:
        """Ask worker ``pid`` for its stacks: those of ``thread`` are the ones wanted."""
        self.start = os.fstat(self.fd).st_size
        self.thread, self.tid = thread, tid
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    def read(self) -> str:
        """What the worker wrote since it was asked (bounded)."""
        return os.pread(self.fd, MAX_BYTES, self.start).decode("utf-8", "backslashreplace")

    def close(self) -> None:
        """The worker is gone (reaped), or this process is a worker closing the others' files."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def kernel_lines(pid: int, tid: int) -> list[str]:
    """The stuck thread's wait channel and system call, as uWSGI's harakiri-verbose logs them."""
    lines = []
    for name in ("wchan", "syscall"):
        path = f"/proc/{pid}/task/{tid}/{name}" if tid else f"/proc/{pid}/{name}"
        try:
            with open(path, "rb") as proc:  # a /proc file: neither a link nor a FIFO can be planted there
                value = proc.read(512).decode("ascii", "replace").strip() or "-"
        except OSError as exc:
            value = f"unreadable ({exc.strerror})"
        lines.append(f"-- {name}> {value}")
    return lines

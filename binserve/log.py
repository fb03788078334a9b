"""Log lines, where they go, and reopening them.

Every process writes whole lines, each with one ``write`` on a descriptor it holds, so lines
from the master, its workers and their threads never interleave and no lock is taken.

Two *sinks*: the log (binserve's own lines; ``logger``, else ``logto``, else stderr) and the
request log (``req-logger``, else the log). A sink is one of uWSGI's loggers:

* ``stdio``: stderr as the process got it;
* ``file:PATH``: opened with O_APPEND (appends from several processes never overwrite each
  other) by safefile, so a symlink, a hard link or a FIFO planted at its name is refused. The
  log's file is also made the process's stdout and stderr, as uWSGI's logto does, so the app's
  output lands there too;
* ``syslog[:ID[,FACILITY]]``: one datagram per line to ``/dev/log``, tagged ``ID[pid]``.

A sink keeps its descriptor *number* for the life of the process: reopening opens the file
(or the socket) again and ``dup2``\\ s it onto that number, which the kernel does atomically,
so a thread writing meanwhile writes whole to the old file or to the new one. Each process
reopens its own sinks, in its own loop (binserve/master.py passes SIGUSR1 on to its workers).

The app's stdout and stderr become ``LineWriter``\\ s: a line is written once it is whole,
with one ``write``, whatever the buffering, ``print``'s separate write of the newline, or
other threads printing meanwhile.
"""

from __future__ import annotations

import io
import os
import select
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass

from .safefile import open_append

DEFAULT_DATE = "%Y-%m-%d %H:%M:%S"
SYSLOG_PATH = "/dev/log"
DEFAULT_TAG = "binserve"
LOGGER_FORMS = "file:PATH, stdio or syslog[:ID[,FACILITY]] (optionally after a name: NAME file:PATH)"
FACILITIES = {
    **{
        name: code
        for code, name in enumerate(
            "kern user mail daemon auth syslog lpr news uucp cron authpriv ftp".split()
        )
    },
    **{f"local{n}": 16 + n for n in range(8)},
}
_INFO = 6  # syslog severity of every line: the line itself says what happened
_MAX_DATAGRAM = 60 * 1024  # below the smallest default datagram limit of /dev/log's readers
_MAX_PENDING = 1 << 20  # a thread printing this much without a newline gets it written as is
# How long a line waits for a syslog reader whose queue is full. Past it the reader is stalled
# (a hung daemon, a full disk behind it): lines are dropped, without waiting, until it reads again.
_SYSLOG_WAIT = 1.0


@dataclass(frozen=True)
class LoggerSpec:
    """A parsed ``logger`` / ``req-logger`` value."""

    kind: str  # "stdio", "file" or "syslog"
    path: str = ""  # file
    tag: str = DEFAULT_TAG  # syslog
    facility: int = FACILITIES["user"]  # syslog
    text: str = ""  # as written, for messages

    def __str__(self) -> str:
        return self.text


def parse_logger(text: str) -> LoggerSpec:
    """``file:PATH``, ``stdio`` or ``syslog[:ID[,FACILITY]]``, after an optional name; ValueError else."""
    words = text.split(None, 1)
    spec = words[-1].strip() if words else ""
    plugin, colon, arg = spec.partition(":")
    if plugin == "stdio" and not colon:
        return LoggerSpec("stdio", text=spec)
    if plugin == "file" and arg:
        return LoggerSpec("file", path=arg, text=spec)
    if plugin == "syslog":
        tag, _, facility = arg.partition(",")
        if facility and facility.lower() not in FACILITIES:
            known = ", ".join(FACILITIES)
            raise ValueError(f"unknown syslog facility {facility!r} (one of {known}), in {text!r}")
        code = FACILITIES[facility.lower() or "user"]
        return LoggerSpec("syslog", tag=tag or DEFAULT_TAG, facility=code, text=spec)
    raise ValueError(f"expected {LOGGER_FORMS}, got {text!r}")


def to_log_date(text: str) -> str:
    """A strftime format for the date on binserve's lines; bare or true: the default; false: none."""
    word = text.strip()
    if word == "" or word.lower() in ("1", "true", "yes", "on"):
        return DEFAULT_DATE
    if word.lower() in ("0", "false", "no", "off"):
        return ""
    if "%" not in word:
        raise ValueError(f"expected a strftime format such as {DEFAULT_DATE!r}, true or false, got {text!r}")
    try:
        time.strftime(word)
    except ValueError as exc:
        raise ValueError(f"expected a strftime format ({exc}), got {text!r}") from None
    return word


class Sink:
    """Where one stream of lines goes: a descriptor number this process holds, and how to reopen it."""

    def __init__(self, spec: LoggerSpec, fd: int) -> None:
        self.spec = spec
        self.fd = fd
        self.datagrams = spec.kind == "syslog"  # read for every line: one attribute, not two
        self.head = f"<{spec.facility * 8 + _INFO}>".encode()  # syslog: before the date and the tag
        self.stalled = False  # syslog: the last line found the reader's queue full for _SYSLOG_WAIT

    @property
    def path(self) -> str:
        return self.spec.path

    def write(self, line: str) -> None:
        """Write one line (a trailing newline included) with one ``write``."""
        data = line.encode("utf-8", "backslashreplace")
        if self.datagrams:
            self._send(data)
        else:
            _write_all(self.fd, data)

    def _send(self, data: bytes) -> None:
        stamp = time.strftime("%b %e %H:%M:%S").encode()  # as syslog(3) dates it
        tag = f" {self.spec.tag}[{os.getpid()}]: ".encode()
        datagram = self.head + stamp + tag + data.rstrip(b"\n")
        if self.stalled and not _writable(self.fd):
            return
        try:
            os.write(self.fd, datagram[:_MAX_DATAGRAM])
            self.stalled = False
        except BlockingIOError:
            # The socket's send timeout: the reader took nothing for _SYSLOG_WAIT. Waiting on would
            # hold a request (or the master) for as long as the daemon stays stuck.
            self.stalled = True
        except OSError:
            # Nobody reads /dev/log (the syslog daemon restarts): the line is lost, as with
            # libc's syslog(); a reopen connects again.
            pass

    def open(self) -> int:
        """A new descriptor for this sink (not yet at its number); OSError if it cannot be had."""
        if self.spec.kind == "file":
            return open_append(self.spec.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        seconds = int(_SYSLOG_WAIT)
        wait = struct.pack("ll", seconds, int((_SYSLOG_WAIT - seconds) * 1_000_000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, wait)
        try:
            sock.connect(SYSLOG_PATH)
        except OSError as exc:
            sock.close()
            # Named here: the option's value (syslog:ID) does not say where it connects.
            raise OSError(exc.errno, f"cannot connect to {SYSLOG_PATH}: {exc.strerror}") from None
        return sock.detach()

    def reopen(self) -> str | None:
        """Open again onto the same number; the error in words if it failed (the old one stays)."""
        if self.spec.kind == "stdio":
            return None
        try:
            fd = self.open()
        except OSError as exc:
            return f"{self.spec}: {exc.strerror}"
        # The log's file is also stdout; a descriptor of its own stays close-on-exec.
        for target in (1, 2) if self.fd == 2 else (self.fd,):
            os.dup2(fd, target, inheritable=target <= 2)
        os.close(fd)
        return None


_STDIO = LoggerSpec("stdio", text="stdio")
_log = Sink(_STDIO, 2)
_requests = _log
_date = DEFAULT_DATE


class SinkError(Exception):
    """A log that cannot be opened, named by its option: ``logto /x/app.log: Permission denied``."""


def setup(
    logger: LoggerSpec | None,
    req_logger: LoggerSpec | None,
    date: str = DEFAULT_DATE,
    option: str = "logger",
    fallback: bool = False,
) -> list[str]:
    """Open the sinks; the app's stdout and stderr then write whole lines.

    A file logger becomes fds 1 and 2; a syslog logger and the request logger get descriptors of
    their own. ``option`` names the logger in errors (logto or logger). A sink that cannot be
    opened raises SinkError; with ``fallback`` (a reloaded image), it is returned in words and
    its lines go where the process's stderr goes (a file is tried again at the next reopen).
    """
    global _log, _requests, _date
    _date = date
    problems: list[str] = []
    log_sink = _log = _requests = Sink(_STDIO, 2)
    if logger is not None and logger.kind != "stdio":
        try:
            fd = Sink(logger, 2).open()
        except OSError as exc:
            if not fallback:
                raise SinkError(f"{option} {logger}: {exc.strerror}") from None
            problems.append(f"{option} {logger}: {exc.strerror}")
            log_sink = Sink(logger, 2) if logger.kind == "file" else log_sink
        else:
            if logger.kind == "file":
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.close(fd)
                log_sink = Sink(logger, 2)
            else:
                log_sink = Sink(logger, fd)
    request_sink = log_sink
    if req_logger is not None:
        request_sink = Sink(req_logger, 2)
        if req_logger.kind != "stdio":
            try:
                # close-on-exec: the programs the app runs do not get it
                request_sink = Sink(req_logger, request_sink.open())
            except OSError as exc:
                if not fallback:
                    raise SinkError(f"req-logger {req_logger}: {exc.strerror}") from None
                problems.append(f"req-logger {req_logger}: {exc.strerror}")
                request_sink = log_sink
    _log, _requests = log_sink, request_sink
    line_buffered_stdio()
    return problems


def sinks() -> list[Sink]:
    """The sinks of this process, each once."""
    return [_log] if _requests is _log else [_log, _requests]


def reopen() -> list[str]:
    """Reopen every sink of this process; what failed, in words (those keep their old descriptor)."""
    return [problem for sink in sinks() if (problem := sink.reopen()) is not None]


def files() -> list[Sink]:
    """The sinks that are files (what log-maxsize watches)."""
    return [sink for sink in sinks() if sink.spec.kind == "file"]


def rotate(sink: Sink, backup: str | None) -> str:
    """Rename ``sink``'s file to ``backup`` (default ``PATH.<epoch seconds>``, as uWSGI); the new name.

    Only the rename: the caller reopens every process's sinks, and what they write meanwhile
    goes on in the renamed file.
    """
    target = backup or f"{sink.path}.{int(time.time())}"
    if backup is None:
        n = 0
        while os.path.lexists(target):  # two rotations within a second keep both files
            n += 1
            target = f"{sink.path}.{int(time.time())}.{n}"
    os.rename(sink.path, target)
    return target


def log(message: str) -> None:
    """Write one line, dated as log-date says, tagged with this process's pid."""
    date = f"{time.strftime(_date)} " if _date else ""
    _log.write(f"{date}[binserve pid {os.getpid()}] {message}\n")


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\xNN``): peer data cannot start a log line of its own."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def write_request(line: str) -> None:
    """Write one request line to the request log (req-logger, else the log)."""
    sink = _requests
    if sink.datagrams:
        sink.write(line)
        return
    # Once per request: the usual case, one whole write, without the calls of Sink.write.
    data = line.encode("utf-8", "backslashreplace")
    try:
        written = os.write(sink.fd, data)
    except OSError:
        written = 0
    if written != len(data):
        _write_all(sink.fd, data[written:])


def _writable(fd: int) -> bool:
    """Whether a datagram can be queued now (a connected unix socket: the reader's queue has room)."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return bool(poller.poll(0))


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            written = os.write(fd, data)
        except InterruptedError:
            continue
        except OSError:
            # The log is gone (a closed terminal, a full disk); there is nowhere left to report it.
            return
        data = data[written:]


class LineWriter(io.TextIOBase):
    """The app's ``sys.stdout`` / ``sys.stderr``: each thread's text is written once its line is whole.

    One ``write`` per batch of whole lines: appends to a file do not interleave, and neither do
    writes to a pipe of up to PIPE_BUF (4096) bytes. A partial line waits for its newline, a
    ``flush``, or 1 MiB. ``buffer`` takes bytes the same way.
    """

    def __init__(self, fd: int, errors: str) -> None:
        super().__init__()
        self._fd = fd
        self._errors = errors
        self._pending = threading.local()
        self.buffer = _LineBytes(self)

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return self._errors

    @property
    def line_buffering(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:  # type: ignore[override]
        if not isinstance(text, str):  # as sys.stdout refuses bytes: they belong in .buffer
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self.write_bytes(text.encode("utf-8", self._errors))
        return len(text)

    def write_bytes(self, data: bytes) -> None:
        pending: _Pending | None = getattr(self._pending, "data", None)
        if pending is None:
            pending = self._pending.data = _Pending(self._fd)
        pending += data
        end = pending.rfind(b"\n") + 1
        if end == 0 and len(pending) < _MAX_PENDING:
            return
        end = end or len(pending)
        out = bytes(pending[:end])
        del pending[:end]
        _write_all(self._fd, out)

    def flush(self) -> None:
        pending: _Pending | None = getattr(self._pending, "data", None)
        if pending:
            out = bytes(pending)
            pending.clear()
            _write_all(self._fd, out)


class _Pending(bytearray):
    """A thread's unfinished line: written when the thread ends, as a shared buffer would have been."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def __del__(self) -> None:
        if self:
            _write_all(self.fd, bytes(self))


class _LineBytes(io.RawIOBase):
    """``sys.stdout.buffer``: bytes, into the same per-thread lines."""

    def __init__(self, text: LineWriter) -> None:
        super().__init__()
        self._text = text

    def fileno(self) -> int:
        return self._text.fileno()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._text.write_bytes(bytes(data))
        return len(data)

    def flush(self) -> None:
        self._text.flush()


def line_buffered_stdio() -> None:
    """Make ``sys.stdout`` and ``sys.stderr`` write whole lines (those Python made are flushed first)."""
    for name, fd, errors in (("stdout", 1, "strict"), ("stderr", 2, "backslashreplace")):
        current = getattr(sys, name)
        if isinstance(current, LineWriter):
            continue
        if current is not None:
            try:
                current.flush()
            except (OSError, ValueError):
                pass
        setattr(sys, name, LineWriter(fd, errors))

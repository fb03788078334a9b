"""Log lines: one ``write`` to stderr each, so lines from the master and workers never interleave.

``logto`` makes stderr the log file (opened with O_APPEND), so every process appends whole
lines to the same file without a lock. The file is opened as safefile opens any file a user
may influence: a symlink, a hard link or a FIFO planted at its name is refused.
"""

from __future__ import annotations

import os
import time

from .safefile import open_append


def log(message: str) -> None:
    """Write one timestamped line, tagged with this process's pid."""
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} [binserve pid {os.getpid()}] {message}\n"
    write_line(line)


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\xNN``): peer data cannot start a log line of its own."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def write_line(line: str) -> None:
    """Write an already formatted line to stderr in one call (bytes that do not encode are escaped)."""
    data = line.encode("utf-8", "backslashreplace")
    while data:
        try:
            written = os.write(2, data)
        except InterruptedError:
            continue
        except OSError:
            # stderr is gone (closed terminal); there is nowhere left to report it.
            return
        data = data[written:]


def write_request(line: str) -> None:
    """Write one request line where request lines go (today: with everything else, on stderr)."""
    write_line(line)


def redirect_to(path: str) -> None:
    """Point stdout and stderr (fds 1 and 2) at ``path``, appending, as uWSGI's logto does."""
    fd = open_append(path, 0o640)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)

"""Reading a vassal's stats address from its file, in a child that may crash or hang.

The emperor reports each vassal's stats address, which only executing the vassal file tells
(its includes, ``@(file)``, ``%(math)``). That file is its user's input: a forked child reads
it, bounded in time, memory and output, and the emperor kills the child past its deadline.
A tyrant never reads one, as that would expand a user's ``@(file)`` and ``$(ENV)`` as root.
"""

from __future__ import annotations

import os
import resource
import signal
from dataclasses import dataclass
from typing import NoReturn

from ..config import ConfigError, load
from ..sockets import absolute
from .plan import Vassal
from .spawn import die_with_parent

PROBE_SECONDS = 2.0
PROBE_MEMORY = 256 << 20  # beyond the emperor's own address space, which the child starts with
PROBE_OUTPUT = 4096


@dataclass
class Probe:
    """A child reading a vassal file's stats address; it answers on ``pipe`` before ``deadline``."""

    vassal: Vassal
    digest: str
    pid: int
    pipe: int
    deadline: float
    output: bytes = b""


def probe_child(path: str, cwd: str, pipe: int) -> NoReturn:
    """In a forked child: write ``+ADDRESS`` or ``-WHY`` to ``pipe`` and exit, within the bounds."""
    try:
        # The fork gave this child default signal dispositions and no wakeup pipe (signals.py).
        die_with_parent()
        signal.alarm(int(PROBE_SECONDS) + 1)  # in case the emperor is gone before it kills us
        with open("/proc/self/statm") as statm:
            size = int(statm.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (size + PROBE_MEMORY, size + PROBE_MEMORY))
        answer = "+" + (_stats_address(path, cwd) or "")
    except BaseException as exc:  # whatever the file does to the reader is only a failed read
        answer = f"-{type(exc).__name__}: {exc}"
    try:
        os.write(pipe, answer.encode(errors="replace")[:PROBE_OUTPUT])
    finally:
        os._exit(0)


def _stats_address(path: str, cwd: str) -> str | None:
    """The stats address a binserve vassal file names (relative ones from ``cwd``), if any."""
    try:
        config = load(["--ini", path], {})
    except ConfigError:
        return None  # not a binserve file (a uWSGI vassal's, say): no address to offer
    return absolute(config.stats, cwd) if config.stats else None


def reaped(pid: int, options: int) -> bool:
    """Wait for a child of ours; whether it is gone (reaped now or before)."""
    try:
        return os.waitpid(pid, options)[0] != 0
    except ChildProcessError:
        return True

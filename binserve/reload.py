"""The master's graceful reload, across two images of the program: probe, re-execute, adopt.

A reload first runs a probe of the new image (the same command line, loading the config and
the app, binding nothing): what it cannot read or import, the new image could not either, and
the reload is refused while the workers serve on. Otherwise the master re-executes itself with
the listening sockets inherited, so the new code is loaded fresh while the old workers finish
their requests; connections that arrive meanwhile wait in the listen backlog. The old image
hands the new one its workers' pids, with their SIGKILL deadlines, and the write end of their
life pipe in the environment:
the new master adopts them as retiring, closes the pipe (they finish their requests and
exit), and reaps them. A new image that cannot start lets them finish before it exits.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from collections.abc import Iterable
from typing import NoReturn

from . import signals
from .log import log
from .signals import kill_quietly
from .sockets import Listener, hand_over
from .stats import STATS_INHERIT_ENV
from .vassal_link import EMPEROR_FD_ENV

RETIRING_ENV = "_BINSERVE_RETIRING"
PROBE_ENV = "_BINSERVE_PROBE"  # the command line loads the config and the app, then exits
# The probe's exit code for "it loads". Not 0: an app calling os._exit(0) as it is imported ends
# the probe with 0 too, and the image re-executed on that word would end the same way, silently.
PROBE_LOADED = 10


def start_probe(cwd: str, emperor_fd: int | None) -> int:
    """Fork the probe of the new image; its pid. Raises OSError when it cannot be forked.

    The same command line as the re-execution, from the same directory, as the same user.
    Its stderr is the master's log, where it says why it failed.
    """
    argv = [sys.executable, *sys.orig_argv[1:]]
    # Not the emperor's channel: what the probe's app does at import must not reach it.
    env = {key: value for key, value in os.environ.items() if key != EMPEROR_FD_ENV}
    env[PROBE_ENV] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    master = os.getpid()
    pid = os.fork()  # the child gets the default signal dispositions back (signals.py)
    if pid == 0:
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
    return pid


def reexec(
    wake: signals.WakePipe,
    pending: Iterable[int],
    listeners: list[Listener],
    stats: Listener | None,
    life_w: int,
    workers: Iterable[tuple[int, float]],
    cwd: str,
) -> NoReturn:
    """Replace this process with a fresh binserve that inherits the sockets and the ``workers``.

    ``pending``: signals taken from ``wake`` and not handled yet. ``workers``: each
    worker's pid and its SIGKILL deadline (``math.inf`` for none yet).
    """
    signals.block(signals.MASTER)
    # Signals already recorded would die with this image: make them pending in the kernel
    # again (blocked, so they wait for the new image's handlers).
    for signum in {*pending, *wake.take()} - {signal.SIGCHLD}:
        signal.raise_signal(signum)
    hand_over(listeners)
    hand_over([stats] if stats else [], STATS_INHERIT_ENV)
    os.set_inheritable(life_w, True)
    # Workers of an earlier image still finishing are handed on too, with their deadline, so
    # the next image reaps them and reloads in a row cannot keep one alive past its mercy.
    os.environ[RETIRING_ENV] = retiring_spec(life_w, workers)
    os.chdir(cwd)
    sys.stdout.flush()
    sys.stderr.flush()
    signal.set_wakeup_fd(-1)
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def retiring_spec(life_w: int, workers: Iterable[tuple[int, float]]) -> str:
    """``FD:PID@DEADLINE,...``: the life pipe and each worker's SIGKILL deadline on the monotonic
    clock, which is the system's and the same after exec (``inf``: none yet)."""
    return f"{life_w}:{','.join(f'{pid}@{kill_by!r}' for pid, kill_by in workers)}"


def parse_retiring(spec: str) -> tuple[int, dict[int, float]]:
    """What :func:`retiring_spec` wrote; a bare PID (as an image before deadlines wrote) has none."""
    fd, _, workers = spec.partition(":")
    handed: dict[int, float] = {}
    for worker in filter(None, workers.split(",")):
        pid, _, kill_by = worker.partition("@")
        handed[int(pid)] = float(kill_by) if kill_by else math.inf
    return int(fd), handed


def previous_image() -> tuple[int, dict[int, float]] | None:
    """The life pipe and the workers (pid -> SIGKILL deadline) a reloading image handed over,
    if this is a reload."""
    spec = os.environ.pop(RETIRING_ENV, "")
    return parse_retiring(spec) if spec else None


def abandon_reload(mercy: float) -> None:
    """After a reload whose new image cannot load the app: stop the old workers gracefully.

    They finish the requests they hold (up to ``mercy`` seconds); the caller then exits, and
    the sockets and pidfile are removed as on any stop.
    """
    previous = previous_image()
    if not previous:
        return
    pipe, handed = previous
    os.close(pipe)
    for pid in handed:
        kill_quietly(pid, signal.SIGTERM)
    # Each keeps the deadline it came with, if that is sooner than the mercy from now.
    deadline = time.monotonic() + mercy
    retiring = {pid: min(kill_by, deadline) for pid, kill_by in handed.items()}
    while retiring:
        now = time.monotonic()
        for pid in [pid for pid, kill_by in retiring.items() if kill_by <= now]:
            kill_quietly(pid, signal.SIGKILL)
            del retiring[pid]
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid:
            retiring.pop(pid, None)
        elif retiring:
            time.sleep(0.05)

"""A flood of signals loses none that matters: the wakeup pipe only wakes the loop.

Tens of thousands of signals (SIGUSR2 and SIGWINCH, and real-time ones, which the kernel queues
instead of merging) fill the pipe that ``signal.set_wakeup_fd`` writes to faster than the loop
reads it; the pipe then drops bytes, and a SIGTERM whose byte was dropped used to be lost (the
master served on and never stopped). Each caught signal is recorded apart from the pipe now,
so a SIGTERM sent in the middle of the flood stops the master (and the emperor) cleanly.
(Tried on the previous handling, the master never stopped.)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from binserve import signals
from binserve.master import Master
from binserve.testing import EmperorProcess, Serve, run_binserve

from support import APPS, REPO, AppFile

APP = (APPS / "pid_app.py").read_text()


def flood_then_stop(proc: subprocess.Popen[bytes]) -> int | None:
    """Real-time signals, with SIGUSR2 and SIGWINCH among them, as fast as they go for a second,
    SIGTERM in the middle of them; the exit code (None: still running 20 s after the SIGTERM).

    Under such a flood the process does little but take signals; its loop runs once the flood
    is over, and must find the SIGTERM then. The kernel's queue of real-time signals is the
    user's: for that second, another process of the same user may fail to queue one.
    """
    done = threading.Event()

    def flood() -> None:
        n = 0
        while not done.is_set():
            n += 1
            try:
                os.kill(proc.pid, signal.SIGRTMIN)
                if n % 10 == 0:
                    os.kill(proc.pid, signal.SIGUSR2)
                    os.kill(proc.pid, signal.SIGWINCH)
            except ProcessLookupError:
                return
            except BlockingIOError:  # the kernel's queue of real-time signals is full
                continue

    flooding = threading.Thread(target=flood)
    flooding.start()
    try:
        done.wait(1.0)
        os.kill(proc.pid, signal.SIGTERM)
        done.wait(0.2)  # the flood goes on after it
        done.set()
        flooding.join(5)
        try:
            return proc.wait(20)
        except subprocess.TimeoutExpired:
            return None
    finally:
        done.set()
        flooding.join(5)


def test_a_master_flooded_with_signals_still_stops_on_sigterm(serve: Serve, app_file: AppFile) -> None:
    server = serve("--wsgi-file", str(app_file(APP)), "--processes", "2")
    server.wait_workers(2)
    assert flood_then_stop(server.proc) == 0, server.log()[-3000:]
    log = server.log()
    # Thousands of one kind, taken together: logged once per batch, with the batch's count.
    assert re.search(r"SIGRTMIN received: no effect \(\d+ times\)", log), log[-3000:]
    assert "SIGTERM: graceful stop" in log and "master stopped" in log
    assert "SIGWINCH" not in log


@pytest.mark.process
def test_an_emperor_flooded_with_signals_still_stops_on_sigterm(
    one_vassal: tuple[EmperorProcess, Path],
) -> None:
    emperor, _ = one_vassal
    assert flood_then_stop(emperor.proc) == 0, emperor.log()[-3000:]
    assert "emperor: SIGRTMIN received: no effect" in emperor.log()
    assert "emperor stopped: every vassal has exited" in emperor.log()


def test_signals_of_one_kind_taken_together_are_logged_once_with_their_count() -> None:
    assert signals.received(signals.MASTER, signal.SIGUSR2, 3) == "SIGUSR2 received: no effect (3 times)"
    assert signals.received(signals.MASTER, signal.SIGUSR2) == "SIGUSR2 received: no effect"


def test_the_readme_signal_table_is_generated_from_the_tables() -> None:
    readme = (REPO / "README.md").read_text()
    start = readme.index("<!-- signals-table:start -->\n") + len("<!-- signals-table:start -->\n")
    end = readme.index("<!-- signals-table:end -->")
    assert readme[start:end].strip() == signals.signals_table().strip(), "regenerate: binserve --help-signals"


def test_the_signal_table_has_one_row_per_meaning_and_every_signal_once() -> None:
    rows = signals.signals_table().splitlines()[2:]
    assert len({row.split(" | ", 1)[1] for row in rows}) == len(rows)
    for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGUSR2, signal.SIGALRM, signal.SIGTTIN):
        assert sum(f" {signals.name(signum)}," in row.split(" | ")[0] + "," for row in rows) == 1, signum
    assert "| SIGPIPE, SIGALRM, SIGWINCH | ignored | ignored | ignored |" in rows


@pytest.mark.process
def test_binserve_help_signals_prints_the_table() -> None:
    result = run_binserve("--help-signals")
    assert result.returncode == 0 and result.stdout.strip() == signals.signals_table()


def test_every_signal_the_master_acts_on_has_its_handler() -> None:
    # The loop looks the handler up by name: a meaning without one would end the master.
    acted_on = [signum for signum in signals.MASTER if signals.has_effect(signals.MASTER, signum)]
    assert signal.SIGHUP in acted_on and signal.SIGALRM not in acted_on
    missing = [
        signals.name(signum)
        for signum in acted_on
        if not callable(getattr(Master, f"handle_{signals.name(signum)[3:].lower()}", None))
    ]
    assert not missing

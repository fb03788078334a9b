"""Every signal an operator may send to a master, a worker or an emperor, with real processes.

A signal without a meaning is logged and changes nothing; ignored ones change nothing either;
afterwards the process still serves and SIGTERM still stops it cleanly. Processes the app
forks do not inherit the worker's signal handling, and signals that come while the app is
imported at startup are neither lost nor fatal.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from binserve import signals
from binserve.testing import (
    EmperorProcess,
    Serve,
    Server,
    alive,
    ping,
    read_response,
    request_packet,
    send,
    wait_for,
)

from support import APPS, AppFile, get, stop_cleanly

SLOW = (APPS / "attack_runtime_slow.py").read_text()

LOGGED = [
    signal.SIGUSR2,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGPWR,
    signal.SIGRTMIN,
]
MASTER_LOGGED = [
    s for s in LOGGED if s not in (signal.SIGTTIN, signal.SIGTTOU)
]  # its are tests/workers/test_cheaper.py's
IGNORED = [signal.SIGWINCH, signal.SIGPIPE, signal.SIGALRM]

APP = (APPS / "pid_app.py").read_text()

SLOW_IMPORT_APP = (
    """
import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))
open(os.path.join(HERE, "importing"), "w").close()
while not os.path.exists(os.path.join(HERE, "go-on")):
    time.sleep(0.02)
"""
    + APP
)

FORKING_APP = (APPS / "signals_forking.py").read_text()


def fetch(sock: Path, path: str) -> str:
    """The body of a GET, read up to its Content-Length: a child the app forked keeps the
    connection open, so the end of the answer cannot be its close."""
    with send(sock, request_packet(path)) as conn:
        reply = read_response(conn)
    assert reply.header("Content-Length") == str(len(reply.body)), f"closed after {reply}"
    assert reply.status == 200, reply.status_line
    return reply.text


def send_each(
    pid: int,
    log: Callable[[], str],
    line: Callable[[int], str],
    serves: Callable[[], bool],
    logged: list[int] = LOGGED,
) -> None:
    """Send every operator signal to ``pid``: each logged one leaves ``line(signum)`` in the log,
    and the process serves after every one.

    An ignored signal leaves no trace of its own: SIGRTMIN follows it, and its line shows the
    process lived through the first (a pending real-time signal is delivered after the others).
    """
    for signum in [*logged, *IGNORED]:
        marker = signum if signum in logged else signal.SIGRTMIN
        expected = line(marker)
        before = log().count(expected)
        os.kill(pid, signum)
        if marker != signum:
            os.kill(pid, marker)
        wait_for(lambda: log().count(expected) > before, 10, f"{expected!r} in the log")  # noqa: B023
        assert serves(), f"not serving after {signals.name(signum)}:\n{log()}"
    for signum in IGNORED:
        assert f"{signals.name(signum)} received" not in log()


def test_the_table_covers_every_signal_that_would_end_or_stop_a_process() -> None:
    for table in (signals.MASTER, signals.WORKER, signals.EMPEROR):
        more = (signal.SIGVTALRM, signal.SIGPROF, signal.SIGIO, signal.SIGXCPU, signal.SIGXFSZ)
        for signum in (*(MASTER_LOGGED if table is signals.MASTER else LOGGED), *more):
            assert table[signum] == signals.NO_EFFECT
        for signum in IGNORED:
            assert table[signum] == signals.IGNORED
        assert set(range(signal.SIGRTMIN, signal.SIGRTMAX + 1)) <= set(table)
        for fault in (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT):
            assert fault not in table
        assert signals.has_effect(table, signal.SIGHUP) and signals.has_effect(table, signal.SIGTERM)
    assert signals.received(signals.MASTER, signal.SIGRTMIN + 2) == "SIGRTMIN+2 received: no effect"


def test_a_master_logs_signals_without_a_meaning_and_serves_on(serve: Serve, app_file: AppFile) -> None:
    server = serve("--wsgi-file", str(app_file(APP)))
    wait_for(lambda: len(server.worker_pids()) == 1, 10, "the worker")
    workers = server.worker_pids()

    def serves() -> bool:
        return server.proc.poll() is None and ping(server.socket)

    line = lambda signum: f"{signals.name(signum)} received: no effect"  # noqa: E731
    send_each(server.pid, server.log, line, serves, MASTER_LOGGED)
    assert server.worker_pids() == workers
    stop_cleanly(server)
    assert not server.socket.exists()


def stop_under_a_flood(proc: subprocess.Popen[bytes], log: Callable[[], str], line: str) -> int | None:
    """SIGUSR2 sent to ``proc`` again and again (its log shows ``line`` for it), then SIGTERM: the
    exit status, with the flood going on until the process is gone."""
    done = threading.Event()

    def flood() -> None:
        while not done.is_set():
            try:
                os.kill(proc.pid, signal.SIGUSR2)
            except ProcessLookupError:
                return
            done.wait(0.0005)

    flooding = threading.Thread(target=flood)
    flooding.start()
    try:
        wait_for(lambda: line in log(), 10, "the first SIGUSR2 in the log")
        os.kill(proc.pid, signal.SIGTERM)
        return proc.wait(15)
    finally:
        done.set()
        flooding.join(5)


def test_sigalrm_is_dropped_by_the_master_not_handled(serve: Serve, app_file: AppFile) -> None:
    """Its handler drops it, but the wakeup fd still writes its byte: that byte is no signal to act on."""
    server = serve("--wsgi-file", str(app_file(APP)))
    for _ in range(20):
        os.kill(server.pid, signal.SIGALRM)
    os.kill(server.pid, signal.SIGRTMIN)  # delivered after them, handled in the same loop step
    server.wait_log("SIGRTMIN received: no effect")
    stop_cleanly(server)
    assert "Traceback" not in server.log() and "SIGALRM" not in server.log(), server.log()


def test_a_signal_without_a_meaning_during_the_stop_leaves_the_master_s_exit_code_0(
    serve: Serve, app_file: AppFile
) -> None:
    """The interpreter's shutdown restores default actions: a late SIGUSR2 used to end a master that
    had stopped cleanly killed by it."""
    server = serve("--wsgi-file", str(app_file(APP)))
    server.wait_workers(1)
    code = stop_under_a_flood(server.proc, server.log, "SIGUSR2 received: no effect")
    assert code == 0, server.log()[-2000:]
    assert "master stopped" in server.log()


def serve_importing(serve: Serve, app: Path) -> Server:
    """binserve started on ``app``, its master still in the app's import (which the app marks)."""
    server = serve("--wsgi-file", str(app), ready=False)
    wait_for((app.parent / "importing").exists, 15, "the app's import to start")
    return server


def test_a_signal_without_a_meaning_during_the_first_start_is_logged_once_the_master_runs(
    serve: Serve, app_file: AppFile, tmp_path: Path
) -> None:
    server = serve_importing(serve, app_file(SLOW_IMPORT_APP))
    os.kill(server.pid, signal.SIGUSR2)
    os.kill(server.pid, signal.SIGRTMIN)
    (tmp_path / "go-on").touch()
    server.wait_ready()
    wait_for(lambda: "SIGRTMIN received: no effect" in server.log(), 10, "the held signals in the log")
    stop_cleanly(server)
    # Each once, and nothing else: the byte that wakes the master for them is not a signal of its own.
    assert sorted(re.findall(r"\] (.+?) received: ", server.log())) == ["SIGRTMIN", "SIGUSR2"], server.log()


def test_a_worker_logs_signals_without_a_meaning_and_serves_on(serve: Serve, app_file: AppFile) -> None:
    server = serve("--wsgi-file", str(app_file(APP)))
    wait_for(lambda: len(server.worker_pids()) == 1, 10, "the worker")
    (worker,) = server.worker_pids()

    def serves() -> bool:
        return get(server.socket) == (200, str(worker))

    line = lambda signum: f"worker 1 (pid {worker}): {signals.name(signum)} received: no effect"  # noqa: E731
    send_each(worker, server.log, line, serves)
    assert server.worker_pids() == {worker}
    stop_cleanly(server)


@pytest.mark.process
def test_an_emperor_logs_signals_without_a_meaning_and_its_vassals_serve_on(
    one_vassal: tuple[EmperorProcess, Path],
) -> None:
    emperor, sock = one_vassal
    wait_for(lambda: emperor.master("one") is not None, 10, "the vassal in the state file")
    master = emperor.master("one")

    def serves() -> bool:
        emperor.check_running()
        return ping(sock)

    line = lambda signum: f"emperor: {signals.name(signum)} received: no effect"  # noqa: E731
    send_each(emperor.pid, emperor.log, line, serves)
    assert emperor.master("one") == master
    os.kill(emperor.pid, signal.SIGTERM)
    assert emperor.proc.wait(15) == 0, emperor.log()
    assert "emperor stopped: every vassal has exited" in emperor.log()


@pytest.mark.process
def test_a_signal_without_a_meaning_during_the_stop_leaves_the_emperor_s_exit_code_0(
    one_vassal: tuple[EmperorProcess, Path],
) -> None:
    emperor, _ = one_vassal
    line = "emperor: SIGUSR2 received: no effect"
    assert stop_under_a_flood(emperor.proc, emperor.log, line) == 0, emperor.log()[-2000:]
    assert "emperor stopped: every vassal has exited" in emperor.log()


@pytest.mark.parametrize("when", ["in a request", "at a lazy app's import"])
def test_a_process_the_app_forks_dies_of_sigterm_and_the_worker_serves_on(
    serve: Serve, app_file: AppFile, when: str
) -> None:
    app = str(app_file(FORKING_APP))
    if when == "in a request":
        server = serve("--wsgi-file", app)
        worker = int(fetch(server.socket, "/start").split()[0])
    else:  # forked by the worker before it installs its own signal table
        server = serve("--wsgi-file", app, "--lazy-apps", "--env", "FORK_AT_IMPORT=1")
        wait_for(lambda: len(server.worker_pids()) == 1, 10, "the worker")
        (worker,) = server.worker_pids()
    assert fetch(server.socket, "/terminate") == f"{worker} {-signal.SIGTERM}", server.log()
    assert server.worker_pids() == {worker}
    assert fetch(server.socket, "/start").split()[0] == str(worker)
    os.kill(worker, 0)  # still there: it was not told to stop by its child's signal
    assert "recycl" not in server.log() and "exited" not in server.log()
    # A worker's graceful exit runs Python's atexit handlers, and multiprocessing's waits for
    # the children still running, as any Python program's exit does.
    fetch(server.socket, "/terminate")
    stop_cleanly(server)


RACE = """
import os, signal, time
from binserve import signals

wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
signals.install(signals.WORKER, wake_w)
signals.unblock(signals.WORKER)
for _ in range(20):
    pid = os.fork()
    if pid == 0:
        time.sleep(5)
        os._exit(0)
    os.kill(pid, signal.SIGTERM)  # most often before the child has run a single instruction
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == -signal.SIGTERM, status
try:
    print("woken by", list(os.read(wake_r, 64)))
except BlockingIOError:
    print("the worker's wakeup pipe is empty")
"""


@pytest.mark.process
def test_a_sigterm_sent_right_after_the_app_forks_reaches_the_child_not_the_worker() -> None:
    """The window between fork and the child's reset: the signal waits, then takes its default action."""
    done = subprocess.run([sys.executable, "-c", RACE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "the worker's wakeup pipe is empty"


HELPER_AT_IMPORT_APP = (
    """
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
with open(os.path.join(HERE, f"helper-of-{os.getpid()}"), "w") as out:
    out.write(str(helper.pid))
"""
    + APP
)


@pytest.mark.parametrize(
    ("when", "signum"), [("first start", signal.SIGUSR1), ("after a reload", signal.SIGTERM)]
)
def test_a_process_the_app_starts_at_import_gets_its_signals(
    serve: Serve, app_file: AppFile, tmp_path: Path, when: str, signum: int
) -> None:
    """Signals held for the master while the app is imported (those without a meaning; after a
    reload the master's own too) are not held in the processes the app starts meanwhile."""
    server = serve("--wsgi-file", str(app_file(HELPER_AT_IMPORT_APP)))
    pid_file = tmp_path / f"helper-of-{server.pid}"  # the master keeps its pid across a reload
    first = int(pid_file.read_text())
    try:
        if when == "after a reload":
            os.kill(server.pid, signal.SIGHUP)
            wait_for(lambda: pid_file.read_text() not in ("", str(first)), 15, "the new image's helper")
        helper = int(pid_file.read_text())
        os.kill(helper, signum)
        wait_for(lambda: not alive(helper), 5, f"the helper to die of {signals.name(signum)}")
    finally:
        for path in tmp_path.glob("helper-of-*"):
            if alive(int(path.read_text())):
                os.kill(int(path.read_text()), signal.SIGKILL)
    stop_cleanly(server)


def test_sighup_while_the_app_is_imported_at_startup_does_not_kill_the_master(
    serve: Serve, app_file: AppFile
) -> None:
    """SIGHUP has a meaning: sent while the master still imports the app, it must not end it silently."""
    server = serve_importing(serve, app_file(SLOW))
    os.kill(server.pid, signal.SIGHUP)
    server.wait_ready()
    assert get(server.socket)[0] == 200
    stop_cleanly(server)


def test_sigterm_while_the_app_is_imported_at_startup_is_logged_and_cleans_up(
    serve: Serve, app_file: AppFile
) -> None:
    server = serve_importing(serve, app_file(SLOW))
    stop_cleanly(server)
    assert "SIGTERM received while the app was being imported: stopped" in server.log(), server.log()
    assert not server.socket.exists()


HELPER_PID = (APPS / "attack_runtime_helper_pid.py").read_text()


def test_a_helper_the_app_forks_at_import_blocks_no_signal(
    serve: Serve, app_file: AppFile, tmp_path: Path
) -> None:
    """Signals binserve holds while it starts are not held in a helper the app forks meanwhile."""
    app = app_file(HELPER_PID)
    serve("--wsgi-file", str(app))
    helper = tmp_path / "helper"
    wait_for(helper.exists, 10, "the helper")
    status = Path(f"/proc/{helper.read_text()}/status").read_text()
    blocked = next(line for line in status.splitlines() if line.startswith("SigBlk:"))
    assert int(blocked.split()[1], 16) == 0, blocked


MASKING_APP = """
import os, signal, time

def application(environ, start_response):
    # A C call that goes on after EINTR, as some do, seen from Python: while the request runs,
    # the main thread takes no SIGUSR2 and runs no handler for it. It runs until the file named
    # by the query appears (30 s at most).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    print("SIGUSR2 masked", flush=True)
    try:
        until = time.monotonic() + 30
        while not os.path.exists(environ["QUERY_STRING"]) and time.monotonic() < until:
            time.sleep(0.05)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done"]
"""


def test_a_one_thread_worker_in_a_request_takes_a_signal_its_main_thread_cannot(
    serve: Serve, app_file: AppFile, pool: ThreadPoolExecutor, tmp_path: Path
) -> None:
    # Its signals are read by the thread that watches the master's pipe: the kernel delivers the
    # signal there, whose wakeup byte must say which signal came, since the handler that records
    # it runs only in the main thread, once the request is over.
    server = serve("--wsgi-file", str(app_file(MASKING_APP)))
    (worker,) = server.wait_workers(1)
    end = tmp_path / "end-the-request"
    slow = pool.submit(get, server.socket, "/", str(end))
    line = f"worker 1 (pid {worker}): SIGUSR2 received: no effect"
    wait_for(lambda: "SIGUSR2 masked" in server.log(), 10, "the request to mask SIGUSR2")
    os.kill(worker, signal.SIGUSR2)
    wait_for(lambda: line in server.log(), 15, "SIGUSR2 logged during the request")
    assert not slow.done()
    end.touch()
    assert slow.result(10) == (200, "done")
    assert server.log().count(line) == 1  # not once more when the main thread's handler runs
    stop_cleanly(server)

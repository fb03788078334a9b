"""Harakiri with real processes: a request past its deadline is killed and named in one line,
the worker respawns, and with threads the other requests get harakiri-graceful-timeout to finish.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from binserve.testing import Serve, connect, exchange, read_all, request_packet, wait_for

from support import APPS, AppFile, BehindNginx, get, log_lines

SLEEP_APP = (APPS / "supervision_app.py").read_text()


def test_harakiri_kills_a_request_past_its_deadline_and_names_it(behind_nginx: BehindNginx) -> None:
    server, front = behind_nginx(SLEEP_APP, "--processes", "2", "--harakiri", "2")
    before = server.worker_pids()
    with ThreadPoolExecutor(8) as pool:
        started = time.monotonic()
        slow = pool.submit(front.request, "GET", "/sleep?10")
        quick = [pool.submit(front.request, "GET", "/") for _ in range(40)]
        status, _, _ = slow.result(15)
        took = time.monotonic() - started
    assert status == 502 and took < 4.0, (status, took)
    assert all(q.result()[0] == 200 for q in quick)
    log = server.log()
    assert re.search(r"HARAKIRI worker \d \(pid \d+\): GET /sleep\?10 running since", log), log
    wait_for(lambda: len(server.worker_pids()) == 2 and server.worker_pids() != before, 5, "the respawn")
    assert front.request("GET", "/")[0] == 200


FAULTS_APP = (APPS / "request_faults_app.py").read_text()


@pytest.fixture
def app(app_file: AppFile) -> Path:
    return app_file(FAULTS_APP)


def test_harakiri_with_threads_warns_once_at_startup(serve: Serve, app: Path) -> None:
    server = serve("--wsgi-file", str(app), "--harakiri", "30", "--threads", "2", "--processes", "2")
    server.wait_workers(2)
    assert get(server.socket, "/")[0] == 200
    wait_for(lambda: bool(log_lines(server, "harakiri-graceful-timeout")), 5, "the warning")
    lines = log_lines(server, "harakiri-graceful-timeout")
    assert len(lines) == 1, lines
    assert "with threads 2" in lines[0] and "processes instead of threads" in lines[0], lines


def test_no_harakiri_warning_without_threads(serve: Serve, app: Path) -> None:
    server = serve("--wsgi-file", str(app), "--harakiri", "30")
    server.wait_workers(1)
    assert get(server.socket, "/")[0] == 200
    assert not log_lines(server, "harakiri-graceful-timeout")


THREADED_HARAKIRI_APP = (APPS / "request_faults_threaded_harakiri.py").read_text()


@pytest.mark.parametrize(
    ("grace", "short_answered"), [("2.5", True), ("0", False)], ids=["graceful", "at-once"]
)
def test_harakiri_graceful_timeout_lets_the_other_threads_finish(
    serve: Serve, app_file: AppFile, grace: str, short_answered: bool
) -> None:
    """What the README tells users of harakiri with threads to do, and why."""
    server = serve(
        "--wsgi-file",
        str(app_file(THREADED_HARAKIRI_APP)),
        "--threads",
        "2",
        "--harakiri",
        "1",
        "--harakiri-graceful-timeout",
        grace,
    )
    first = server.wait_workers(1)
    stuck = connect(server.socket)
    stuck.sendall(request_packet("/stuck"))
    time.sleep(0.3)  # the stuck request first: it is the one past harakiri
    short = connect(server.socket)
    short.sendall(request_packet("/short"))
    answer = read_all(short)
    wait_for(lambda: bool(log_lines(server, "HARAKIRI")), 10, "the harakiri")
    if short_answered:
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"done"), answer
    else:
        assert answer == b"", answer
    wait_for(lambda: not server.worker_pids() & first, 10, "the stuck worker killed past its grace")
    # Where the request was stuck is logged before the SIGTERM of the grace, as before a SIGKILL.
    log = server.log()
    (pid,) = first
    block = stack_block(log, pid)
    assert frames(block)[-1].endswith("in application") and "time.sleep(30" in block[-1], log
    stuck.close()
    short.close()


HANG = (APPS / "attack_runtime_hang.py").read_text()


def test_a_harakiri_line_escapes_the_control_characters_of_the_request_uri(
    serve: Serve, app_file: AppFile
) -> None:
    """The master names the killed request: a URI with CR LF must not start a forged log line there."""
    server = serve("--wsgi-file", str(app_file(HANG)), "--harakiri", "1")
    forged = "/x\r\n2026-01-01 00:00:00 [binserve pid 1] FORGED"
    exchange(server.socket, request_packet(forged, REQUEST_URI=forged), timeout=10)
    wait_for(lambda: "HARAKIRI" in server.log(), 10, "the harakiri line")
    assert "\n2026-01-01" not in server.log(), server.log()
    assert "/x\\x0d\\x0a2026-01-01" in server.log(), server.log()


STACKS_APP = (APPS / "harakiri_stacks.py").read_text()


def stuck_pid(log: str, request: str) -> int:
    """The pid of the worker the HARAKIRI line names for ``request``."""
    found = re.search(rf"HARAKIRI worker \d+ \(pid (\d+)\): {re.escape(request)} running since", log)
    assert found, log
    return int(found.group(1))


def stack_block(log: str, pid: int) -> list[str]:
    """The log entry saying where worker ``pid``'s request was stuck: its first line and those under it."""
    lines = log.splitlines()
    for n, line in enumerate(lines):
        if f"(pid {pid}): the request was stuck in thread 0x" in line:
            block = [line]
            for more in lines[n + 1 :]:
                if (
                    not more.startswith("  ")
                    and not more.startswith("thread 0x")
                    and not more.startswith("--")
                ):
                    break
                block.append(more)
            return block
    raise AssertionError(f"no stack for pid {pid} in:\n{log}")


def frames(block: list[str]) -> list[str]:
    """The ``File "...", line N, in FUNCTION`` lines of the stuck thread, most recent call last."""
    own = []
    for line in block[1:]:
        if line.startswith("thread 0x"):  # harakiri-verbose: the other threads follow
            break
        if line.startswith('  File "'):
            own.append(line)
    return own


def test_harakiri_logs_where_a_request_was_stuck_in_python_and_in_c_code_holding_the_gil(
    behind_nginx: BehindNginx,
) -> None:
    """One core per worker (the signal loop is a thread of its own); harakiri-verbose adds the
    other threads and the kernel's view of the stuck one."""
    server, front = behind_nginx(STACKS_APP, "--processes", "2", "--harakiri", "1", "--harakiri-verbose")
    server.wait_workers(2)
    with ThreadPoolExecutor(2) as pool:
        spin = pool.submit(front.request, "GET", "/spin")
        regex = pool.submit(front.request, "GET", "/regex")
        assert spin.result(20)[0] == 502 and regex.result(20)[0] == 502
    wait_for(lambda: server.log().count("killed by signal 9") >= 2, 10, "both workers killed")
    log = server.log()
    for request, innermost in (("GET /spin", "in spin"), ("GET /regex", "in match")):
        pid = stuck_pid(log, request)
        block = stack_block(log, pid)
        own = frames(block)
        # Most recent call last: the app's function, then what it called.
        assert own[-1].endswith(innermost), block
        assert own[-2].endswith("in application") and "/app_0.py" in own[-2], block
        # harakiri-verbose: the whole stack, the server's frames down to the app's call included.
        assert own[-3].endswith("in _serve") and any("in run_worker" in line for line in own), block
        # Each frame with its source line, as a traceback reads.
        app_line = block[block.index(own[-2]) + 1]
        assert app_line.strip() == (
            "spin()" if request == "GET /spin" else 're.match(r"(a+)+$", "a" * 40 + "b")'
        )
        # harakiri-verbose: the worker's other thread (it reads the signals, watches the master's
        # pipe) and the stuck thread's wait channel and system call.
        others = [line for line in block if line.startswith("thread 0x")]
        assert len(others) == 1, block
        assert any("in _await_master_gone" in line for line in block[block.index(others[0]) :]), block
        assert any(line.startswith("-- wchan> ") for line in block), block
        assert any(line.startswith("-- syscall> ") for line in block), block
        # Logged before the kill, in one piece.
        assert log.index(block[0]) < log.index(f"(pid {pid}) died: killed by signal 9"), log


def test_with_threads_harakiri_logs_the_stuck_thread_s_stack_only(behind_nginx: BehindNginx) -> None:
    server, front = behind_nginx(STACKS_APP, "--threads", "2", "--harakiri", "1")
    server.wait_workers(1)
    assert front.request("GET", "/recv")[0] == 502
    wait_for(lambda: "killed by signal 9" in server.log(), 10, "the worker killed")
    log = server.log()
    block = stack_block(log, stuck_pid(log, "GET /recv"))
    # Shown from the server's call of the app: its own frames above say nothing about the request.
    assert [line.split(", in ")[-1] for line in frames(block)] == ["_serve", "application"], block
    assert block[-1].strip() == "ours.recv(1)", block
    assert not any(line.startswith(("thread 0x", "--")) for line in block), block

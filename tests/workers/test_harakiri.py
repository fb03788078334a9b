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

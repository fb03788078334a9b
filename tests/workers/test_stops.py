"""Stops with real processes: SIGTERM and SIGINT finish the requests in flight, SIGQUIT cuts them,
worker-reload-mercy bounds both, and nothing of the server is left behind: no helper the app
started keeps the socket, and a worker still importing leaves with its master.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from binserve.testing import Serve, connect, read_all, request_packet, send, wait_for

from support import APPS, SLOW_BODY, AppFile, calls, group_processes, serve_busy, start_slow, status_body
from support import get_bytes as get


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_graceful_stop_finishes_request_and_leaves_nothing(
    serve: Serve, process_app: Path, tmp_path: Path, pool: ThreadPoolExecutor, signum: int
) -> None:
    pidfile = tmp_path / "binserve.pid"
    server = serve("--wsgi-file", str(process_app), "--processes", "2", "--pidfile", str(pidfile))
    assert pidfile.read_text().strip() == str(server.pid)
    server.wait_workers(2)

    slow = start_slow(pool, tmp_path, lambda: get(server.socket, "/slow", "1"))
    os.kill(server.pid, signum)
    assert slow.result(timeout=10) == (200, SLOW_BODY)

    assert server.proc.wait(timeout=10) == 0
    assert not server.socket.exists()
    assert not pidfile.exists()
    assert group_processes(server.pid) == ""
    assert f"{signal.Signals(signum).name}: graceful stop" in server.log()
    assert "master stopped" in server.log()


def test_sigquit_stops_fast_and_cuts_the_request(
    serve: Serve, process_app: Path, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    server = serve("--wsgi-file", str(process_app), "--worker-reload-mercy", "30")

    slow = start_slow(pool, tmp_path, lambda: get(server.socket, "/slow", "30", timeout=40))
    started = time.monotonic()
    os.kill(server.pid, signal.SIGQUIT)
    code = server.proc.wait(timeout=10)
    elapsed = time.monotonic() - started
    assert elapsed < 3, f"SIGQUIT took {elapsed:.1f} s"
    assert code >= 0, "the master itself was killed instead of stopping"
    assert slow.result(timeout=5) == (0, b"")
    assert "SIGQUIT: fast stop" in server.log()
    assert not server.socket.exists()
    assert group_processes(server.pid) == ""


def test_graceful_stop_kills_a_worker_past_the_mercy(
    serve: Serve, process_app: Path, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    server, worker, slow = serve_busy(serve, process_app, tmp_path, pool, "--worker-reload-mercy", "1")
    started = time.monotonic()
    os.kill(server.pid, signal.SIGTERM)
    server.proc.wait(timeout=10)
    elapsed = time.monotonic() - started
    assert elapsed < 3, f"the stop took {elapsed:.1f} s with worker-reload-mercy 1"
    assert slow.result(timeout=5)[0] != 200
    log = server.log()
    assert f"worker (pid {worker}) still running past the deadline: SIGKILL" in log
    assert f"(pid {worker}) killed by signal 9 (SIGKILL)" in log
    assert not server.socket.exists()
    assert group_processes(server.pid) == ""


def test_sigterm_right_after_sighup_stops_gracefully(serve: Serve, process_app: Path) -> None:
    """A stop that arrives while the master re-executes itself is neither lost nor fatal."""
    server = serve("--wsgi-file", str(process_app))
    server.wait_workers(1)
    os.kill(server.pid, signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "SIGHUP: graceful reload" not in server.log() and time.monotonic() < deadline:
        pass  # spin: the re-exec window is short
    os.kill(server.pid, signal.SIGTERM)
    try:
        code = server.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pytest.fail(f"SIGTERM sent during the reload was lost; log:\n{server.log()}")
    assert code == 0, f"master ended with {code}; log:\n{server.log()}"
    assert not server.socket.exists()
    assert group_processes(server.pid) == ""


def test_sigterm_serves_the_connections_already_queued(
    serve: Serve, process_app: Path, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    server = serve("--wsgi-file", str(process_app))
    server.wait_workers(1)
    slow = start_slow(pool, tmp_path, lambda: get(server.socket, "/slow", "0.5"))
    queued = []
    for i in range(5):  # connected and sent while the only worker is busy: they wait in the backlog
        sock = connect(server.socket)
        sock.sendall(request_packet(f"/queued{i}"))
        queued.append(sock)
    os.kill(server.pid, signal.SIGTERM)
    assert slow.result(timeout=10) == (200, SLOW_BODY)
    for sock in queued:
        with sock:
            assert status_body(read_all(sock)) == (200, b"ok")
    assert server.proc.wait(timeout=10) == 0
    assert calls(tmp_path)[1:] == [f"/queued{i}" for i in range(5)]


SLOW = (APPS / "attack_runtime_slow.py").read_text()


HELPER = (APPS / "attack_runtime_helper.py").read_text()


def test_after_the_master_is_killed_no_helper_of_the_app_keeps_the_socket_listening(
    serve: Serve, app_file: AppFile
) -> None:
    """Orphaned workers close the listeners, so connections are refused: no helper of the app holds them."""
    app = app_file(HELPER)
    server = serve("--wsgi-file", str(app), "--processes", "2")
    os.kill(server.pid, signal.SIGKILL)
    server.proc.wait(5)

    def refused() -> bool:
        probe = socket.socket(socket.AF_UNIX)
        probe.settimeout(0.5)
        try:
            probe.connect(str(server.socket))
            probe.sendall(b"\x00\x00\x00\x00")  # a ping: queued, it would wait for an answer forever
            return probe.recv(4) == b""
        # A broken pipe: the connection was queued as the last listener closed, and reset with it.
        except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError, FileNotFoundError):
            return True
        except TimeoutError:
            return False
        finally:
            probe.close()

    wait_for(refused, 5, "connections to be refused")


def test_a_lazy_worker_still_importing_when_the_master_is_killed_leaves_and_frees_the_socket(
    serve: Serve, app_file: AppFile, tmp_path: Path
) -> None:
    """An orphaned worker leaves within a bound, also one whose lazy import hangs."""
    server = serve(
        "--wsgi-file",
        str(app_file(SLOW.replace("time.sleep(2)", "time.sleep(60)"))),
        "--lazy-apps",
        "--worker-reload-mercy",
        "2",
        ready=False,
    )
    wait_for((tmp_path / "importing").exists, 10, "a worker's import to start")
    wait_for(lambda: len(server.worker_pids()) == 1, 10, "the worker")
    (worker,) = server.worker_pids()
    os.kill(server.pid, signal.SIGKILL)
    server.proc.wait(5)
    wait_for(lambda: not Path(f"/proc/{worker}").exists() or "Z" in _state(worker), 5, "the worker to leave")


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0]


BUSY = (APPS / "attack_runtime_busy.py").read_text()


def test_sigquit_ends_a_worker_at_once_even_in_a_request(
    serve: Serve, app_file: AppFile, tmp_path: Path
) -> None:
    """The worker's SIGQUIT is "exit at once": not once the app's request is over."""
    app = app_file(BUSY)
    server = serve("--wsgi-file", str(app))
    wait_for(lambda: len(server.worker_pids()) == 1, 10, "the worker")
    (worker,) = server.worker_pids()
    with send(server.socket, request_packet("/"), timeout=None):
        wait_for((tmp_path / "busy").exists, 10, "the request to start")
        os.kill(worker, signal.SIGQUIT)
        wait_for(lambda: worker not in server.worker_pids(), 3, "the worker to exit")


def test_sighup_during_a_graceful_stop_is_logged(serve: Serve, app_file: AppFile, tmp_path: Path) -> None:
    """No signal goes unsaid: a reload asked for while the workers finish their requests gets a line."""
    server = serve("--wsgi-file", str(app_file(BUSY)), "--worker-reload-mercy", "3")
    with send(server.socket, request_packet("/"), timeout=None):
        wait_for((tmp_path / "busy").exists, 10, "the request to start")
        os.kill(server.pid, signal.SIGTERM)
        wait_for(lambda: "graceful stop" in server.log(), 5, "the stop")
        os.kill(server.pid, signal.SIGHUP)
        wait_for(lambda: "SIGHUP: no reload, the master is stopping" in server.log(), 5, "the SIGHUP line")
    assert server.proc.wait(10) == 0, server.log()

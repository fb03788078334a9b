"""Adaptive workers (cheaper) and SIGTTIN/SIGTTOU, with real processes, real signals and nginx.

The worker count is read from the stats document (a cheap seat shows pid 0 and status
``cheap``, as uWSGI's) and from the master's children.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from binserve.testing import Nginx, Serve, Server, StartNginx, read_stats, wait_for

from support import APPS, AppFile, stop_cleanly

SLOW = (APPS / "cheaper_slow.py").read_text()


def running(stats: Path) -> list[int]:
    """The worker ids that have a process, as the stats document shows them."""
    return [w["id"] for w in read_stats(stats)["workers"] if w["status"] != "cheap"]


def cheap(stats: Path) -> list[dict[str, object]]:
    """The stats document's cheap workers."""
    return [w for w in read_stats(stats)["workers"] if w["status"] == "cheap"]


@contextmanager
def slow_load(front: Nginx, clients: int) -> Iterator[list[int]]:
    """``clients`` threads sending slow GETs through nginx until the block ends; yields the statuses."""
    statuses: list[int] = []
    done = threading.Event()

    def client() -> None:
        while not done.is_set():
            try:
                status, _, _ = front.request("GET", "/slow", timeout=30)
            except OSError:
                status = -1
            statuses.append(status)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield statuses
    finally:
        done.set()
        for thread in threads:
            thread.join(30)


ALGOS = {
    "spare": (("--cheaper-idle", "1"), "cheaper: every worker busy for"),
    "busyness": (
        ("--cheaper-algo", "busyness", "--cheaper-busyness-multiplier", "1"),
        "cheaper-busyness-max 50%: 1 more",
    ),
}


@pytest.mark.parametrize("algo", ALGOS)
def test_one_worker_idle_at_least_three_under_load_and_one_again_after(
    serve: Serve, nginx: StartNginx, app_file: AppFile, tmp_path: Path, algo: str
) -> None:
    stats = tmp_path / "stats.sock"
    options, grows = ALGOS[algo]
    server = serve(
        "--wsgi-file", str(app_file(SLOW)), "--processes", "4", "--cheaper", "1",
        "--cheaper-overload", "1", "--stats", str(stats), *options,
    )  # fmt: skip
    front = nginx(server)
    assert "master ready: 1 workers (cheaper: 1..4)" in server.log()
    assert running(stats) == [1] and len(server.worker_pids()) == 1
    assert [(w["id"], w["pid"]) for w in cheap(stats)] == [(2, 0), (3, 0), (4, 0)]
    with slow_load(front, 6) as statuses:
        wait_for(lambda: len(running(stats)) >= 3, 30, "at least 3 workers under 6 slow clients")
        assert grows in server.log()
    assert statuses and set(statuses) == {200}, statuses  # no request lost while workers came and went
    wait_for(lambda: running(stats) == [1], 30, "back to one worker once the load stops")
    wait_for(lambda: len(server.worker_pids()) == 1, 10, "the retired workers to exit")
    retired = [line for line in server.log().splitlines() if "cheaped: exited with code 0" in line]
    assert len(retired) >= 2, server.log()[-3000:]
    assert front.request("GET", "/")[0] == 200
    stop_cleanly(server)


def poll(condition: Callable[[], bool], seconds: float) -> bool:
    """Whether ``condition`` holds within ``seconds``."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def running_requests(server: Server) -> list[str]:
    """The slow requests the app has begun and not finished (it marks each in its directory)."""
    return [p.name for p in server.tmp_path.glob("slow-*")]


def count(server: Server, workers: int) -> None:
    wait_for(lambda: len(server.worker_pids()) == workers, 15, f"{workers} workers")


def test_ttin_and_ttou_add_and_retire_workers_within_1_and_processes(serve: Serve, app_file: AppFile) -> None:
    server = serve("--wsgi-file", str(app_file(SLOW)), "--processes", "3")
    count(server, 3)
    # Worker 3, the one SIGTTOU retires, in a slow request: it finishes it before it exits.
    third = server.wait_log(r"spawned worker 3 \(pid (\d+)\)").group(1)
    with ThreadPoolExecutor(3) as pool:
        answers = []
        for _ in range(10):  # a worker may take two of a wave (the second waits): try again
            wave = [pool.submit(server.request, "/slow") for _ in range(3)]
            answers += wave
            if poll(lambda: any(f"slow-{third}-" in name for name in running_requests(server)), 1.5):
                break
            for answer in wave:
                answer.result(15)
        else:
            pytest.fail("worker 3 took none of 10 waves of slow requests: nothing shows it finishing one")
        os.kill(server.pid, signal.SIGTTOU)
        assert {answer.result(15).status for answer in answers} == {200}
    server.wait_log(r"SIGTTOU: retiring worker 3, 2 left")
    server.wait_log(r"worker 3 \(pid \d+\) cheaped: exited with code 0")
    count(server, 2)
    os.kill(server.pid, signal.SIGTTOU)
    count(server, 1)
    server.wait_log(r"SIGTTOU: retiring worker 2, 1 left")
    os.kill(server.pid, signal.SIGTTOU)
    server.wait_log(r"SIGTTOU refused: 1 worker\(s\) run, the fewest binserve \(1\) allows")
    assert len(server.worker_pids()) == 1
    os.kill(server.pid, signal.SIGTTIN)
    count(server, 2)
    os.kill(server.pid, signal.SIGTTIN)
    count(server, 3)
    os.kill(server.pid, signal.SIGTTIN)
    server.wait_log(r"SIGTTIN refused: 3 workers run, the most processes \(3\) allows")
    # A reload starts the configured count again, whatever TTIN and TTOU did before.
    os.kill(server.pid, signal.SIGTTOU)
    count(server, 2)
    os.kill(server.pid, signal.SIGHUP)
    wait_for(lambda: server.log().count("master ready: 3 workers") == 2, 20, "the reloaded image")
    count(server, 3)
    stop_cleanly(server)


def test_ttin_and_ttou_stay_within_cheaper_and_processes_and_show_cheap_seats(
    serve: Serve, app_file: AppFile, tmp_path: Path
) -> None:
    stats = tmp_path / "stats.sock"
    server = serve(
        "--wsgi-file", str(app_file(SLOW)), "--processes", "3", "--cheaper", "1",
        "--cheaper-initial", "2", "--cheaper-idle", "3600", "--stats", str(stats),
    )  # fmt: skip
    count(server, 2)
    assert running(stats) == [1, 2]
    os.kill(server.pid, signal.SIGTTIN)
    count(server, 3)
    wait_for(lambda: running(stats) == [1, 2, 3], 10, "worker 3 in the stats")
    # One at a time: the kernel keeps one of a kind pending, so two sent at once may count once.
    for left in (2, 1):
        os.kill(server.pid, signal.SIGTTOU)
        count(server, left)
    os.kill(server.pid, signal.SIGTTOU)
    server.wait_log(r"SIGTTOU refused: 1 worker\(s\) run, the fewest cheaper \(1\) allows")
    assert running(stats) == [1]
    assert {(w["id"], w["pid"], w["accepting"]) for w in cheap(stats)} == {(2, 0, 0), (3, 0, 0)}
    os.kill(server.pid, signal.SIGHUP)  # a reload starts cheaper-initial workers again
    wait_for(lambda: server.log().count("master ready: 2 workers (cheaper: 1..3)") == 2, 20, "the reload")
    count(server, 2)
    wait_for(lambda: running(stats) == [1, 2], 10, "two workers in the stats")
    stop_cleanly(server)


def test_a_worker_added_by_hand_is_retired_again_once_idle(serve: Serve, app_file: AppFile) -> None:
    server = serve(
        "--wsgi-file", str(app_file(SLOW)), "--processes", "2", "--cheaper", "1", "--cheaper-idle", "1"
    )
    count(server, 1)
    os.kill(server.pid, signal.SIGTTIN)
    server.wait_log(r"spawned worker 2")
    server.wait_log(r"cheaper: 2 workers idle for 1 s \(cheaper-idle\): retiring worker 2")
    count(server, 1)
    # cheaper reads the workers' counters: SIGUSR1's summary has them, without stats or harakiri.
    os.kill(server.pid, signal.SIGUSR1)
    server.wait_log(r"SIGUSR1: log files reopened; 1 workers \(0 busy, 0 requests served\)")
    stop_cleanly(server)

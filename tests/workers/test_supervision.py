"""Supervision under faults: harakiri and max-requests recycling."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from binserve.testing import Nginx, Server, location, wait_for

from support import APPS

APP = (APPS / "supervision_app.py").read_text()
IMPORT_RECORDER = (APPS / "supervision_import_recorder.py").read_text()


def test_harakiri_kills_a_request_past_its_deadline_and_names_it(
    serve: Callable[..., Server], nginx: Callable[[str], Nginx], app_file: Callable[[str], Path]
) -> None:
    server = serve("--wsgi-file", str(app_file(APP)), "--processes", "2", "--harakiri", "2")
    front = nginx(location(server.socket))
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


def test_max_requests_recycles_workers_without_a_failed_request(
    serve: Callable[..., Server], nginx: Callable[[str], Nginx], app_file: Callable[[str], Path]
) -> None:
    server = serve(
        "--wsgi-file",
        str(app_file(APP)),
        "--processes",
        "2",
        "--max-requests",
        "10",
        "--max-requests-delta",
        "5",
        "--min-worker-lifetime",
        "0",
    )
    front = nginx(location(server.socket))
    answers = front.burst(200)
    assert [status for status, _, _ in answers] == [200] * 200
    # A recycling worker serves on until its replacement accepts, and its own replacement waits
    # until the process before it has left: how many more than max-requests a generation serves
    # depends on the machine's speed. Both worker ids must have been replaced at least once.
    pids = {body for _, _, body in answers}
    assert len(pids) >= 4, f"only {len(pids)} distinct workers served 200 requests"
    wait_for(
        lambda: server.log().count(") recycled: exited with code 17") >= 4, 10, "recycled workers to exit"
    )
    assert server.log().count("requests served (max-requests") >= 4


def imported_by(tmp_path: Path) -> set[int]:
    path = tmp_path / "imported-by"
    return {int(line) for line in path.read_text().split()} if path.exists() else set()


def test_lazy_apps_loads_the_app_in_each_worker_not_in_the_master(
    serve: Callable[..., Server], app_file: Callable[[str], Path], tmp_path: Path
) -> None:
    server = serve("--wsgi-file", str(app_file(IMPORT_RECORDER)), "--processes", "2", "--lazy-apps")
    wait_for(
        lambda: len(server.worker_pids()) == 2 and imported_by(tmp_path) == server.worker_pids(),
        10,
        "both workers to import the app",
    )
    assert server.pid not in imported_by(tmp_path)


def test_without_lazy_apps_the_master_loads_the_app_once(
    serve: Callable[..., Server], app_file: Callable[[str], Path], tmp_path: Path
) -> None:
    serve("--wsgi-file", str(app_file(IMPORT_RECORDER)), "--processes", "2")
    assert len(imported_by(tmp_path)) == 1


def test_lazy_apps_that_fail_to_import_stop_binserve_instead_of_respawning(
    serve: Callable[..., Server], app_file: Callable[[str], Path]
) -> None:
    server = serve(
        "--wsgi-file", str(app_file("raise ImportError('lazy and broken')\n")), "--lazy-apps", ready=False
    )
    assert server.proc.wait(15) == 3
    log = server.log()
    assert "lazy and broken" in log and "failed to boot; stopping instead of respawning" in log


def test_touch_reload_gives_new_workers_under_the_same_master(
    serve: Callable[..., Server], app_file: Callable[[str], Path], tmp_path: Path
) -> None:
    trigger = tmp_path / "reload.trigger"
    trigger.write_text("")
    server = serve("--wsgi-file", str(app_file(APP)), "--processes", "2", "--touch-reload", str(trigger))
    wait_for(lambda: len(server.worker_pids()) == 2, 10, "two workers")
    before = server.worker_pids()
    later = time.time() + 5
    os.utime(trigger, (later, later))
    wait_for(
        lambda: len(server.worker_pids()) == 2 and not server.worker_pids() & before,
        10,
        "a new generation of workers",
    )
    assert server.proc.poll() is None and "was touched: graceful reload" in server.log()

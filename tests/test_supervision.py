"""Supervision under faults: harakiri and max-requests recycling (the first parts of issue 4)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from support import Nginx, Server, location, wait_for

APP = """
import os
import time


def application(environ, start_response):
    if environ["PATH_INFO"] == "/sleep":
        time.sleep(float(environ["QUERY_STRING"] or 10))
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


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
    )
    front = nginx(location(server.socket))
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: front.request("GET", "/"), range(200)))
    assert [status for status, _, _ in answers] == [200] * 200
    pids = {body for _, _, body in answers}
    assert len(pids) >= 200 // 15, f"only {len(pids)} distinct workers served 200 requests"
    assert server.log().count("recycled after max-requests") >= 200 // 15 - 2

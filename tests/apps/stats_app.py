"""The app behind the stats server tests (tests/stats/test_stats.py).

* ``/bytes?N`` (or ``/bytes?N&anything``) answers with N bytes, so responses differ in size
  and ``tx`` has something to add up;
* ``/raise`` raises before start_response, so the worker counts an exception;
* ``/block`` holds its worker until the file named by ``STATS_RELEASE`` exists (polled every
  10 ms, at most 30 s), so a test can keep a worker busy exactly as long as it needs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

TEXT = [("Content-Type", "text/plain")]
BLOCK_LIMIT = 30.0


def block() -> bytes:
    """Wait for the release file; say whether it came."""
    release = os.environ["STATS_RELEASE"]
    deadline = time.monotonic() + BLOCK_LIMIT
    while time.monotonic() < deadline:
        if os.path.exists(release):
            return b"released"
        time.sleep(0.01)
    return b"gave up"


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/bytes":
        size = int(environ.get("QUERY_STRING", "").partition("&")[0] or "0")
        start_response("200 OK", TEXT)
        return [b"x" * size]
    if path == "/raise":
        raise RuntimeError("stats-test-failure")
    if path == "/block":
        body = block()
        start_response("200 OK", TEXT)
        return [body]
    if path == "/pid":
        start_response("200 OK", TEXT)
        return [str(os.getpid()).encode()]
    start_response("404 Not Found", TEXT)
    return [b"no such route"]

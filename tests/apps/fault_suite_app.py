"""Served by tests/load/test_under_load.py (APP)."""

import os
import time

LEAK = []
LEAK_CAP = 200  # MB a worker leaks at most, so a server that never recycles cannot exhaust the host


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/sleep":
        time.sleep(float(environ["QUERY_STRING"] or 10))
    elif path == "/leak" and len(LEAK) < LEAK_CAP:
        LEAK.append(b"x" * (1 << 20))  # written, so resident: the worker's RSS grows 1 MB a request
    pid = str(os.getpid())
    body = f"pid={pid} multithread={environ['wsgi.multithread']}".encode()
    headers = [("Content-Type", "text/plain"), ("X-Pid", pid), ("Content-Length", str(len(body)))]
    start_response("200 OK", headers)
    return [body]

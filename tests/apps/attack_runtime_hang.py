"""Served by tests/workers/test_harakiri.py (HANG)."""

import time


def application(environ, start_response):
    time.sleep(3)
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]

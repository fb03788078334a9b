"""Served by tests/workers/test_harakiri.py (THREADED_HARAKIRI_APP)."""

import time


def application(environ, start_response):
    time.sleep(30 if environ["PATH_INFO"] == "/stuck" else 1.5)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done"]

"""Served by tests/workers/test_recycling.py (EVIL_APP)."""

import os
import time


def application(environ, start_response):
    if environ["PATH_INFO"] == "/grow":
        hoard = b"x" * (200 << 20)
        time.sleep(10)
        del hoard
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

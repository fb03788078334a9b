"""Served by tests/workers/test_recycling.py (GROWING_APP)."""

import os

KEPT = []


def application(environ, start_response):
    if environ["PATH_INFO"] == "/grow":
        KEPT.append(b"x" * (8 << 20))  # written, so the pages are resident
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

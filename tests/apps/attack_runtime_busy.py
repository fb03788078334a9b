"""Served by tests/workers/test_stops.py (BUSY)."""

import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def application(environ, start_response):
    open(os.path.join(HERE, "busy"), "w").close()
    time.sleep(30)
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]

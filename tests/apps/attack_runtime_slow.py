"""Served by tests/workers/test_signals.py (SLOW), tests/workers/test_stops.py (SLOW)."""

import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))
open(os.path.join(HERE, "importing"), "w").close()
time.sleep(2)


def application(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]

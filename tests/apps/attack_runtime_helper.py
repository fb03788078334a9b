"""Served by tests/workers/test_stops.py (HELPER)."""

import os
import time

if os.fork() == 0:  # a helper process the app starts at import, and forgets
    time.sleep(30)
    os._exit(0)


def application(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]

"""Served by tests/workers/test_harakiri.py (SLEEP_APP),
tests/workers/test_recycling.py (SLEEP_APP),
tests/workers/test_reloads.py (SLEEP_APP).
"""

import os
import time


def application(environ, start_response):
    if environ["PATH_INFO"] == "/sleep":
        time.sleep(float(environ["QUERY_STRING"] or 10))
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

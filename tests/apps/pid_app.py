"""Served by tests/workers/test_recycling.py (PID_APP),
tests/workers/test_replacement.py (PID_APP),
tests/workers/test_signals.py (APP).
"""

import os


def application(environ, start_response):
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

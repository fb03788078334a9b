"""Served by tests/workers/test_replacement.py (HANGING_APP)."""

import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.exists(os.path.join(HERE, "hang")):
    time.sleep(60)  # an import that waits forever, say on a database


def application(environ, start_response):
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

"""Served by tests/workers/test_replacement.py (SLOW_APP)."""

import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def application(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        open(os.path.join(HERE, "in-flight"), "w").close()
        time.sleep(1.5)
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

"""Served by tests/workers/test_cheaper.py: /slow takes a second, anything else answers at once.

A slow request marks itself with a file in the app's directory while it runs, so a test can
see that every worker is in one.
"""

import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def application(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        mark = os.path.join(HERE, f"slow-{os.getpid()}-{time.monotonic_ns()}")
        open(mark, "w").close()
        try:
            time.sleep(1.0)
        finally:
            os.unlink(mark)
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

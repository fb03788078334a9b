"""Served by tests/workers/test_reload_safety.py (APP)."""

import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))
open(os.path.join(HERE, f"loaded-{os.getpid()}"), "w").close()
if os.path.exists(os.path.join(HERE, "hang")):
    open(os.path.join(HERE, "hanging"), "w").close()
    time.sleep(60)


def application(environ, start_response):
    body = b"VERSION %d" % os.getpid()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

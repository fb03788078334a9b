"""Served by tests/workers/test_signals.py (HELPER_PID)."""

import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if os.fork() == 0:
    with open(os.path.join(HERE, "helper.tmp"), "w") as out:
        out.write(str(os.getpid()))
    os.rename(os.path.join(HERE, "helper.tmp"), os.path.join(HERE, "helper"))
    time.sleep(30)
    os._exit(0)


def application(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]

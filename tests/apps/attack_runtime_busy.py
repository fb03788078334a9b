"""Served by tests/test_attack_runtime.py (BUSY)."""

import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def application(environ, start_response):
    open(os.path.join(HERE, "busy"), "w").close()
    time.sleep(30)
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]

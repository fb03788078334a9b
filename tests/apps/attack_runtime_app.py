"""Served by tests/test_attack_runtime.py (APP)."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.exists(os.path.join(HERE, "exit")):
    sys.exit(int(open(os.path.join(HERE, "exit")).read()))


def application(environ, start_response):
    body = b"%d" % os.getpid()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]

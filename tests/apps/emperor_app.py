"""Served by tests/emperor/test_emperor.py (APP)."""

import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def application(environ, start_response):
    if environ["PATH_INFO"].endswith("/slow"):
        open(os.path.join(HERE, "slow-started"), "w").close()
        time.sleep(float(environ["QUERY_STRING"] or 1))
    name = os.environ.get("VASSAL", "?")
    template = os.environ.get("FROM_TEMPLATE", "-")
    body = f"{name} {os.getpid()} {os.getuid()} {template}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

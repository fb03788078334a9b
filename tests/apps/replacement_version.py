"""Served by tests/workers/test_replacement.py (VERSION_APP)."""

import os

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "version.txt")) as source:
    VERSION = source.read().strip()


def application(environ, start_response):
    body = f"{VERSION} {os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

"""Served by tests/workers/test_lazy_apps.py (IMPORT_RECORDER)."""

import os

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "imported-by"), "a") as out:
    out.write(f"{os.getpid()}\n")


def application(environ, start_response):
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

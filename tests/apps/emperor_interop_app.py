"""Served by tests/emperor/test_emperor_interop.py (APP)."""

import os


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]

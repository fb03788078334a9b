"""Served by tests/support.py (PRIVILEGES_APP)."""

import os


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    groups = ",".join(map(str, sorted(os.getgroups())))
    return [f"{os.getuid()} {os.getgid()} {groups}".encode()]

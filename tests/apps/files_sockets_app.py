"""Served by tests/test_files_sockets.py (APP)."""


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"served"]

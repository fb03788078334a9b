"""Served by tests/security/test_hostile_links.py (APP)."""


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]

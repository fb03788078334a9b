"""Served by tests/security/test_exposure.py (APP)."""


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [environ["REMOTE_ADDR"].encode()]

"""Served by tests/requests/test_fuzz.py (ECHO_APP)."""


def application(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [body]

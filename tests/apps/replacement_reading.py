"""Served by tests/workers/test_replacement.py (READING_APP)."""


def application(environ, start_response):
    data = environ["wsgi.input"].read()
    body = str(len(data)).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

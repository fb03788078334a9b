"""Served by tests/workers/test_recycling.py (DIGEST_APP)."""

import hashlib


def application(environ, start_response):
    stream = environ["wsgi.input"]
    body = f"{type(stream).__name__} {hashlib.sha256(stream.read()).hexdigest()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

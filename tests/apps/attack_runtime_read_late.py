"""Served by tests/requests/test_request_faults.py (READ_LATE)."""


def application(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"reading")
    return [environ["wsgi.input"].read()]

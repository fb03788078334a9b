"""Served by tests/test_attack_runtime.py (READ_LATE)."""


def application(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"reading")
    return [environ["wsgi.input"].read()]

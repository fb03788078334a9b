"""Served by tests/requests/test_request_faults.py (APP), tests/workers/test_harakiri.py (FAULTS_APP)."""

import os
import time


class Closing:
    def __init__(self, exc):
        self.exc = exc

    def __iter__(self):
        return iter([b"closed"])

    def close(self):
        raise self.exc


def raising_body(exc):
    raise exc
    yield b""


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/slow":
        open(os.environ["SLOW_MARK"], "w").close()
        time.sleep(60)
    if path.startswith("/raise-"):
        _, where, kind = path.split("-")
        exc = {"exit": SystemExit(3), "interrupt": KeyboardInterrupt()}[kind]
        if where == "call":
            raise exc
        start_response("200 OK", [("Content-Type", "text/plain")])
        return raising_body(exc) if where == "iter" else Closing(exc)
    if path == "/midstream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return midstream()
    if path == "/read":
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(len(body)).encode()]
    if path == "/read-late":  # the headers go out before the body is read
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"reading")
        return [environ["wsgi.input"].read()]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]


def midstream():
    for _ in range(4):
        yield b"x" * 1000
    raise RuntimeError("the database went away")

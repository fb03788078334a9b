"""Served by tests/requests/test_request_faults.py (ODD_RESULT)."""

import os


class Response:
    def __iter__(self):
        return iter([b"%d" % os.getpid()])

    def __getattr__(self, name):
        raise KeyboardInterrupt(name)


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return Response()

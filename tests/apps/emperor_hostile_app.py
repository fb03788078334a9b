"""Tells whose code it is (the file's directory), as whom it runs, and whether it sees the secret."""

import os

WHO = os.path.basename(os.path.dirname(os.path.abspath(__file__)))


def application(environ, start_response):
    body = f"{WHO} {os.getuid()} {os.environ.get('EMPEROR_TEST_SECRET', '-')}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

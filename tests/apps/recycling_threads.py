"""Served by tests/workers/test_recycling.py (THREADS_APP)."""

import os
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def application(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        open(os.path.join(HERE, "in-flight"), "w").close()
        time.sleep(1)
    else:
        time.sleep(0.3)
    body = f"{environ['wsgi.multithread']} {threading.get_ident()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

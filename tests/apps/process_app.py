"""Served by tests/support.py (PROCESS_APP)."""

import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SLOW_BODY = b"".join(b"%05d" % i for i in range(20000))  # 100 kB, every block numbered


def application(environ, start_response):
    path = environ["PATH_INFO"]
    with open(os.path.join(HERE, "calls"), "a") as calls:
        calls.write(f"{os.getpid()} {path}\n")
    if path == "/slow":
        time.sleep(float(environ.get("QUERY_STRING") or 1.5))
        body = SLOW_BODY
    elif path == "/env":
        body = os.environ.get("GREETING", "unset").encode()
    elif path == "/pid":
        body = str(os.getpid()).encode()
    elif path == "/print":
        print("printed by the app", file=sys.stderr)
        body = b"printed"
    elif path == "/boom":
        raise RuntimeError("the app blew up on purpose")
    else:
        body = b"ok"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

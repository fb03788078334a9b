"""Served by tests/workers/test_signals.py (FORKING_APP)."""

import multiprocessing
import os
import time

CONTEXT = multiprocessing.get_context("fork")
CHILDREN = []


def sleep():
    time.sleep(60)


def start():
    child = CONTEXT.Process(target=sleep)
    child.start()
    CHILDREN.append(child)
    return child


if os.environ.get("FORK_AT_IMPORT"):
    start()


def application(environ, start_response):
    if environ["PATH_INFO"] == "/start":
        body = f"{os.getpid()} {start().pid}"
    else:
        child = CHILDREN.pop()
        child.terminate()
        child.join(5)
        body = f"{os.getpid()} {child.exitcode}"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body.encode()]

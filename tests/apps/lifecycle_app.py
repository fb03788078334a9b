"""Served by tests/workers/test_lifecycle.py: records its lifecycle in the file LIFECYCLE_OUT names.

Each record is one line, ``WHAT PID``, appended in one write (the processes share the file).
"""

import atexit
import os
import subprocess
import time

from binserve import hooks

OUT = os.environ["LIFECYCLE_OUT"]


def note(what):
    fd = os.open(OUT, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{what} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


note("import")
atexit.register(note, "atexit")


@hooks.postfork
def after_fork():
    note("postfork")


@hooks.atexit
def before_exit():
    note("hook-atexit")


if os.environ.get("LIFECYCLE_BROKEN_HOOKS"):

    @hooks.postfork
    def broken_postfork():
        raise RuntimeError("the postfork hook failed")

    @hooks.atexit
    def broken_atexit():  # registered last: runs first, and the one before it still runs
        raise RuntimeError("the atexit hook failed")

    atexit.register(lambda: 1 / 0)


if os.environ.get("LIFECYCLE_HELPER"):

    @hooks.postfork
    def start_helper():
        helper = subprocess.Popen(["sleep", "60"])
        note(f"helper-{helper.pid}")


def slow_body():
    try:
        note("begin")
        yield b"first "
        time.sleep(1)
        yield b"second"
    finally:
        note("finally")


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    if environ["PATH_INFO"] == "/slow":
        return slow_body()
    if environ["PATH_INFO"] == "/hang":
        time.sleep(30)
    return [str(os.getpid()).encode()]

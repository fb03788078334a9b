"""Served by tests/workers/test_harakiri.py (STACKS_APP): requests stuck three ways."""

import re
import socket
import time


def spin():
    while True:
        pass


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/spin":  # pure Python
        spin()
    elif path == "/sleep":  # a blocking call, the GIL released
        time.sleep(30)
    elif path == "/recv":  # a socket read nobody answers
        ours, _theirs = socket.socketpair()
        ours.recv(1)
    elif path == "/regex":  # C code that holds the GIL: no Python-level signal handler can run
        re.match(r"(a+)+$", "a" * 40 + "b")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]

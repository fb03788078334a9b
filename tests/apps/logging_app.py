"""Served by tests/logging/test_log_files.py.

``/?req=N`` prints ``printed N`` on stdout and ``complained N`` on stderr, so a test can find
each request's output in the log. ``/shout?tag=T&lines=L&threads=K`` prints L lines from each
of K threads at once, ``<ID:xxx...:ID>``, some longer than any buffer, alternating stdout and stderr.
"""

import sys
import threading
from urllib.parse import parse_qs

SIZES = (80, 9000, 70000)  # below PIPE_BUF, above the 8 KiB buffer, above a pipe's 64 KiB


def shout(tag, thread, lines):
    for i in range(lines):
        name = f"{tag}-{thread}-{i}"
        print(f"<{name}:" + "x" * SIZES[i % len(SIZES)] + f":{name}>", file=(sys.stdout, sys.stderr)[i % 2])


def application(environ, start_response):
    query = {key: values[0] for key, values in parse_qs(environ.get("QUERY_STRING", "")).items()}
    if environ["PATH_INFO"] == "/shout":
        threads = [
            threading.Thread(target=shout, args=(query["tag"], n, int(query["lines"])))
            for n in range(int(query["threads"]))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        print("printed", query.get("req"))
        print("complained", query.get("req"), file=sys.stderr)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]

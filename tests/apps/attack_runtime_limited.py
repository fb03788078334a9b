"""Served by tests/support.py (LIMITED)."""

import os
import resource


def _mine(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            uid = next(line for line in status if line.startswith("Uid:")).split()[1]
        return len(os.listdir(f"/proc/{pid}/task")) if int(uid) == os.getuid() else 0
    except (OSError, StopIteration):
        return 0


# The master runs as the user: room for one worker and its thread, then no fork succeeds.
tasks = sum(_mine(pid) for pid in os.listdir("/proc") if pid.isdigit())
resource.setrlimit(resource.RLIMIT_NPROC, (tasks + 2, tasks + 2))


def application(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]

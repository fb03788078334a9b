"""Served by tests/deploy/test_systemd.py: what systemd's variables look like to the app.

The answer is JSON: the variables as the app saw them at import, in the worker serving the
request, and in a child the app spawns; plus the worker's pid.
"""

import json
import os
import subprocess
import sys

NAMES = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
AT_IMPORT = {name: os.environ.get(name) for name in NAMES}
CHILD = f"import json, os; print(json.dumps({{n: os.environ.get(n) for n in {NAMES!r}}}))"


def application(environ, start_response):
    child = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
    seen = {
        "import": AT_IMPORT,
        "worker": {name: os.environ.get(name) for name in NAMES},
        "child": json.loads(child.stdout),
        "pid": os.getpid(),
    }
    body = json.dumps(seen).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]

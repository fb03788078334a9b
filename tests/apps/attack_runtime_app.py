"""Served by tests/workers/test_lazy_apps.py (EXITING_APP),
tests/workers/test_reload_safety.py (EXITING_APP).
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.exists(os.path.join(HERE, "exit")):
    sys.exit(int(open(os.path.join(HERE, "exit")).read()))


def application(environ, start_response):
    body = b"%d" % os.getpid()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]

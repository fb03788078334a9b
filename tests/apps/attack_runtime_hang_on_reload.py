"""Served by tests/emperor/test_emperor_hostile.py (HANG_ON_RELOAD),
tests/workers/test_reload_safety.py (HANG_ON_RELOAD).
"""

import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.exists(os.path.join(HERE, "hang")):
    open(os.path.join(HERE, "hanging"), "w").close()
    time.sleep(60)


def application(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]

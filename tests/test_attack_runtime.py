"""Attacks on the signal table, the reload probe and the request path, on real processes."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

from test_emperor import get

from support import Server, wait_for

APP = """
import os, sys

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.exists(os.path.join(HERE, "exit")):
    sys.exit(int(open(os.path.join(HERE, "exit")).read()))


def application(environ, start_response):
    body = b"%d" % os.getpid()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""


def test_an_app_that_exits_zero_at_import_fails_the_probe(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    """sys.exit(0) at import is a failed load, not a probe that passed: the workers serve on."""
    app = tmp_path / "app.py"
    app.write_text(APP)
    server = serve("--wsgi-file", str(app), "--processes", "2")
    wait_for(lambda: len(server.worker_pids()) == 2, 10, "two workers")
    workers = server.worker_pids()
    (tmp_path / "exit").write_text("0")
    os.kill(server.pid, signal.SIGHUP)
    wait_for(lambda: "reload refused" in server.log() or server.proc.poll() is not None, 15, "the probe")
    assert server.proc.poll() is None, server.log()
    assert "SystemExit" in server.log(), server.log()
    assert server.worker_pids() == workers
    assert get(server.socket)[0] == 200


def test_a_lazy_app_that_exits_at_import_is_a_boot_failure_not_a_respawn_storm(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
    (tmp_path / "exit").write_text("1")
    server = serve("--wsgi-file", str(app), "--lazy-apps", "--processes", "2", ready=False)
    assert server.proc.wait(10) == 3, server.log()
    assert server.log().count("spawned worker") <= 2, server.log()
    assert not server.socket.exists()

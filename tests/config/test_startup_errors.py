"""Starts that cannot succeed: bad option values, an unbindable socket, an app that fails to
import or lacks its callable. binserve exits at once with its code and leaves nothing behind.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from binserve.testing import Serve

from support import AppFile

BROKEN = """
import os
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "imported"), "a") as f:
    f.write("x")
raise RuntimeError("kaboom at import time")
"""


@pytest.mark.parametrize("how", ["--module", "--wsgi-file"])
def test_app_that_fails_to_import_exits_at_once(
    serve: Serve, app_file: AppFile, tmp_path: Path, how: str
) -> None:
    broken = app_file(BROKEN)
    target = broken.stem if how == "--module" else str(broken)
    started = time.monotonic()
    server = serve(how, target, "--processes", "2", ready=False)
    code = server.proc.wait(timeout=15)
    assert time.monotonic() - started < 5
    assert code == 4
    log = server.log()
    assert "Traceback (most recent call last)" in log
    assert "RuntimeError: kaboom at import time" in log
    assert log.count("cannot load the app") == 1
    assert "spawned worker" not in log
    assert (tmp_path / "imported").read_text() == "x", "the app was imported more than once"
    assert not server.socket.exists()


@pytest.mark.parametrize("how", ["--module", "--wsgi-file"])
def test_missing_callable_is_named(serve: Serve, process_app: Path, how: str) -> None:
    target = process_app.stem if how == "--module" else str(process_app)
    pidfile = process_app.parent / "binserve.pid"
    server = serve(how, target, "--callable", "nope", "--pidfile", str(pidfile), ready=False)
    assert server.proc.wait(timeout=15) == 4
    kind = f"module {process_app.stem}" if how == "--module" else f"wsgi-file {process_app}"
    assert f"cannot load the app: {kind} has no callable 'nope'" in server.log()
    assert "Traceback" not in server.log()
    assert not pidfile.exists(), "the pidfile of a server that never started is removed"


@pytest.mark.parametrize(
    ("option", "value"), [("limit-post", "-1"), ("socket-timeout", "0")], ids=["limit-post", "socket-timeout"]
)
def test_bad_option_value_is_refused_at_start(
    serve: Serve, process_app: Path, option: str, value: str
) -> None:
    server = serve("--wsgi-file", str(process_app), f"--{option}", value, ready=False)
    try:
        code = server.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"--{option} {value} was accepted; binserve is running:\n{server.log()}")
    assert code == 2, server.log()
    assert option in server.log()
    assert not server.socket.exists()


def test_second_socket_unbindable_exits_2_and_leaves_no_socket_file(
    serve: Serve, process_app: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "no-such-dir" / "second.sock"
    server = serve("--wsgi-file", str(process_app), "--socket", str(bad), ready=False)
    try:
        code = server.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"binserve kept running with an unbindable socket:\n{server.log()}")
    assert code == 2, server.log()
    assert str(bad) in server.log()
    assert not bad.exists()
    assert not server.socket.exists(), f"the first socket {server.socket} was left behind"


@pytest.mark.parametrize(
    ("touch", "log"),
    [("touch-reload", "logto"), ("touch-logreopen", "req-logger")],
    ids=["touch-reload", "touch-logreopen"],
)
def test_a_touch_file_that_is_a_log_file_is_refused(
    serve: Serve, process_app: Path, tmp_path: Path, touch: str, log: str
) -> None:
    """Each line logged would touch it: a reload (or a reopen) every second, for ever."""
    path = tmp_path / "app.log"
    value = f"file:{path}" if log == "req-logger" else str(path)
    server = serve("--wsgi-file", str(process_app), f"--{log}", value, f"--{touch}", "app.log", ready=False)
    assert server.proc.wait(timeout=15) == 2
    expected = f"option '{touch}' (app.log) is the file option '{log}' writes (--{log}): each line logged"
    assert expected in server.log(), server.log()


def test_a_log_backupname_that_is_the_log_file_is_refused(
    serve: Serve, process_app: Path, tmp_path: Path
) -> None:
    """log-maxsize would rename the file to itself every second and it would never shrink."""
    log = ["--logto", str(tmp_path / "app.log"), "--log-maxsize", "1k", "--log-backupname", "app.log"]
    server = serve("--wsgi-file", str(process_app), *log, ready=False)
    assert server.proc.wait(timeout=15) == 2
    expected = "option 'log-backupname' (app.log) is the file option 'logto' writes (--logto): log-maxsize"
    assert expected in server.log(), server.log()

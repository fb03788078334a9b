"""The repository's fixtures: binserve.testing's (serve, nginx, emperor), the layers, a few of its own."""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from binserve.testing import Nginx, Serve, Server, StartNginx

from support import EXTRA_GROUP, PRIVILEGES_APP, PROCESS_APP, USER, AppFile, BehindNginx, reachable_prefix

pytest_plugins = ["binserve.testing.plugin", "fault_report", "layers"]


@pytest.fixture
def app_file(tmp_path: Path) -> AppFile:
    """Write a WSGI app's source into tmp_path (as ``name``, else a new app_N.py) and return its path."""
    counter = iter(range(1000))

    def write(source: str, name: str | None = None) -> Path:
        path = tmp_path / (name or f"app_{next(counter)}.py")
        path.write_text(source)
        return path

    return write


@pytest.fixture
def process_app(app_file: AppFile) -> Path:
    """support.PROCESS_APP written into tmp_path: the app most process tests serve."""
    return app_file(PROCESS_APP)


@pytest.fixture
def behind_nginx(serve: Serve, nginx: StartNginx, app_file: AppFile) -> BehindNginx:
    """Serve an app's source with binserve (``behind_nginx(source, *args)``), nginx in front of it."""

    def start(source: str, *args: str) -> tuple[Server, Nginx]:
        server = serve("--wsgi-file", str(app_file(source)), *args)
        return server, nginx(server)

    return start


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in tmp_path so files are named relatively, as in the messages users see."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A 0755 directory of its own: tmp_path's parents are 0700, closed to other users."""
    base = Path(tempfile.mkdtemp(prefix="binserve-open-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def opened() -> Iterator[list[socket.socket]]:
    """Sockets to close after the test, whatever happens."""
    socks: list[socket.socket] = []
    yield socks
    for sock in socks:
        sock.close()


@pytest.fixture
def vassal_dir(tmp_path: Path) -> Path:
    """An empty directory of vassal files."""
    path = tmp_path / "vassals"
    path.mkdir()
    return path


@pytest.fixture
def venv_interpreter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers started in this test run this checkout's virtualenv where an unprivileged user
    reaches it (the interpreter's own path, unresolved: the venv is what imports this code)."""
    prefix = reachable_prefix(tmp_path)
    if not prefix:
        return
    wrapper = tmp_path / "python-in-namespace"
    command = " ".join(shlex.quote(part) for part in [*prefix, sys.executable])
    wrapper.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(wrapper))


def _remove_account() -> None:
    subprocess.run(["userdel", USER], capture_output=True)
    subprocess.run(["groupdel", EXTRA_GROUP], capture_output=True)


@pytest.fixture
def account() -> Iterator[pwd.struct_passwd]:
    """The privilege tests' system user (USER, in EXTRA_GROUP too), removed afterwards."""
    assert os.geteuid() == 0, "privileges are tested as root (as CI runs)"
    _remove_account()
    subprocess.run(["groupadd", "-r", EXTRA_GROUP], check=True, capture_output=True)
    subprocess.run(["useradd", "-M", "-r", "-G", EXTRA_GROUP, USER], check=True, capture_output=True)
    try:
        yield pwd.getpwnam(USER)
    finally:
        _remove_account()


@pytest.fixture
def home(account: pwd.struct_passwd, open_dir: Path) -> Path:
    """The app's directory, owned by the user (so vacuum may remove the socket after the drop)."""
    (open_dir / "app.py").write_text(PRIVILEGES_APP)
    os.chown(open_dir, account.pw_uid, account.pw_gid)
    return open_dir


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    """Threads for requests that must run alongside the test.

    Not waited for: a thread stuck in a request ends when ``serve`` kills the server.
    """
    executor = ThreadPoolExecutor(4)
    yield executor
    executor.shutdown(wait=False, cancel_futures=True)

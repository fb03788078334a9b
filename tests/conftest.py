"""Fixtures that start real binserve and nginx processes and always tear them down."""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from support import Nginx, Server, reachable_prefix, wait_for

if TYPE_CHECKING:
    from test_emperor import EmperorProcess

pytest_plugins = ["fault_report"]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start binserve: ``serve(*args, socket_path=None, env=None, ready=True)``; stopped after the test."""
    started: list[Server] = []

    def start(*args: str, **kwargs: Any) -> Server:
        server = Server(tmp_path, args, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
    pattern = f"binserve --socket {tmp_path}"
    leftovers = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    assert not leftovers.stdout.strip(), f"binserve processes left behind: {leftovers.stdout}"


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[[str], Nginx]]:
    """Start nginx with the given ``location`` blocks: ``nginx(locations)``; stopped after the test."""
    started: list[Nginx] = []

    def start(locations: str) -> Nginx:
        server = Nginx(tmp_path, locations)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def app_file(tmp_path: Path) -> Callable[[str], Path]:
    """Write a WSGI app's source into tmp_path and return its path."""
    counter = iter(range(1000))

    def write(source: str) -> Path:
        path = tmp_path / f"app_{next(counter)}.py"
        path.write_text(source)
        return path

    return write


@pytest.fixture
def emperor(tmp_path: Path) -> Iterator[Callable[..., EmperorProcess]]:
    """Start an emperor: ``emperor(vassal_dir, *extra_args, wrap=[])``; always torn down."""
    from test_emperor import EmperorProcess  # the emperor tests' helper, imported only by them

    started: list[EmperorProcess] = []

    def start(vassals: Path, *args: str, wrap: list[str] | None = None) -> EmperorProcess:
        process = EmperorProcess(tmp_path, vassals, args, wrap or [])
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
    for process in started:
        wait_for(process.all_gone, 10, f"every vassal of {process.vassals} to be gone")


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

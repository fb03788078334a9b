"""Fixtures that start real binserve and nginx processes and always tear them down."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support import Nginx, Server

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

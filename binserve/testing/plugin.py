"""pytest fixtures that start real binserve, nginx and emperor processes and always stop them.

Opt in from a conftest.py: ``pytest_plugins = ["binserve.testing.plugin"]``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from binserve.testing.emperor import EmperorProcess
from binserve.testing.fixture_types import Serve, StartEmperor, StartNginx
from binserve.testing.processes import Nginx, Server, running, wait_for


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Start binserve: ``serve(*args, socket_path=None, env=None, ready=True, cwd=None)``.

    Each server is stopped after the test, which fails if a binserve process is left behind.
    """
    started: list[Server] = []

    def start(*args: str, **kwargs: Any) -> Server:
        server = Server(tmp_path, args, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
    leftovers = running(f"binserve --socket {tmp_path}")
    assert not leftovers, "binserve processes left behind:\n" + "\n".join(leftovers)


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[StartNginx]:
    """Start nginx in front of a server, or with the given ``location`` blocks: ``nginx(server)``."""
    started: list[Nginx] = []

    def start(locations: str | Server) -> Nginx:
        front = Nginx.in_front(tmp_path, locations)
        started.append(front)
        return front

    yield start
    for front in started:
        front.stop()


@pytest.fixture
def emperor(tmp_path: Path) -> Iterator[StartEmperor]:
    """Start binserve's emperor: ``emperor(vassal_dir, *extra_args, wrap=[])``; always torn down."""
    started: list[EmperorProcess] = []

    def start(vassals: Path, *args: str, wrap: Sequence[str] = ()) -> EmperorProcess:
        process = EmperorProcess(tmp_path, vassals, args, wrap)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
    for process in started:
        wait_for(process.all_gone, 10, f"every vassal of {process.vassals} to be gone")

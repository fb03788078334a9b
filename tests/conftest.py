"""The repository's fixtures: binserve.testing's (serve, nginx, emperor) and a few of its own."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from support import reachable_prefix

pytest_plugins = ["binserve.testing.plugin", "fault_report"]


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

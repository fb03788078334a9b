"""Fixtures shared by the tests of tests/workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from binserve.testing import EmperorProcess, wait_for

from support import APPS, AppFile, write_vassal

PID_APP = (APPS / "pid_app.py").read_text()


@pytest.fixture
def one_vassal(tmp_path: Path, app_file: AppFile) -> Iterator[tuple[EmperorProcess, Path]]:
    """An emperor serving one vassal, and that vassal's socket; torn down with every vassal gone."""
    vassals = tmp_path / "vassals"
    vassals.mkdir()
    sock = tmp_path / "one.sock"
    write_vassal(vassals, "one", sock, app_file(PID_APP), processes=1)
    emperor = EmperorProcess(tmp_path, vassals, (), [])
    try:
        emperor.wait_serving("one", sock)
        yield emperor, sock
    finally:
        emperor.stop()
        wait_for(emperor.all_gone, 10, "every vassal to be gone")

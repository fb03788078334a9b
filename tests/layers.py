"""The test layers: every test is in exactly one of unit, process, nginx and load.

``make test-fast`` (``pytest -m unit``) runs the unit layer in seconds; ``make test`` runs them
all. A test's layer is its own mark, else its module's ``pytestmark``, else what it uses says:
an nginx fixture puts it in nginx, a fixture that starts binserve or another process in
process, and nothing of the kind in unit. A unit test that starts a process fails and says
which layer it belongs in, so the fast layer stays fast and the marks stay true.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

LAYERS = {
    "unit": "pure code: no process, no nginx (seconds in all)",
    "process": "real binserve, uWSGI or emperor processes, real sockets and signals",
    "nginx": "a real nginx in front",
    "load": "many connections at once from a load generator (wrk)",
}
NGINX_FIXTURES = {"nginx"}
# binserve.testing.plugin's serve and emperor, and conftest.py's venv_interpreter and account (useradd).
PROCESS_FIXTURES = {"serve", "emperor", "venv_interpreter", "account"}


def pytest_configure(config: pytest.Config) -> None:
    for name, meaning in LAYERS.items():
        config.addinivalue_line("markers", f"{name}: {meaning}")


def layer_of(item: pytest.Item) -> str | None:
    """The test's layer mark (its own, else its module's: a test has one at most)."""
    return next((mark.name for mark in item.iter_markers() if mark.name in LAYERS), None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        marked = {mark.name for mark in item.iter_markers() if mark.name in LAYERS}
        if len(marked) > 1:  # -m selects on any mark: such a test would run in two layers
            raise pytest.UsageError(f"{item.nodeid} is marked {' and '.join(sorted(marked))}: one layer each")
        if layer_of(item) is None:
            used = set(getattr(item, "fixturenames", ()))
            layer = "nginx" if used & NGINX_FIXTURES else "process" if used & PROCESS_FIXTURES else "unit"
            item.add_marker(layer)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request: pytest.FixtureRequest) -> Iterator[None]:
    if layer_of(request.node) != "unit":
        yield
        return

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(
            f"{request.node.nodeid} is in the unit layer but starts a process: "
            "mark it process (pytestmark = pytest.mark.process)"
        )

    with pytest.MonkeyPatch.context() as patch:
        for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system"):
            patch.setattr(os, name, refuse)
        patch.setattr(subprocess.Popen, "_execute_child", refuse)
        yield

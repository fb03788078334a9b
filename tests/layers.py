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
    """The nearest layer mark: the test's own before its module's."""
    return next((mark.name for mark in item.iter_markers() if mark.name in LAYERS), None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
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
        patch.setattr(os, "fork", refuse)
        patch.setattr(os, "posix_spawn", refuse)
        patch.setattr(subprocess.Popen, "_execute_child", refuse)
        yield

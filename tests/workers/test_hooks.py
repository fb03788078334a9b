"""binserve.hooks: the order its functions run in, and a raising one logged while the others run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from binserve import hooks


@pytest.fixture(autouse=True)
def clean() -> Iterator[None]:
    saved = list(hooks._postfork), list(hooks._atexit)
    hooks._postfork.clear()
    hooks._atexit.clear()
    yield
    hooks._postfork[:], hooks._atexit[:] = saved


def test_postfork_runs_in_the_order_registered_and_atexit_last_registered_first(
    capfd: pytest.CaptureFixture[str],
) -> None:
    ran: list[str] = []
    first = hooks.postfork(lambda: ran.append("postfork 1"))
    hooks.postfork(lambda: ran.append("postfork 2"))
    hooks.atexit(lambda: ran.append("atexit 1"))

    @hooks.atexit
    def broken() -> None:
        raise RuntimeError("flush failed")

    hooks.atexit(lambda: ran.append("atexit 3"))
    assert callable(first)  # the decorators return the function
    hooks.run_postfork("worker 1 (pid 9)")
    hooks.run_atexit("worker 1 (pid 9)")
    assert ran == ["postfork 1", "postfork 2", "atexit 3", "atexit 1"]
    log = capfd.readouterr().err
    assert "worker 1 (pid 9): atexit hook " in log and ".<locals>.broken raised; going on:\nTraceback" in log
    assert "RuntimeError: flush failed" in log

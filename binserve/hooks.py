"""Code an app runs in each worker: after the fork, and before a graceful exit.

Shaped like uWSGI's Python hooks, so that an app moving from uWSGI changes one import:
``@binserve.hooks.postfork`` is ``@uwsgidecorators.postfork``, and ``@binserve.hooks.atexit``
is ``uwsgi.atexit = function`` (as a decorator, and any number of them). The app registers them
when it is imported (in the master, or in each worker with lazy-apps) or from a module named
by the ``import`` option; the worker runs them (binserve/worker.py):

* postfork functions once each worker has loaded the app and the ``import`` modules, before it
  accepts, in the order registered;
* atexit functions when the worker leaves gracefully, in the reverse order, before Python's own
  ``atexit`` handlers (which workers run too); never in the master.

A function that raises is logged with its traceback and the worker goes on, as uWSGI's does:
a failed postfork does not keep the worker from serving.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import TypeVar

from .log import log

Hook = TypeVar("Hook", bound=Callable[[], object])

_postfork: list[Callable[[], object]] = []
_atexit: list[Callable[[], object]] = []


def postfork(function: Hook) -> Hook:
    """Run ``function()`` in each worker after the fork, before it serves (uwsgidecorators.postfork)."""
    _postfork.append(function)
    return function


def atexit(function: Hook) -> Hook:
    """Run ``function()`` in each worker when it leaves gracefully (uwsgi.atexit)."""
    _atexit.append(function)
    return function


def run_postfork(who: str) -> None:
    """The postfork functions, in the order registered; ``who`` names the worker in the log."""
    _run(list(_postfork), who, "postfork")


def run_atexit(who: str) -> None:
    """The atexit functions, last registered first."""
    _run(list(reversed(_atexit)), who, "atexit")


def _run(functions: list[Callable[[], object]], who: str, kind: str) -> None:
    for function in functions:
        try:
            function()
        except BaseException:  # SystemExit too: a hook must not end the worker
            name = getattr(function, "__qualname__", repr(function))
            log(f"{who}: {kind} hook {name} raised; going on:\n" + traceback.format_exc().rstrip())

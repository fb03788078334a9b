"""binserve's emperor as a managed process: its state file, its vassals, their sockets."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from binserve.emperor.status import RUN_DIR, STATE_NAME, tyrant_state_path
from binserve.testing.client import ping
from binserve.testing.processes import Process, children, running, wait_for

# Seconds a vassal's workers get to finish before they are killed on a reload: short, so tests are.
MERCY = "5"


def leftovers(vassals: Path) -> str:
    """Processes still running a vassal file of this directory."""
    return "\n".join(running(f"binserve --ini {vassals}/"))


def remove_run_state(path: Path) -> None:
    """Remove a tyrant's state file, and the directory under /run the emperor made for it once empty."""
    path.unlink(missing_ok=True)
    try:
        path.parent.rmdir()
    except OSError:
        pass  # another emperor's state is still there


class EmperorProcess(Process):
    """``python -m binserve --emperor DIR *args`` (behind the ``wrap`` command prefix), logging to tmp_path.

    Vassals inherit its output, so their errors land in the same log.
    """

    def __init__(
        self, tmp_path: Path, vassals: Path, args: Sequence[str] = (), wrap: Sequence[str] = ()
    ) -> None:
        self.vassals = vassals
        command = [sys.executable, "-m", "binserve", "--emperor", str(vassals)]
        command += ["--worker-reload-mercy", MERCY, *args]
        log_path = tmp_path / f"emperor-{time.monotonic_ns()}.log"
        super().__init__([*wrap, *command], log_path, stdin=subprocess.DEVNULL)
        tyrant = "--emperor-tyrant" in args
        self.state_path = Path(tyrant_state_path(str(vassals)) if tyrant else vassals / STATE_NAME)

    def state(self) -> dict[str, Any]:
        """The state file (written atomically by the emperor); {} before the first one."""
        try:
            state: dict[str, Any] = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        return state

    def vassal(self, name: str) -> dict[str, Any] | None:
        """The state file's entry for ``name.ini``."""
        return next((v for v in self.state().get("vassals", []) if v["id"] == f"{name}.ini"), None)

    def state_of(self, name: str) -> str:
        """The state (running, waiting ...) the state file gives ``name.ini``; "" when absent."""
        entry = self.vassal(name)
        return entry["state"] if entry else ""

    def master(self, name: str) -> int | None:
        """The pid of vassal ``name``'s master, as the state file gives it."""
        entry = self.vassal(name)
        return entry["pid"] if entry else None

    def workers(self, name: str) -> set[int]:
        """The live workers of vassal ``name``."""
        return children(self.master(name))

    def check_running(self, what: str = "the emperor") -> None:
        super().check_running(what)

    def wait_serving(self, name: str, sock: Path, timeout: float = 20.0) -> None:
        """Poll until vassal ``name`` answers a ping; fail at once if it died or the emperor did."""

        def up() -> bool:
            self.check_running()
            if f"vassal {name}.ini died" in self.log():
                raise AssertionError(f"vassal {name}.ini died:\n{self.log()}")
            return ping(sock)

        wait_for(up, timeout, f"vassal {name} on {sock}")

    def all_gone(self) -> bool:
        """Whether no process runs a vassal file of this emperor's directory."""
        return not leftovers(self.vassals)

    def stop(self, grace: float | None = None) -> int | None:
        try:
            return super().stop(grace)
        finally:
            if self.state_path.parent == Path(RUN_DIR):
                remove_run_state(self.state_path)

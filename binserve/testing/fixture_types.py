"""The types of the plugin's fixtures, for test signatures; importable without pytest."""

from __future__ import annotations

from collections.abc import Callable

from binserve.testing.emperor import EmperorProcess
from binserve.testing.processes import Nginx, Server

Serve = Callable[..., Server]
StartNginx = Callable[[str | Server], Nginx]
StartEmperor = Callable[..., EmperorProcess]

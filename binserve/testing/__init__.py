"""Test WSGI apps through binserve for real: the uwsgi protocol, a real nginx, real processes.

``binserve.testing.client`` speaks the uwsgi protocol, ``binserve.testing.processes`` starts and
always stops binserve and nginx, ``binserve.testing.plugin`` holds the pytest fixtures (their
types, ``Serve``, ``StartNginx`` and ``StartEmperor``, are here for test signatures).
"""

from binserve.testing.client import (
    Response,
    connect,
    exchange,
    parse_response,
    ping,
    read_all,
    read_response,
    read_stats,
    request,
    request_packet,
    request_vars,
    send,
)
from binserve.testing.emperor import EmperorProcess
from binserve.testing.fixture_types import Serve, StartEmperor, StartNginx
from binserve.testing.processes import (
    Nginx,
    Process,
    Server,
    alive,
    answers_in_background,
    children,
    cmdline,
    executable,
    free_port,
    location,
    nginx_conf,
    nginx_executable,
    run_binserve,
    touch_ahead,
    uwsgi_params,
    wait_for,
)

__all__ = [
    "EmperorProcess",
    "Nginx",
    "Process",
    "Response",
    "Serve",
    "Server",
    "StartEmperor",
    "StartNginx",
    "alive",
    "answers_in_background",
    "children",
    "cmdline",
    "connect",
    "exchange",
    "executable",
    "free_port",
    "location",
    "nginx_conf",
    "nginx_executable",
    "parse_response",
    "ping",
    "read_all",
    "read_response",
    "read_stats",
    "request",
    "request_packet",
    "request_vars",
    "run_binserve",
    "send",
    "touch_ahead",
    "uwsgi_params",
    "wait_for",
]

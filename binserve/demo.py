"""The built-in demo app: ``binserve --module binserve.demo --socket /tmp/binserve-demo.sock``.

GET / says hello and shows what the server saw; POST /echo returns the body it got.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """A small WSGI app that shows binserve works."""
    path = environ.get("PATH_INFO", "")
    if path == "/echo":
        body = environ["wsgi.input"].read()
        start_response(
            "200 OK", [("Content-Type", environ.get("CONTENT_TYPE") or "application/octet-stream")]
        )
        return [body]
    lines = [
        "Hello from binserve!",
        f"method: {environ['REQUEST_METHOD']}",
        f"path: {environ['SCRIPT_NAME']}{path}",
        f"query: {environ['QUERY_STRING']}",
        f"scheme: {environ['wsgi.url_scheme']}",
    ]
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return [("\n".join(lines) + "\n").encode()]

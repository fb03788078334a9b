"""The WSGI application every server is benchmarked with (``binserve.tools.bench_app:application``).

Routes:

* ``/``      hello world: a 14-byte body with Content-Length.
* ``/1m``    a 1,000,000-byte body, one bytes object built at import time.
* ``/echo``  reads ``wsgi.input`` fully (CONTENT_LENGTH bytes) and returns it.
* anything else: 404, so a misrouted request is an error in the results rather than a fast hello.

Every response carries Content-Length: without it gunicorn's uwsgi mode answers with
``Transfer-Encoding: chunked`` and nginx would hand that framing to the client, which would
compare servers on different wire formats.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

HELLO = b"Hello, World!\n"

ONE_MB_SIZE = 1_000_000
# Built once, at import, so the measured cost is the server moving bytes, not the app making them. A
# repeating 0..255 pattern rather than one repeated byte lets validation catch reordered or dropped chunks.
ONE_MB = (bytes(range(256)) * (ONE_MB_SIZE // 256 + 1))[:ONE_MB_SIZE]

StartResponse = Callable[..., Any]


def _respond(start_response: StartResponse, status: str, body: bytes) -> list[bytes]:
    start_response(
        status,
        [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))],
    )
    return [body]


def _read_body(environ: dict[str, Any]) -> bytes:
    """The whole request body: CONTENT_LENGTH bytes of wsgi.input.

    PEP 3333 lets ``read(n)`` return fewer bytes than asked, so read until the length is reached or
    the stream ends; nginx sends CONTENT_LENGTH as an empty string when there is no body.
    """
    try:
        remaining = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        remaining = 0
    stream = environ["wsgi.input"]
    chunks = []
    while remaining > 0:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The benchmark app: hello world on ``/``, 1 MB on ``/1m``, body echo on ``/echo``."""
    path = environ.get("PATH_INFO", "")
    if path == "/":
        return _respond(start_response, "200 OK", HELLO)
    if path == "/1m":
        return _respond(start_response, "200 OK", ONE_MB)
    if path == "/echo":
        return _respond(start_response, "200 OK", _read_body(environ))
    return _respond(start_response, "404 Not Found", b"not found\n")

"""An echo app wrapped in ``wsgiref.validate.validator``: any PEP 3333 violation by the
server raises AssertionError inside the worker (a 500 and a traceback in the log).

It returns the body it read through wsgi.input, then the request's X-Dup header, so the
tests check body integrity and repeated-header merging through the validator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.validate import validator


def echo(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    stream = environ["wsgi.input"]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    parts = []
    # The validator allows read() only with a size argument.
    while length > 0:
        block = stream.read(min(length, 65536))
        if not block:
            break
        parts.append(block)
        length -= len(block)
    body = b"".join(parts)
    start_response(
        "200 OK",
        [
            ("Content-Type", "application/octet-stream"),
            ("X-Method", environ["REQUEST_METHOD"]),
            ("X-Dup-Seen", environ.get("HTTP_X_DUP", "")),
            ("Content-Length", str(len(body))),
        ],
    )
    return [body]


application = validator(echo)

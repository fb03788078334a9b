"""An echo app wrapped in ``wsgiref.validate.validator``: any PEP 3333 violation by the
server raises AssertionError inside the worker (a 500 and a traceback in the log).

It returns the body it read through wsgi.input, then the request's X-Dup header, so the
tests check body integrity and repeated-header merging through the validator.

``?mode=`` chooses how the body is read, so every reading method of wsgi.input goes through
the validator's InputWrapper (which checks each call's arguments and that bytes come back):

- ``read``: read(size) in 64 KiB blocks, up to CONTENT_LENGTH (the default);
- ``readline``: readline() until b"";
- ``readline-size``: readline(LINE_LIMIT) until b"";
- ``readlines``: readlines() once;
- ``readlines-hint``: readlines(LINES_HINT) until [];
- ``iter``: ``for line in wsgi.input``;
- ``mixed``: readline(), read(MIXED_READ) and readline(LINE_LIMIT) in turn, until b"".

In every mode but ``read`` and ``mixed`` the app checks each piece is a line as PEP 3333 and
io define it (ends with b"\\n" unless it is the last, no b"\\n" before its end, at most the
limit asked for) and answers the number of pieces in X-Pieces. A broken piece is a
ValueError, so a 500 and a traceback in the log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs
from wsgiref.validate import validator

LINE_LIMIT = 1000
LINES_HINT = 50_000
MIXED_READ = 777


def read_blocks(stream: Any, length: int) -> list[bytes]:
    parts = []
    # The validator allows read() only with a size argument.
    while length > 0:
        block = stream.read(min(length, 65536))
        if not block:
            break
        parts.append(block)
        length -= len(block)
    return parts


def read_lines(stream: Any, mode: str) -> list[bytes]:
    if mode == "readline":
        return list(iter(stream.readline, b""))
    if mode == "readline-size":
        return list(iter(lambda: stream.readline(LINE_LIMIT), b""))
    if mode == "readlines":
        return stream.readlines()
    if mode == "readlines-hint":
        lines = []
        for batch in iter(lambda: stream.readlines(LINES_HINT), []):
            lines.extend(batch)
        return lines
    if mode == "iter":
        return [line for line in stream]
    raise ValueError(f"unknown mode {mode!r}")


def check_lines(lines: list[bytes], limit: int | None) -> None:
    for i, line in enumerate(lines):
        if not line:
            raise ValueError(f"piece {i} of {len(lines)} is empty")
        if b"\n" in line[:-1]:
            raise ValueError(f"piece {i} of {len(lines)} has a newline before its end")
        if limit is not None and len(line) > limit:
            raise ValueError(f"piece {i} is {len(line)} bytes, more than the {limit} asked for")
        ends_short = limit is None or len(line) < limit
        if i < len(lines) - 1 and ends_short and not line.endswith(b"\n"):
            raise ValueError(f"piece {i} of {len(lines)} does not end with a newline")


def read_mixed(stream: Any) -> list[bytes]:
    parts: list[bytes] = []
    step = 0
    while True:
        if step % 3 == 0:
            part = stream.readline()
        elif step % 3 == 1:
            part = stream.read(MIXED_READ)
        else:
            part = stream.readline(LINE_LIMIT)
        if not part:
            return parts
        parts.append(part)
        step += 1


def echo(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    stream = environ["wsgi.input"]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    mode = parse_qs(environ.get("QUERY_STRING", "")).get("mode", ["read"])[0]
    if mode == "read":
        parts = read_blocks(stream, length)
    elif mode == "mixed":
        parts = read_mixed(stream)
    else:
        parts = read_lines(stream, mode)
        check_lines(parts, LINE_LIMIT if mode == "readline-size" else None)
    body = b"".join(parts)
    start_response(
        "200 OK",
        [
            ("Content-Type", "application/octet-stream"),
            ("X-Method", environ["REQUEST_METHOD"]),
            ("X-Mode", mode),
            ("X-Pieces", str(len(parts))),
            ("X-Dup-Seen", environ.get("HTTP_X_DUP", "")),
            ("Content-Length", str(len(body))),
        ],
    )
    return [body]


application = validator(echo)

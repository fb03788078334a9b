"""A plain WSGI app with one route per server behaviour the integration tests check.

Served with ``--wsgi-file``; ``BIG_FILE`` (set with ``--env``) names the file /file sends.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

StartResponse = Callable[..., Any]

TEXT = [("Content-Type", "text/plain")]
STREAM_CHUNKS = 2000


def stream_chunk(i: int) -> bytes:
    """Chunk ``i`` of /stream: sizes vary from 1 to 997 bytes so no two neighbours look alike."""
    return (b"%06d:" % i) + bytes([65 + i % 26]) * (i * 7 % 997)


def bytesio_payload() -> bytes:
    """What /bytesio sends: 1 MiB that is not one repeated byte."""
    return bytes(range(256)) * 4096


def many_items() -> list[bytes]:
    """What /many-items returns: a list of 5000 small bytes objects (one per line, as apps build them)."""
    return [b"line %05d\n" % i for i in range(5000)]


def upload(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    digest = hashlib.sha256()
    size = 0
    stream = environ["wsgi.input"]
    while True:
        block = stream.read(65536)
        if not block:
            break
        digest.update(block)
        size += len(block)
    start_response("200 OK", TEXT)
    return [f"{size} {digest.hexdigest()}".encode()]


def stream(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", TEXT)
    for i in range(STREAM_CHUNKS):
        yield stream_chunk(i)


def raise_late(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
    headers = list(TEXT)
    if environ.get("QUERY_STRING") == "length":
        headers.append(("Content-Length", "1000"))
    start_response("200 OK", headers)
    yield b"first chunk;"
    raise RuntimeError("late-failure-marker")


def legacy_write(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    write = start_response("200 OK", TEXT)
    write(b"written-1;")
    write(b"written-2;")
    return [b"returned-3"]


def start_twice(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", TEXT)
    start_response("201 Created", TEXT)
    return [b"should not be sent"]


def exc_info_replaces(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", TEXT)
    try:
        raise KeyError("handled-by-the-app")
    except KeyError:
        start_response(
            "503 Service Unavailable", [("Content-Type", "text/plain"), ("X-Handled", "yes")], sys.exc_info()
        )
    return [b"the app handled its own error"]


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/upload":
        return upload(environ, start_response)
    if path == "/file":
        wrapper = environ["wsgi.file_wrapper"]
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return wrapper(open(os.environ["BIG_FILE"], "rb"))
    if path == "/bytesio":
        wrapper = environ["wsgi.file_wrapper"]
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return wrapper(io.BytesIO(bytesio_payload()), 65536)
    if path == "/stream":
        return stream(environ, start_response)
    if path == "/header":
        value = environ.get("HTTP_X_BIG", "")
        start_response("200 OK", TEXT)
        return [f"{len(value)} {hashlib.sha256(value.encode('latin-1')).hexdigest()}".encode()]
    if path == "/raise":
        raise ValueError("early-failure-marker")
    if path == "/raise-late":
        return raise_late(environ, start_response)
    if path == "/crlf":
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Split", "a\r\nInjected: yes")])
        return [b"should not be sent"]
    if path == "/bad-name":
        start_response("200 OK", [("Content-Type", "text/plain"), ("X Bad:Name", "value")])
        return [b"should not be sent"]
    if path == "/twice":
        return start_twice(environ, start_response)
    if path == "/exc-info":
        return exc_info_replaces(environ, start_response)
    if path == "/write":
        return legacy_write(environ, start_response)
    if path == "/single":
        start_response("200 OK", TEXT)
        return [b"one bytes object"]
    if path == "/many-items":
        start_response("200 OK", TEXT)
        return many_items()
    if path == "/pid":
        start_response("200 OK", TEXT)
        return [str(os.getpid()).encode()]
    start_response("404 Not Found", TEXT)
    return [b"no such route"]

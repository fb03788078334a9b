"""PEP 3333 behaviour of binserve through real nginx (and, where nginx would hide it, on the raw socket).

One binserve serving tests/apps/wsgi_app.py and one serving the validator-wrapped echo app
(tests/apps/validator_app.py), both with two workers, sit behind one nginx for the module.
The validated server gets its own log, so "no Traceback in the log" means exactly that no
request to it failed.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import itertools
import os
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from binserve.testing import Nginx, Server, exchange, location, parse_response, request_packet, wait_for
from binserve.testing.processes import running

from support import APPS

pytestmark = pytest.mark.nginx  # the stack behind nginx is a module fixture, started before any test

Response = tuple[int, dict[str, str], bytes]
BIG_FILE_SIZE = 50 * 1024 * 1024


def load_app_module(name: str = "wsgi_app") -> ModuleType:
    """tests/apps/<name>.py as a module, for the expected bodies and limits it defines."""
    spec = importlib.util.spec_from_file_location(f"{name}_for_tests", APPS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wsgi_app = load_app_module()
validator_app = load_app_module("validator_app")


@dataclass
class Stack:
    app: Server
    validated: Server
    front: Nginx
    big_file: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("wsgi")
    big_file = tmp / "big.bin"
    big_file.write_bytes(os.urandom(BIG_FILE_SIZE))
    started: list[Server | Nginx] = []
    try:
        app = Server(
            tmp,
            ["--wsgi-file", str(APPS / "wsgi_app.py"), "--processes", "2", "--env", f"BIG_FILE={big_file}"],
            socket_path=tmp / "app.sock",
            ready=False,
        )
        started.append(app)
        checked = Server(
            tmp,
            ["--wsgi-file", str(APPS / "validator_app.py"), "--processes", "2"],
            socket_path=tmp / "validated.sock",
            ready=False,
        )
        started.append(checked)
        app.wait_ready()
        checked.wait_ready()
        front = Nginx.in_front(tmp, location(app.socket) + location(checked.socket, "/validated/"))
        started.append(front)
        yield Stack(app, checked, front, big_file)
    finally:
        for proc in reversed(started):
            proc.stop()
    leftovers = running(f"binserve --socket {tmp}")
    assert not leftovers, "binserve processes left behind:\n" + "\n".join(leftovers)
    # Complete now that the workers have exited: nothing the validator checks late (a response
    # garbage-collected without close()) can have slipped past the per-test checks.
    validated_log = checked.log()
    for word in VALIDATOR_PROBLEMS:
        assert word not in validated_log, f"{word} in the validated server's log:\n{validated_log}"


def direct(sock: Path, path: str, method: str = "GET", protocol: str = "HTTP/1.1") -> bytes:
    """Send one uwsgi packet straight to binserve (no nginx) and return every byte until EOF."""
    return exchange(sock, request_packet(path, method, protocol=protocol))


def chunked_post(front: Nginx, path: str, chunks: list[bytes]) -> Response:
    """POST with Transfer-Encoding: chunked from the client (nginx de-chunks it for binserve)."""
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=30)
    try:
        conn.request(
            "POST", path, body=iter(chunks), headers={"Transfer-Encoding": "chunked"}, encode_chunked=True
        )
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def assert_worker_lives(server: Server, pids: set[int], front: Nginx) -> None:
    """The same workers still run and answer (none died and was respawned)."""
    for _ in range(4):
        status, _, body = front.request("GET", "/pid")
        assert status == 200
        assert int(body) in pids
    assert server.worker_pids() == pids


# --- the validator: binserve breaks no PEP 3333 rule for these requests -------------------------

VALIDATOR_PROBLEMS = ("Traceback", "AssertionError", "WSGIWarning", "Error")


def validated(stack: Stack, send: Callable[[], Response]) -> Response:
    """Make one request to the validated app; return once its log line is written and the log is clean.

    The worker writes the request's log line after calling the response's close(), so waiting
    for it makes the validator's checks of close() part of this request.
    """
    before = stack.validated.log().count(" => ")
    response = send()
    wait_for(lambda: stack.validated.log().count(" => ") > before, 10, "the request's log line")
    log = stack.validated.log()
    for word in VALIDATOR_PROBLEMS:
        assert word not in log, f"{word} in the validated server's log:\n{log}"
    return response


READ_MODES = ["read", "readline", "readline-size", "readlines", "readlines-hint", "iter", "mixed"]


def lined_body(seed: int) -> bytes:
    """About 300 kB of lines of random bytes: empty lines, CRLF endings, lengths around the app's
    readline limit, one line longer than a 64 KiB socket read, and a last line without b"\\n"."""
    rng = random.Random(seed)
    limit = validator_app.LINE_LIMIT
    lines = []
    total = 0
    while total < 200_000:
        size = rng.choice([0, 1, 2, 79, limit - 2, limit - 1, limit, limit + 1, rng.randrange(4 * limit)])
        line = rng.randbytes(size).replace(b"\n", b"n") + rng.choice([b"\n", b"\r\n"])
        lines.append(line)
        total += len(line)
    lines.insert(len(lines) // 2, b"L" * 100_000 + b"\n")
    return b"".join(lines) + b"the last line has no newline"


def expected_pieces(body: bytes, mode: str) -> int | None:
    """How many pieces the validator app reads ``body`` in (X-Pieces); None where not checked."""
    lines = re.findall(rb"[^\n]*\n|[^\n]+\Z", body)  # what readline() gives (splitlines() also cuts at \r)
    if mode in ("readline", "readlines", "readlines-hint", "iter"):
        return len(lines)
    if mode == "readline-size":
        limit = validator_app.LINE_LIMIT
        return sum(-(-len(line) // limit) for line in lines)
    return None


def check_echo(response: Response, method: str, mode: str, sent: bytes) -> None:
    status, headers, body = response
    assert (status, headers["x-method"], headers["x-mode"]) == (200, method, mode)
    assert len(body) == len(sent)
    assert body == sent, "the echo differs from the body sent"
    pieces = expected_pieces(sent, mode)
    if pieces is not None:
        assert int(headers["x-pieces"]) == pieces


@pytest.mark.parametrize("mode", READ_MODES)
def test_validator_get(stack: Stack, mode: str) -> None:
    response = validated(stack, lambda: stack.front.request("GET", f"/validated/echo?x=1&mode={mode}"))
    check_echo(response, "GET", mode, b"")


@pytest.mark.parametrize("mode", READ_MODES)
def test_validator_post_body_integrity(stack: Stack, mode: str) -> None:
    payload = lined_body(READ_MODES.index(mode))
    response = validated(
        stack,
        lambda: stack.front.request(
            "POST",
            f"/validated/echo?mode={mode}",
            body=payload,
            headers={"Content-Type": "application/octet-stream"},
        ),
    )
    check_echo(response, "POST", mode, payload)


def test_validator_head(stack: Stack) -> None:
    status, headers, body = validated(stack, lambda: stack.front.request("HEAD", "/validated/echo"))
    assert (status, headers["x-method"], headers["content-length"], body) == (200, "HEAD", "0", b"")


@pytest.mark.parametrize("mode", READ_MODES)
def test_validator_chunked_upload(stack: Stack, mode: str) -> None:
    payload = lined_body(100 + READ_MODES.index(mode))
    cuts = [0, 1, 11, 4107, 74_107, 74_110, len(payload)]  # chunks of 1, 10, 4096, 70000, 3 and the rest
    chunks = [payload[start:end] for start, end in itertools.pairwise(cuts)]
    response = validated(stack, lambda: chunked_post(stack.front, f"/validated/echo?mode={mode}", chunks))
    check_echo(response, "POST", mode, payload)


def test_validator_repeated_headers(stack: Stack) -> None:
    status, headers, _ = validated(
        stack, lambda: stack.front.request("GET", "/validated/echo", headers=[("X-Dup", "a"), ("X-Dup", "b")])
    )
    assert status == 200
    assert headers["x-dup-seen"] == "a, b"


# --- large bodies both ways ---------------------------------------------------------------------


def test_10mb_upload_arrives_byte_identical(stack: Stack) -> None:
    payload = os.urandom(10 * 1024 * 1024)
    status, _, body = stack.front.request("POST", "/upload", body=payload)
    assert status == 200
    assert body.decode() == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"


def test_50mb_file_wrapper_download_byte_identical(stack: Stack) -> None:
    status, headers, body = stack.front.request("GET", "/file")
    assert status == 200
    assert headers["content-length"] == str(BIG_FILE_SIZE)
    assert len(body) == BIG_FILE_SIZE
    assert hashlib.sha256(body).digest() == hashlib.sha256(stack.big_file.read_bytes()).digest()


def test_file_wrapper_over_bytesio(stack: Stack) -> None:
    status, _, body = stack.front.request("GET", "/bytesio")
    assert status == 200
    assert body == wsgi_app.bytesio_payload()


def test_streamed_generator_arrives_whole(stack: Stack) -> None:
    expected = b"".join(wsgi_app.stream_chunk(i) for i in range(wsgi_app.STREAM_CHUNKS))
    status, headers, body = stack.front.request("GET", "/stream")
    assert status == 200
    assert body == expected


def test_6kb_request_header_is_served(stack: Stack) -> None:
    value = "".join(chr(33 + i % 90) for i in range(6 * 1024))
    status, _, body = stack.front.request("GET", "/header", headers={"X-Big": value})
    assert status == 200
    assert body.decode() == f"{len(value)} {hashlib.sha256(value.encode()).hexdigest()}"


# --- errors: a 500 (or a closed connection), a traceback or a reason in the log, the worker lives ---


def test_app_exception_gives_500_and_worker_lives(stack: Stack) -> None:
    pids = stack.app.worker_pids()
    assert len(pids) == 2
    status, _, _ = stack.front.request("GET", "/raise")
    assert status == 500
    log = stack.app.log()
    assert "Traceback" in log
    assert "ValueError: early-failure-marker" in log
    assert_worker_lives(stack.app, pids, stack.front)


@pytest.mark.parametrize(
    ("path", "header"),
    [("/crlf", "X-Split"), ("/bad-name", "X Bad:Name")],
    ids=["crlf-in-value", "bad-name"],
)
def test_invalid_response_header_gives_500(stack: Stack, path: str, header: str) -> None:
    pids = stack.app.worker_pids()
    status, headers, body = stack.front.request("GET", path)
    assert status == 500
    assert "injected" not in headers and b"should not be sent" not in body
    lines = [line for line in stack.app.log().splitlines() if header in line]
    assert any("header" in line for line in lines), f"no reason naming {header!r} in the log"
    assert_worker_lives(stack.app, pids, stack.front)


def test_exception_after_headers_closes_connection(stack: Stack) -> None:
    pids = stack.app.worker_pids()
    reply = parse_response(direct(stack.app.socket, "/raise-late"))
    assert reply.status_line == "HTTP/1.1 200 OK"
    # What was sent stays; nothing follows it (no 500 page glued on); recv() saw EOF.
    assert reply.body == b"first chunk;"
    assert "transfer-encoding" not in reply.header_map
    log = stack.app.log()
    assert "RuntimeError: late-failure-marker" in log
    assert "Traceback" in log
    # Through nginx: the client gets what was sent and the end of the response.
    status, _, body = stack.front.request("GET", "/raise-late")
    assert (status, body) == (200, b"first chunk;")
    assert_worker_lives(stack.app, pids, stack.front)


def test_exception_after_headers_with_length_is_truncated_for_the_client(stack: Stack) -> None:
    # The app promised 1000 bytes: nginx notices the early close and so does the client.
    with pytest.raises(http.client.IncompleteRead):
        stack.front.request("GET", "/raise-late?length")
    assert "upstream prematurely closed connection" in stack.front.error_log()


# --- start_response semantics --------------------------------------------------------------------


def test_start_response_twice_without_exc_info_is_an_error(stack: Stack) -> None:
    status, _, body = stack.front.request("GET", "/twice")
    assert status == 500
    assert b"should not be sent" not in body
    assert "start_response called a second time" in stack.app.log()


def test_start_response_with_exc_info_before_headers_replaces_status(stack: Stack) -> None:
    status, headers, body = stack.front.request("GET", "/exc-info")
    assert status == 503
    assert headers["x-handled"] == "yes"
    assert body == b"the app handled its own error"


def test_legacy_write_callable(stack: Stack) -> None:
    status, _, body = stack.front.request("GET", "/write")
    assert (status, body) == (200, b"written-1;written-2;returned-3")


# --- HEAD, Content-Length, the status line, no chunked framing ------------------------------------


@pytest.mark.parametrize(
    ("path", "length"), [("/single", 16), ("/file", BIG_FILE_SIZE)], ids=["list", "file_wrapper"]
)
def test_head_has_gets_headers_and_no_body(stack: Stack, path: str, length: int) -> None:
    # ``length`` is what GET answers with: see test_content_length_added_for_a_single_bytes_object
    # and test_50mb_file_wrapper_download_byte_identical.
    status, headers, body = stack.front.request("HEAD", path)
    assert status == 200
    assert headers["content-length"] == str(length)
    assert headers["content-type"] in ("text/plain", "application/octet-stream")
    assert body == b""
    # On the wire too: nginx reads a HEAD answer to EOF and would drop a body silently.
    raw = parse_response(direct(stack.app.socket, path, method="HEAD"))
    assert raw.status_line == "HTTP/1.1 200 OK"
    assert raw.header_map["content-length"] == str(length)
    assert raw.body == b""


def test_head_of_a_streamed_response_has_no_body(stack: Stack) -> None:
    for path in ("/stream", "/write"):
        raw = parse_response(direct(stack.app.socket, path, method="HEAD"))
        assert raw.status_line == "HTTP/1.1 200 OK"
        assert raw.header_map["content-type"] == "text/plain"
        assert raw.body == b""


def test_content_length_added_for_a_single_bytes_object(stack: Stack) -> None:
    status, headers, body = stack.front.request("GET", "/single")
    assert (status, body) == (200, b"one bytes object")
    assert headers["content-length"] == "16"
    raw = parse_response(direct(stack.app.socket, "/single"))
    assert raw.header_map["content-length"] == "16"
    assert raw.body == b"one bytes object"


def test_content_length_for_a_list_of_many_items(stack: Stack) -> None:
    # More items than one sendmsg() takes (IOV_MAX is 1024 on Linux).
    expected = b"".join(wsgi_app.many_items())
    status, headers, body = stack.front.request("GET", "/many-items")
    assert status == 200
    assert body == expected
    assert headers["content-length"] == str(len(expected))


@pytest.mark.parametrize("protocol", ["HTTP/1.0", "HTTP/1.1"])
@pytest.mark.parametrize(("path", "status"), [("/single", "200 OK"), ("/raise", "500 Internal Server Error")])
def test_status_line_uses_the_request_protocol(stack: Stack, protocol: str, path: str, status: str) -> None:
    raw = direct(stack.app.socket, path, protocol=protocol)
    assert raw.startswith(f"{protocol} {status}\r\n".encode())


@pytest.mark.parametrize("path", ["/stream", "/write", "/bytesio", "/file", "/raise-late"])
def test_response_never_chunked(stack: Stack, path: str) -> None:
    reply = parse_response(direct(stack.app.socket, path))
    assert reply.status_line == "HTTP/1.1 200 OK"
    assert "transfer-encoding" not in reply.header_map
    body = reply.body
    if path == "/stream":
        assert body == b"".join(wsgi_app.stream_chunk(i) for i in range(wsgi_app.STREAM_CHUNKS))

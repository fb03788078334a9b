"""Faulty peers: a worker is never held past socket-timeout by a client that misbehaves.

Every test talks to binserve's unix socket with raw uwsgi packets (no nginx), so the peer can
misbehave on purpose: never read the answer, stall in the middle of a body, trickle bytes.
Synchronisation is by polling (the server's log, poll() on the socket), never by sleeping; the
only sleep is the trickling client's, which is the scenario itself.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from pathlib import Path

import pytest

from binserve.protocol import encode_request
from binserve.testing import (
    Serve,
    connect,
    exchange,
    parse_response,
    read_all,
    request,
    request_packet,
    wait_for,
)

from support import AppFile, logged

TOTAL = 8 * 1024 * 1024
CHUNK = 32 * 1024


APP = f"""
TOTAL = {TOTAL}
CHUNK = b"s" * {CHUNK}


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/stream":  # no Content-Length: streamed chunk by chunk
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (CHUNK for _ in range(TOTAL // len(CHUNK)))
    if path == "/list":  # one 8 MB body, Content-Length added by the server
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [b"l" * TOTAL]
    if path == "/204":
        start_response("204 No Content", [])
        return []
    if path == "/304":
        start_response("304 Not Modified", [("ETag", '"v1"')])
        return []
    if path == "/abc":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"abc"]
    # Everything else, POSTs included: the body is never read.
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
"""


# -- helpers -------------------------------------------------------------------------------------
def get(path: Path, url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """A GET straight over the uwsgi protocol: (status, body)."""
    reply = request(path, url, timeout=timeout)
    return reply.status, reply.body


def peer_closed(sock: socket.socket) -> bool:
    """Whether the server has closed its end completely (POLLHUP; a half-close does not raise it)."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLHUP)
    return any(mask & select.POLLHUP for _, mask in poller.poll(0))


@pytest.fixture
def app(app_file: AppFile) -> Path:
    return app_file(APP)


# -- 1. a client that never reads the response ---------------------------------------------------
@pytest.mark.parametrize("url", ["/stream", "/list"], ids=["streamed-generator", "single-8MB-list"])
def test_worker_gives_up_on_a_client_that_never_reads(serve: Serve, app: Path, url: str) -> None:
    server = serve("--wsgi-file", str(app), "--socket-timeout", "1", "--processes", "1")
    pids = server.wait_workers(1)
    with connect(server.socket) as stuck:
        stuck.sendall(request_packet(url))
        started = time.monotonic()
        wait_for(lambda: "timeout writing the response" in server.log(), 10, "the write timeout")
        elapsed = time.monotonic() - started
        assert elapsed < 3, f"the worker held a non-reading client for {elapsed:.1f} s (socket-timeout 1)"
        # The stuck client still holds its socket, unread; the only worker must be free anyway.
        assert get(server.socket, "/after", timeout=5) == (200, b"ok")
        assert server.worker_pids() == pids
        # What the stuck client gets, once it reads, is a cut answer ended by the server's close.
        stuck.settimeout(5)
        reply = parse_response(read_all(stuck))
        assert reply.status == 200
        assert 0 < len(reply.body) < TOTAL
    log = server.log()
    lines = [line for line in log.splitlines() if "timeout writing the response" in line]
    assert len(lines) == 1, lines
    assert f"during GET {url}" in lines[0]
    assert "Traceback" not in log


# -- 2. a small body sent with the header, ignored by the app ------------------------------------
def test_small_ignored_body_sent_with_the_header_does_not_hold_the_connection(
    serve: Serve, app: Path
) -> None:
    server = serve("--wsgi-file", str(app), "--socket-timeout", "5")
    server.wait_workers(1)
    packet = request_packet("/ignore", "POST", body=b"b" * 1000, CONTENT_TYPE="text/plain")
    started = time.monotonic()
    with connect(server.socket) as sock:
        sock.sendall(packet)  # header, vars and the whole body in one write
        reply = parse_response(read_all(sock))
        assert (reply.status, reply.body) == (200, b"ok")
        # The client keeps its end open (an EOF may be only the server's half-close): the server
        # must close the connection by itself, not wait for body bytes that all came already.
        wait_for(lambda: peer_closed(sock), 8, "the server to close the connection")
        elapsed = time.monotonic() - started
    assert elapsed < 2, f"the connection was closed after {elapsed:.2f} s (socket-timeout 5)"
    wait_for(lambda: logged(server.log(), "POST", "/ignore", 200), 5, "the request line in the log")
    assert "could not drain" not in server.log()
    assert get(server.socket, "/after") == (200, b"ok")


# -- 3. a refused packet, then a peer trickling bytes --------------------------------------------
def test_trickling_peer_after_a_refused_packet_does_not_hold_the_worker(serve: Serve, app: Path) -> None:
    server = serve(
        "--wsgi-file", str(app), "--buffer-size", "100", "--processes", "1", "--socket-timeout", "1"
    )
    pids = server.wait_workers(1)
    packet = encode_request({"PATH_INFO": "p" * 242})  # 2 + 9 + 2 + 242 = 255 bytes of vars
    assert packet[1:3] == (255).to_bytes(2, "little")

    stop = threading.Event()
    closed: list[BaseException] = []

    def trickle(sock: socket.socket) -> None:
        while not stop.is_set():
            try:
                sock.send(b"x")
            except OSError as exc:
                closed.append(exc)
                return
            time.sleep(0.3)  # the scenario: one byte every 0.3 s

    with connect(server.socket) as refused:
        refused.sendall(packet)
        answer = read_all(refused)  # the 431, then the server's half-close
        assert answer.startswith(b"HTTP/1.0 431 "), answer
        thread = threading.Thread(target=trickle, args=(refused,), daemon=True)
        thread.start()
        try:
            started = time.monotonic()
            small = encode_request({"REQUEST_METHOD": "GET", "PATH_INFO": "/meanwhile"})  # fits 100 bytes
            reply = parse_response(exchange(server.socket, small))
            assert (reply.status, reply.body) == (200, b"ok")
            elapsed = time.monotonic() - started
            assert elapsed < 2.5, f"the request waited {elapsed:.2f} s behind a trickling peer"
            wait_for(lambda: bool(closed), 5, "the server to close the trickling connection")
        finally:
            stop.set()
            thread.join(5)
        assert not thread.is_alive()
    assert isinstance(closed[0], (BrokenPipeError, ConnectionResetError)), closed
    assert "invalid request block size: 255 (max 100)" in server.log()
    assert server.worker_pids() == pids


# -- 4. a big body the app ignores, of which the client sends 10 bytes and stalls ----------------
def test_stalled_unread_body_is_closed_within_socket_timeout(serve: Serve, app: Path) -> None:
    server = serve("--wsgi-file", str(app), "--socket-timeout", "1")
    pids = server.wait_workers(1)
    head = request_packet("/ignore", "POST", CONTENT_LENGTH="100000")
    with connect(server.socket) as sock:
        sock.sendall(head + b"0123456789")  # 10 of the announced 100000 bytes, then nothing
        started = time.monotonic()
        reply = parse_response(read_all(sock))
        assert (reply.status, reply.body) == (200, b"ok")
        wait_for(lambda: peer_closed(sock), 5, "the server to close the stalled connection")
        elapsed = time.monotonic() - started
    assert elapsed < 2, f"the stalled connection was held {elapsed:.2f} s (socket-timeout 1)"
    assert get(server.socket, "/next") == (200, b"ok")
    assert server.worker_pids() == pids
    log = server.log()
    assert "Traceback" not in log
    assert "could not drain" not in log  # running out of time is not an error


# -- 5. no Content-Length on 204 and 304 ---------------------------------------------------------
def test_no_content_length_on_204_and_304(serve: Serve, app: Path) -> None:
    server = serve("--wsgi-file", str(app))
    for url, code in (("/204", 204), ("/304", 304)):
        reply = request(server.socket, url)
        assert reply.status == code
        assert reply.body == b""
        lines = reply.header_lines
        assert not [line for line in lines if line.lower().startswith("content-length:")], lines
    reply = request(server.socket, "/abc")
    assert (reply.status, reply.body) == (200, b"abc")
    assert "Content-Length: 3" in reply.header_lines, reply.header_lines

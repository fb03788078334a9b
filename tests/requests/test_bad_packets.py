"""Bad packets sent straight to a running binserve: oversized vars blocks, pings, unsupported
modifiers, stalled headers and malformed packets are answered or closed, logged, and the worker
serves on (the app, which records its calls, never sees them).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from binserve.protocol import PING, PONG, encode_header
from binserve.testing import Serve, StartNginx, connect, exchange, free_port, read_all, request_packet

from support import calls, status_body
from support import get_bytes as get


def test_vars_block_over_buffer_size_gets_431_and_an_orderly_close(
    serve: Serve, nginx: StartNginx, process_app: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"
    server = serve("--wsgi-file", str(process_app), "--buffer-size", "4096", "--socket", address)
    packet = request_packet("/big", HTTP_X_BIG="b" * 6000)
    size = len(packet) - 4
    for where in (address, server.socket):
        with connect(where) as sock:
            sock.sendall(packet)
            first = sock.recv(65536)  # a reset would raise here or in read_all
            rest = read_all(sock)
        assert first.startswith(b"HTTP/1.0 431 "), first
        assert rest.endswith(b"bad uwsgi request\n") or first.endswith(b"bad uwsgi request\n")
    log = server.log()
    assert log.count(f"invalid request block size: {size} (max 4096)") == 2
    assert get(address, "/after") == (200, b"ok")

    front = nginx(server)
    status, _, body = front.request("GET", "/big-through-nginx", headers={"X-Big": "c" * 6000})
    assert status == 431, (status, body, front.error_log()[-2000:])


def test_ping_is_answered_without_the_app(serve: Serve, process_app: Path, tmp_path: Path) -> None:
    server = serve("--wsgi-file", str(process_app))
    assert exchange(server.socket, PING) == PONG
    assert exchange(server.socket, PING) == bytes.fromhex("64000001")
    assert calls(tmp_path) == []
    assert get(server.socket, "/") == (200, b"ok")
    assert calls(tmp_path) == ["/"]


def test_unsupported_modifier_is_logged_and_closed(serve: Serve, process_app: Path, tmp_path: Path) -> None:
    server = serve("--wsgi-file", str(process_app))
    pids = server.wait_workers(1)
    assert exchange(server.socket, encode_header(5, 0)) == b""
    assert "unavailable modifier requested: 5 (PSGI (Perl))" in server.log()
    assert calls(tmp_path) == []
    assert get(server.socket, "/") == (200, b"ok")
    assert server.worker_pids() == pids


def test_stalled_header_is_closed_at_socket_timeout(serve: Serve, process_app: Path) -> None:
    server = serve("--wsgi-file", str(process_app), "--socket-timeout", "1")
    pids = server.wait_workers(1)
    with connect(server.socket, timeout=10) as sock:
        sock.sendall(PING[:3])
        started = time.monotonic()
        assert read_all(sock) == b""
        elapsed = time.monotonic() - started
    assert 0.7 < elapsed < 3, f"closed after {elapsed:.2f} s with socket-timeout 1"
    assert "timeout waiting for the request: 3 bytes of a packet arrived, then nothing" in server.log()
    assert get(server.socket, "/") == (200, b"ok")
    assert server.worker_pids() == pids


def test_malformed_packet_is_logged_once_and_the_worker_lives_on(
    serve: Serve, process_app: Path, tmp_path: Path
) -> None:
    server = serve("--wsgi-file", str(process_app), "--processes", "2")
    pids = server.wait_workers(2)
    block = b"\x00\x00\x00\x00"  # a key of length 0, then a value of length 0
    answer = exchange(server.socket, encode_header(0, len(block)) + block)
    assert status_body(answer)[0] == 400
    lines = [line for line in server.log().splitlines() if "bad uwsgi packet" in line]
    assert len(lines) == 1, lines
    assert f"from unix:{server.socket} (peer pid {os.getpid()})" in lines[0]
    assert "uwsgi key cannot be null" in lines[0] and lines[0].endswith("connection closed")
    assert calls(tmp_path) == []
    assert get(server.socket, "/") == (200, b"ok")
    assert server.worker_pids() == pids

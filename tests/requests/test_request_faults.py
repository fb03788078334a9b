"""The request path under faulty peers and faulty apps: no worker is held, lost or misreported.

Raw uwsgi packets on binserve's unix socket where the peer must misbehave on purpose (hold a
connection, stall a body, forge log lines); real nginx where what matters is what an HTTP
client sees (a 400 that must arrive, a response that must look cut off).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from test_peer_faults import get

from binserve.protocol import encode_request
from binserve.testing import (
    Serve,
    StartNginx,
    alive,
    connect,
    exchange,
    free_port,
    location,
    read_all,
    request_packet,
    uwsgi_params,
    wait_for,
)

from support import APPS, AppFile, log_lines
from support import get as get_text

APP = (APPS / "request_faults_app.py").read_text()


@pytest.fixture
def app(app_file: AppFile) -> Path:
    return app_file(APP)


# -- the master dies while a worker is busy ------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "bound"),
    [
        (("--worker-reload-mercy", "2"), 2.0),
        (("--harakiri", "2", "--worker-reload-mercy", "60"), 2.0),
        (("--threads", "2", "--worker-reload-mercy", "2"), 2.0),
    ],
    ids=["reload-mercy", "harakiri", "threads"],
)
def test_orphaned_busy_worker_closes_its_listeners_and_exits_within_the_bound(
    serve: Serve, app: Path, tmp_path: Path, options: tuple[str, ...], bound: float
) -> None:
    mark = tmp_path / "slow.mark"
    server = serve("--wsgi-file", str(app), *options, env={"SLOW_MARK": str(mark)})
    (pid,) = server.wait_workers(1)
    with connect(server.socket) as slow:
        slow.sendall(request_packet("/slow"))
        wait_for(mark.exists, 10, "the slow request to start")
        os.kill(server.pid, signal.SIGKILL)
        killed = time.monotonic()

        def refused() -> bool:
            try:
                connect(server.socket, 1).close()
            except ConnectionRefusedError:
                return True
            return False

        wait_for(refused, 2, "connections to the orphan's socket to be refused")
        wait_for(lambda: not alive(pid), bound + 3, "the orphaned worker to exit")
        took = time.monotonic() - killed
    assert bound - 0.5 < took < bound + 2, f"the orphan exited {took:.2f} s after the master died"
    # A new server starts on the same socket.
    again = serve("--wsgi-file", str(app), socket_path=server.socket)
    assert get(again.socket, "/")[0] == 200


# -- peers that hold a connection after a refused packet or an unread body -----------------------
BAD = encode_request({"PATH_INFO": "/", "CONTENT_LENGTH": "12x"})


@pytest.mark.parametrize(
    "held",
    [BAD, request_packet("/", REQUEST_METHOD="POST", CONTENT_LENGTH="100000")],
    ids=["bad-packet", "content-length-without-body"],
)
def test_peers_holding_connections_do_not_block_the_workers(serve: Serve, app: Path, held: bytes) -> None:
    server = serve("--wsgi-file", str(app), "--processes", "2", "--socket-timeout", "5")
    pids = server.wait_workers(2)
    with ExitStack() as stack:
        for _ in range(10):
            sock = stack.enter_context(connect(server.socket))
            sock.sendall(held)
        started = time.monotonic()
        status, _ = get(server.socket, "/", timeout=10)
        took = time.monotonic() - started
        assert status == 200
        assert took < 0.5, f"a good request waited {took:.2f} s behind peers holding their connections"
    assert server.worker_pids() == pids


def test_held_peer_still_gets_its_answer_then_the_close(serve: Serve, app: Path) -> None:
    server = serve("--wsgi-file", str(app), "--socket-timeout", "1")
    server.wait_workers(1)
    with connect(server.socket) as sock:
        sock.sendall(BAD)
        assert sock.recv(4096).startswith(b"HTTP/1.0 400 ")
        started = time.monotonic()
        sock.settimeout(5)
        try:
            assert sock.recv(4096) == b""  # the half-close after the answer
            sock.send(b"more")  # held open: the server closes it at socket-timeout
            wait_for(lambda: _closed(sock), 4, "the server to close the held connection")
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert time.monotonic() - started < 3


def _closed(sock: socket.socket) -> bool:
    try:
        sock.send(b"x")
    except (BrokenPipeError, ConnectionResetError):
        return True
    return False


def test_nginx_gets_the_400_of_a_bad_packet_with_a_body(serve: Serve, nginx: StartNginx, app: Path) -> None:
    server = serve("--wsgi-file", str(app), "--socket-timeout", "5")
    front = nginx(location(server.socket, extra="uwsgi_param CONTENT_LENGTH 12x;"))
    for body in (None, b"b" * 300_000):
        status, _, answer = front.request("POST" if body else "GET", "/", body=body, timeout=10)
        assert status == 400, (status, answer, front.error_log())
        assert b"400 Bad Request" in answer
    assert "reset" not in front.error_log()


def test_nginx_gets_the_answer_to_a_large_body_the_app_ignores(
    serve: Serve, nginx: StartNginx, app: Path
) -> None:
    server = serve("--wsgi-file", str(app), "--socket-timeout", "5")
    (pid,) = server.wait_workers(1)
    front = nginx(server)
    for _ in range(3):  # the body is dropped in the loop after the answer: no reset, no wait
        started = time.monotonic()
        assert front.request("POST", "/", body=b"b" * 3_000_000, timeout=10)[::2] == (200, str(pid).encode())
        assert time.monotonic() - started < 2
    assert "reset" not in front.error_log() and "prematurely" not in front.error_log()


# -- SystemExit and KeyboardInterrupt from the app -----------------------------------------------
@pytest.mark.parametrize("where", ["call", "iter", "close"])
@pytest.mark.parametrize("kind", ["exit", "interrupt"])
def test_system_exit_from_the_app_is_a_500_and_the_worker_lives(
    serve: Serve, app: Path, where: str, kind: str
) -> None:
    server = serve("--wsgi-file", str(app))
    pids = server.wait_workers(1)
    status, body = get(server.socket, f"/raise-{where}-{kind}")
    assert status == (200 if where == "close" else 500), body  # close() runs after the body is sent
    assert get(server.socket, "/") == (200, str(*pids).encode())
    assert server.worker_pids() == pids
    exc = {"exit": "SystemExit: 3", "interrupt": "KeyboardInterrupt"}[kind]
    wait_for(lambda: exc in server.log(), 5, "the traceback in the log")
    assert "Traceback" in server.log()


# -- an app failing mid-stream -------------------------------------------------------------------
def test_app_failing_mid_stream_cuts_the_client_response_off(
    serve: Serve, nginx: StartNginx, app: Path
) -> None:
    port = free_port()
    server = serve("--wsgi-file", str(app), "--socket", f"127.0.0.1:{port}")
    front = nginx(f"location / {{ include {uwsgi_params()}; uwsgi_pass 127.0.0.1:{port}; }}")
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=10)
    try:
        conn.request("GET", "/midstream")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Transfer-Encoding") == "chunked"
        with pytest.raises(http.client.IncompleteRead):
            resp.read()
    finally:
        conn.close()
    wait_for(lambda: "the database went away" in server.log(), 5, "the error in the log")
    assert len(log_lines(server, "RuntimeError: the database went away")) == 1
    assert len(log_lines(server, "during GET /midstream")) == 1, server.log()


# -- a request body that stops arriving ----------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "options", "answer"),
    [
        ("/read", (), b"HTTP/1.1 408 "),
        ("/read-late", (), b"HTTP/1.1 200 "),
        ("/read", ("--post-buffering", "100"), b"HTTP/1.0 408 "),
    ],
    ids=["before-the-headers", "after-the-headers", "post-buffering"],
)
def test_body_read_timeout_is_one_line_and_no_exception(
    serve: Serve, app: Path, tmp_path: Path, url: str, options: tuple[str, ...], answer: bytes
) -> None:
    stats = tmp_path / "stats.sock"
    server = serve(
        "--wsgi-file",
        str(app),
        "--socket-timeout",
        "1",
        "--stats",
        str(stats),
        "--stats-format",
        "json",
        *options,
    )
    pids = server.wait_workers(1)
    with connect(server.socket) as sock:
        sock.sendall(
            request_packet(url, REQUEST_METHOD="POST", CONTENT_LENGTH="1000", REMOTE_ADDR="192.0.2.7")
            + b"x" * 10
        )
        raw = read_all(sock)
    assert raw.startswith(answer), raw
    if url == "/read-late":
        assert raw.endswith(b"reading"), raw  # cut off: the headers were out when the body stalled
    lines = log_lines(server, "timeout reading the request body")
    assert len(lines) == 1, server.log()
    # The app's request names the client; post-buffering's, before any environ, the uwsgi peer.
    assert ("192.0.2.7" in lines[0] and f"POST {url}" in lines[0]) or (options and "from unix:" in lines[0])
    assert "Traceback" not in server.log()
    with connect(stats) as sock:
        doc = json.loads(read_all(sock))
    assert [w["exceptions"] for w in doc["workers"]] == [0]
    assert server.worker_pids() == pids


# -- control characters from peers in the log ----------------------------------------------------
def test_control_characters_from_the_peer_cannot_forge_log_lines(serve: Serve, app: Path) -> None:
    server = serve("--wsgi-file", str(app))
    server.wait_workers(1)
    forged = "/x\r\n2026-01-01 fake line\x00"
    with connect(server.socket) as sock:
        sock.sendall(
            request_packet("/", REQUEST_URI=forged, REMOTE_ADDR="10.0.0.1\nfake", REQUEST_METHOD="GET\rX")
        )
        read_all(sock)
    with connect(server.socket) as sock:  # a bad packet whose reason quotes peer bytes
        sock.sendall(encode_request({"CONTENT_LENGTH": "1\n2026-01-01 fake reason"}))
        read_all(sock)
    wait_for(lambda: "fake reason" in server.log(), 5, "the bad packet in the log")
    lines = log_lines(server, "fake line")
    assert len(lines) == 1, server.log()
    assert lines[0].startswith("[pid: ") and "10.0.0.1\\x0afake" in lines[0], lines
    assert "/x\\x0d\\x0a2026-01-01 fake line\\x00" in lines[0] and "GET\\x0dX" in lines[0], lines
    assert len(log_lines(server, "fake reason")) == 1, server.log()
    assert not any(line.startswith("2026-01-01 fake") for line in server.log().splitlines())


# -- many stalled connections: a bounded number of log lines -------------------------------------
def test_stalled_connections_are_logged_in_aggregate(serve: Serve, app: Path) -> None:
    server = serve("--wsgi-file", str(app), "--socket-timeout", "1", "--listen", "256")
    server.wait_workers(1)
    with ExitStack() as stack:
        for _ in range(200):
            sock = stack.enter_context(connect(server.socket))
            sock.sendall(b"\x00\x10\x00")  # 3 of the 4 header bytes
        wait_for(lambda: _expired(server.log()) >= 200, 10, "200 expiries in the log")
    assert _expired(server.log()) == 200, server.log()
    lines = log_lines(server, "stalled connections") + log_lines(server, "timeout waiting for the request")
    assert len(lines) <= 4, lines
    assert re.search(
        r"closed \d+ stalled connections at socket-timeout, .*\(from: unix:.* and \d+ more\)", lines[0]
    )


def _expired(log: str) -> int:
    together = sum(int(n) for n in re.findall(r"closed (\d+) stalled connections", log))
    return together + log.count("timeout waiting for the request")


# -- a peer that ends its body after the headers are out; a response whose attributes raise --------


READ_LATE = (APPS / "attack_runtime_read_late.py").read_text()


def test_a_body_cut_short_after_the_headers_gets_no_second_response(serve: Serve, app_file: AppFile) -> None:
    """The peer ends its body early once the app's headers are out: the 400 must not follow the 200."""
    app = app_file(READ_LATE)
    server = serve("--wsgi-file", str(app))
    packet = request_packet("/", body=b"0123456789", CONTENT_LENGTH="100")
    raw = exchange(server.socket, packet, half_close=True)
    assert raw.startswith(b"HTTP/1.1 200 OK"), raw
    assert b"HTTP/1.0 400" not in raw, raw
    wait_for(lambda: "response cut off, connection aborted" in server.log(), 5, "the line naming the cut")


ODD_RESULT = (APPS / "attack_runtime_odd_result.py").read_text()


def test_a_response_whose_attributes_raise_does_not_end_the_worker(serve: Serve, app_file: AppFile) -> None:
    """Looking up the response's close() is the app's code too: what it raises is the app's error."""
    app = app_file(ODD_RESULT)
    server = serve("--wsgi-file", str(app))
    wait_for(lambda: len(server.worker_pids()) == 1, 10, "the worker")
    (worker,) = server.worker_pids()
    exchange(server.socket, request_packet("/"))
    assert get_text(server.socket) == (200, str(worker)), server.log()
    assert server.worker_pids() == {worker}, server.log()

"""listen_queue() against real kernel sockets: a backlog that fills up and drains on accept."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from binserve.listenq import SockDiagError, _unix_diag_rqlen, listen_queue
from binserve.testing import wait_for

BACKLOG = 128
CLIENTS = 50
ACCEPTED = 20


def expected_limit(backlog: int) -> int:
    """listen() silently caps the backlog at net.core.somaxconn."""
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    return min(backlog, somaxconn)


def unix_listener(
    path: Path, kind: int, opened: list[socket.socket]
) -> tuple[socket.socket, Callable[[], None]]:
    """A unix listener at ``path`` and a function opening one client connection to it."""
    server = socket.socket(socket.AF_UNIX, kind)
    opened.append(server)
    server.bind(str(path))
    server.listen(BACKLOG)

    def connect() -> None:
        client = socket.socket(socket.AF_UNIX, kind)
        opened.append(client)
        client.connect(str(path))  # returns at once: the backlog has room, nobody needs to accept

    return server, connect


def tcp_listener(opened: list[socket.socket]) -> tuple[socket.socket, Callable[[], None]]:
    """A TCP listener on 127.0.0.1 and a function starting one client connection to it."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    opened.append(server)
    server.bind(("127.0.0.1", 0))
    server.listen(BACKLOG)
    address = server.getsockname()

    def connect() -> None:
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        opened.append(client)
        client.setblocking(False)
        # The handshake completes in the kernel; the connection then waits in the accept queue.
        assert client.connect_ex(address) in (0, errno.EINPROGRESS)

    return server, connect


@pytest.mark.parametrize("kind", ["unix", "unix-seqpacket", "tcp"])
def test_queue_fills_and_drains(kind: str, tmp_path: Path, opened: list[socket.socket]) -> None:
    if kind == "tcp":
        server, connect = tcp_listener(opened)
    else:
        sock_type = socket.SOCK_SEQPACKET if kind == "unix-seqpacket" else socket.SOCK_STREAM
        server, connect = unix_listener(tmp_path / "q.sock", sock_type, opened)
    limit = expected_limit(BACKLOG)

    assert listen_queue(server) == (0, limit)
    for _ in range(CLIENTS):
        connect()
    wait_for(lambda: listen_queue(server)[0] == CLIENTS, 10, f"{CLIENTS} connections queued")
    assert listen_queue(server) == (CLIENTS, limit)

    for _ in range(ACCEPTED):
        conn, _addr = server.accept()
        opened.append(conn)
    wait_for(lambda: listen_queue(server)[0] == CLIENTS - ACCEPTED, 10, "the accepted ones to leave")
    assert listen_queue(server) == (CLIENTS - ACCEPTED, limit)


@pytest.mark.parametrize("backlog", [1, 7, 1_000_000])
def test_limit_is_listen_backlog_capped_by_somaxconn(
    backlog: int, tmp_path: Path, opened: list[socket.socket]
) -> None:
    unix = socket.socket(socket.AF_UNIX)
    tcp = socket.socket()
    opened += [unix, tcp]
    unix.bind(str(tmp_path / "b.sock"))
    tcp.bind(("127.0.0.1", 0))
    for sock in (unix, tcp):
        sock.listen(backlog)
        assert listen_queue(sock) == (0, expected_limit(backlog))


def test_not_listening_raises_value_error(tmp_path: Path, opened: list[socket.socket]) -> None:
    bound_unix = socket.socket(socket.AF_UNIX)
    bound_unix.bind(str(tmp_path / "n.sock"))
    bound_tcp = socket.socket()
    bound_tcp.bind(("127.0.0.1", 0))
    fresh_unix = socket.socket(socket.AF_UNIX)
    opened += [bound_unix, bound_tcp, fresh_unix]
    # Connected sockets: for TCP, TCP_INFO's unacked/sacked would mean segments, not a queue.
    server, _connect = tcp_listener(opened)
    client_tcp = socket.create_connection(server.getsockname())
    pair = socket.socketpair()
    opened += [client_tcp, *pair]
    for sock in (bound_unix, bound_tcp, fresh_unix, client_tcp, pair[0]):
        with pytest.raises(ValueError, match="not listening"):
            listen_queue(sock)


@pytest.mark.parametrize(
    "family, kind",
    [
        (socket.AF_INET, socket.SOCK_DGRAM),
        (socket.AF_INET6, socket.SOCK_DGRAM),
        (socket.AF_UNIX, socket.SOCK_DGRAM),
    ],
)
def test_socket_without_accept_queue_raises_value_error(family: int, kind: int) -> None:
    with socket.socket(family, kind) as sock:
        if family != socket.AF_UNIX:
            sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        with pytest.raises(ValueError, match="no accept queue"):
            listen_queue(sock)


def test_sock_diag_error_is_reported(tmp_path: Path) -> None:
    # The kernel answers NLMSG_ERROR/ENOENT for an inode that is no longer a socket.
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "gone.sock"))
    sock.listen(1)
    ino = os.fstat(sock.fileno()).st_ino
    assert _unix_diag_rqlen(ino) == (0, expected_limit(1))
    sock.close()
    with pytest.raises(SockDiagError) as info:
        _unix_diag_rqlen(ino)
    assert info.value.errno == errno.ENOENT
    assert f"inode {ino}" in str(info.value)
    assert isinstance(info.value, OSError)

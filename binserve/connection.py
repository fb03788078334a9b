"""One accepted connection's I/O: reads and writes bounded by socket-timeout, and how they fail.

Below both the listening sockets (which arm TCP listeners with the same timeout) and the WSGI
layers (which read the body and write the response through a Connection): the errors here are
what a request's I/O can raise, each naming the peer's fault it stands for.
"""

from __future__ import annotations

import _socket
import socket
import struct
from typing import Any

RECV_CHUNK = 256 * 1024
MSG_DONTWAIT = socket.MSG_DONTWAIT
# Linux takes at most IOV_MAX (1024) buffers in one sendmsg; longer lists are joined first.
MAX_PARTS = 512
_ABORT = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a TCP reset


class ClientDisconnected(OSError):
    """nginx closed the connection before the whole request body arrived."""


class BodyReadTimeout(OSError):
    """The request body stopped arriving for longer than socket-timeout."""


class WriteTimeout(TimeoutError):
    """nginx stopped reading the response for longer than socket-timeout."""


def timeval(seconds: float) -> bytes:
    """A ``struct timeval`` for SO_RCVTIMEO / SO_SNDTIMEO."""
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1_000_000))


class Connection:
    """The accepted socket of one request, with timeouts armed only when a call could block.

    TCP connections inherit SO_RCVTIMEO/SO_SNDTIMEO from the listening socket; unix ones do
    not (Linux copies them only for TCP), so those get them set the first time they need
    them: most requests arrive whole and their answer fits the send buffer.
    """

    __slots__ = ("sock", "armed", "timeout", "sent")

    def __init__(self, sock: _socket.socket, armed: bool, timeout: bytes) -> None:
        self.sock = sock
        self.armed = armed
        self.timeout = timeout
        self.sent = 0  # bytes that reached the socket, kept when a send fails half-way

    def arm(self) -> None:
        """Make blocking reads and writes on this socket give up after socket-timeout."""
        if not self.armed:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, self.timeout)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, self.timeout)
            self.armed = True

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes; waits (at most socket-timeout) only when none are there yet."""
        sock = self.sock
        if not self.armed:
            try:
                return sock.recv(size, MSG_DONTWAIT)
            except BlockingIOError:
                self.arm()
        return sock.recv(size)

    def send(self, parts: list[bytes], total: int = -1) -> int:
        """Send all of ``parts`` (``total`` bytes, when the caller knows).

        The first gathered write does not wait: it usually takes everything, and only when
        the send buffer is full is the timeout armed and the rest sent waiting.
        """
        if total < 0:
            total = sum(map(len, parts))
        sock = self.sock
        if len(parts) > MAX_PARTS:
            parts = [b"".join(parts)]
        sent = 0
        try:
            try:
                sent = sock.sendmsg(parts, (), MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            if sent < total:
                self.arm()
                rest = _after(parts, sent)
                while rest:
                    n = sock.sendmsg(rest)
                    sent += n
                    rest = _after(rest, n)
        except BlockingIOError:
            raise WriteTimeout(
                f"timeout writing the response: {self.sent + sent} bytes sent, then nginx read nothing "
                "for socket-timeout"
            ) from None
        finally:
            self.sent += sent
        return total

    def abort(self) -> None:
        """Make the coming close() a reset: nginx then cuts the client's response off instead of ending it."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT)
        except OSError:
            pass  # the close still ends the response, as it did


def _after(parts: list[Any], skip: int) -> list[Any]:
    """``parts`` without their first ``skip`` bytes, as views (no copy of what is left)."""
    rest = []
    for part in parts:
        if skip >= len(part):
            skip -= len(part)
            continue
        rest.append(memoryview(part)[skip:] if skip else part)
        skip = 0
    return rest

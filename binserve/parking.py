"""Connections a core holds in its epoll without a thread: waiting for their packet, or draining.

A packet that did not arrive whole is *parked*: its socket joins the core's epoll with a
deadline of socket-timeout from accept, and the core goes on accepting. A peer that sends a
few bytes and stalls therefore holds no thread: it is dropped at its deadline while everyone
else is served. What nginx still sends after the answer (the rest of a refused packet, a body
the app did not read) is dropped the same way: the connection is half-closed and parked as
*draining*, so a peer that holds it holds no thread either.
"""

from __future__ import annotations

import _socket
import select
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .connection import RECV_CHUNK, Connection
from .log import log
from .protocol import Decoder
from .sockets import Listener

_IN = select.EPOLLIN
# Stalled connections closed within this many seconds of each other share one log line.
STALLED_LOG_INTERVAL = 1.0
# Stalled peers named in that line; the rest are counted.
STALLED_NAMED = 3


class Parked:
    """A connection waiting in the core's epoll: for the rest of its packet, or *draining*.

    A draining connection has been answered and half-closed; what the peer still sends is
    read and dropped as it arrives, up to ``drain`` more bytes.
    """

    __slots__ = ("conn", "decoder", "addr", "listener", "deadline", "drain")

    def __init__(
        self,
        conn: Connection,
        decoder: Decoder | None,
        addr: Any,
        listener: Listener,
        deadline: float,
        drain: int,
    ):
        self.conn = conn
        self.decoder = decoder
        self.addr = addr
        self.listener = listener
        self.deadline = deadline
        self.drain = drain


class Parking:
    """One core's parked connections, by descriptor, each dropped at its deadline.

    ``full`` is called with their number once it reaches ``limit``: parked connections hold
    descriptors, and the core stops accepting rather than run out of them.
    """

    def __init__(
        self,
        poller: select.epoll,
        wid: int,
        socket_timeout: float,
        limit: int,
        full: Callable[[int], None],
    ) -> None:
        self.poller = poller
        self.wid = wid
        self.socket_timeout = socket_timeout
        self.limit = limit
        self.full = full
        self.parked: dict[int, Parked] = {}
        self.expiry: deque[Parked] = deque()  # one timeout for all: deadlines come in order
        self.stalled = 0  # stalled connections closed and not logged yet
        self.stalled_peers: list[str] = []  # the first few of them
        self.stalled_first = 0  # bytes of a packet the first one sent
        self.stalled_log_due = 0.0
        self.rbuf = bytearray(RECV_CHUNK)

    def park(
        self, conn: Connection, decoder: Decoder | None, addr: Any, listener: Listener, drain: int = 0
    ) -> None:
        """Wait in the epoll for more of ``conn``'s packet (``drain`` 0), or to drop ``drain`` more bytes."""
        parked = Parked(conn, decoder, addr, listener, time.monotonic() + self.socket_timeout, drain)
        fd = conn.sock.fileno()
        self.parked[fd] = parked
        self.expiry.append(parked)
        self.poller.register(fd, _IN)
        if len(self.parked) >= self.limit:
            self.full(len(self.parked))

    def unpark(self, parked: Parked) -> None:
        """Take ``parked`` out of the epoll (its connection is served or closed)."""
        fd = parked.conn.sock.fileno()
        if self.parked.pop(fd, None) is parked:
            self.poller.unregister(fd)

    def expire(self) -> float:
        """Drop parked connections past their deadline; seconds until the next one (-1: none).

        Stalled connections are logged together, one line per STALLED_LOG_INTERVAL at most: a
        client opening thousands of them must not write thousands of lines.
        """
        now = time.monotonic()
        expiry, parked = self.expiry, self.parked
        wait = -1.0
        closing = []  # closed after the log line: whoever sees the close finds it logged
        while expiry:
            first = expiry[0]
            if parked.get(first.conn.sock.fileno()) is not first:
                expiry.popleft()  # served or closed already
                continue
            if first.deadline > now:
                wait = first.deadline - now
                break
            expiry.popleft()
            self.unpark(first)
            if not first.drain:  # a drain running out of time is no fault worth a line
                self._stalled(first, now)
            closing.append(first.conn.sock)
        if self.stalled:
            if not parked or now >= self.stalled_log_due:
                self._log_stalled()
            else:
                due = self.stalled_log_due - now
                wait = due if wait < 0 else min(wait, due)
        for sock in closing:
            sock.close()
        return wait

    def _stalled(self, parked: Parked, now: float) -> None:
        if not self.stalled:
            self.stalled_log_due = now + STALLED_LOG_INTERVAL
            self.stalled_peers = []
            self.stalled_first = len(parked.decoder.trailing_data) if parked.decoder else 0
        self.stalled += 1
        if len(self.stalled_peers) < STALLED_NAMED:
            self.stalled_peers.append(parked.listener.peer(parked.conn.sock, parked.addr))

    def _log_stalled(self) -> None:
        count, peers = self.stalled, self.stalled_peers
        self.stalled = 0
        if count == 1:
            log(
                f"worker {self.wid}: timeout waiting for the request: {self.stalled_first} bytes of a packet "
                f"arrived, then nothing for socket-timeout, from {peers[0]}; connection closed"
            )
            return
        more = f" and {count - len(peers)} more" if count > len(peers) else ""
        log(
            f"worker {self.wid}: closed {count} stalled connections at socket-timeout, their packets "
            f"incomplete (from: {', '.join(peers)}{more})"
        )

    def drain(self, conn: Connection, limit: int, addr: Any, listener: Listener) -> bool:
        """Half-close after the answer, then drop up to ``limit`` more bytes the peer sends, never waiting.

        nginx must read the answer before the connection closes (a close with unread data is
        a reset, and the answer would be lost): what has arrived is dropped now, the rest in
        the loop, the connection parked as draining until EOF, the limit, or socket-timeout.
        True when it is parked; the caller closes it otherwise.
        """
        sock = conn.sock
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return False
        left = self._discard(sock, limit)
        if left:
            self.park(conn, None, addr, listener, left)
        return left > 0

    def drain_more(self, parked: Parked) -> None:
        """Drop what a draining connection sent since; close it once it is done."""
        parked.drain = self._discard(parked.conn.sock, parked.drain)
        if not parked.drain:
            self.unpark(parked)
            parked.conn.sock.close()

    def _discard(self, sock: _socket.socket, limit: int) -> int:
        """Read and drop what has arrived, up to ``limit`` bytes; what is left to drop (0: done)."""
        rbuf = self.rbuf
        while limit > 0:
            try:
                n = sock.recv_into(rbuf, min(limit, len(rbuf)), socket.MSG_DONTWAIT)
            except BlockingIOError:
                return limit
            except OSError:
                return 0  # a reset: nothing more will come
            if not n:
                return 0
            limit -= n
        return 0

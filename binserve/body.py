"""``wsgi.input``: the request body as the app reads it, pulled through the decoder on demand.

A body that stops short or stalls is the peer's fault and raises as such (ClientDisconnected,
BodyReadTimeout), never as the app's. Requests without a body all share one EmptyInput.
"""

from __future__ import annotations

from collections.abc import Iterator

from .connection import RECV_CHUNK, BodyReadTimeout, ClientDisconnected, Connection
from .protocol import NEED_DATA, Body, Decoder, RemoteProtocolError


class Input:
    """``wsgi.input``: the request body, bounded by CONTENT_LENGTH.

    Bytes that arrived with the header are served first (they are in the decoder); the rest
    is read from the socket as the app asks for it, each wait bounded by socket-timeout.
    """

    __slots__ = ("_conn", "_decoder", "_buf", "_pos", "_length")

    def __init__(self, conn: Connection, decoder: Decoder, length: int) -> None:
        self._conn = conn
        self._decoder = decoder
        self._buf = b""
        self._pos = 0
        self._length = length

    def _chunk(self) -> bytes:
        """The next piece of body from the decoder, reading the socket when it needs data; b"" at the end."""
        decoder = self._decoder
        while True:
            event = decoder.next_event()
            if type(event) is Body:
                return event.data
            if event is not NEED_DATA:
                return b""
            left = decoder.body_left
            try:
                data = self._conn.recv(min(RECV_CHUNK, left))
            except BlockingIOError:
                got = self._length - left
                raise BodyReadTimeout(
                    f"timeout reading the request body: {got} of {self._length} bytes (CONTENT_LENGTH) "
                    f"arrived, then nothing for socket-timeout"
                ) from None
            try:
                decoder.receive_data(data)
                if not data:
                    decoder.next_event()
            except RemoteProtocolError as exc:
                raise ClientDisconnected(f"client closed the connection: {exc.message}") from None

    def read(self, size: int | None = -1) -> bytes:
        """Read up to ``size`` bytes (all that is left when size is None or negative)."""
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if size is None or size < 0:
            size = avail + self._decoder.body_left
        if size <= avail:
            self._pos = pos + size
            return buf[pos : pos + size]
        parts = [buf[pos:]] if avail else []
        have = avail
        self._buf, self._pos = b"", 0
        while have < size:
            chunk = self._chunk()
            if not chunk:
                break
            if have + len(chunk) > size:
                cut = size - have
                self._buf = chunk
                self._pos = cut
                chunk = chunk[:cut]
            parts.append(chunk)
            have += len(chunk)
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)

    def readline(self, size: int | None = -1) -> bytes:
        """Read one line, up to and including b"\\n" (at most ``size`` bytes)."""
        limit = -1 if size is None else size
        while True:
            buf, pos = self._buf, self._pos
            nl = buf.find(b"\n", pos)
            avail = len(buf) - pos
            if nl >= 0 and (limit < 0 or nl - pos + 1 <= limit):
                self._pos = nl + 1
                return buf[pos : nl + 1]
            if 0 <= limit <= avail:
                self._pos = pos + limit
                return buf[pos : pos + limit]
            chunk = self._chunk()
            if not chunk:
                self._buf, self._pos = b"", 0
                return buf[pos:]
            self._buf, self._pos = buf[pos:] + chunk, 0

    def readlines(self, hint: int = -1) -> list[bytes]:
        """All remaining lines (stopping once ``hint`` bytes are read, when hint > 0)."""
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def close(self) -> None:
        """No effect: the server owns the connection."""

    @property
    def unread_on_socket(self) -> int:
        """Body bytes nginx is still to send that nobody has read from the socket."""
        return self._decoder.unreceived


class EmptyInput:
    """``wsgi.input`` of a request without a body: stateless, so one instance serves all."""

    __slots__ = ()

    def read(self, size: int | None = -1) -> bytes:
        """Always b""."""
        return b""

    def readline(self, size: int | None = -1) -> bytes:
        """Always b""."""
        return b""

    def readlines(self, hint: int = -1) -> list[bytes]:
        """Always []."""
        return []

    def __iter__(self) -> Iterator[bytes]:
        return iter(())

    def close(self) -> None:
        """No effect."""


EMPTY_INPUT = EmptyInput()

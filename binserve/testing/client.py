"""A uwsgi client: the packets nginx would send, the raw exchange, and the HTTP answer parsed.

``request(address, "/path?q=1")`` is the usual call; ``exchange`` sends any bytes (a malformed
packet, a ping, a request in pieces) and returns everything the server wrote until it closed.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import msgpack

from binserve.protocol import PING, PONG, encode_request
from binserve.sockets import is_abstract, parse_tcp

Address = str | Path
Headers = Mapping[str, str] | Iterable[tuple[str, str]]


def request_vars(
    path: str = "/",
    method: str = "GET",
    headers: Headers = (),
    body: bytes = b"",
    host: str = "localhost",
    protocol: str = "HTTP/1.1",
    **extra: str,
) -> dict[str, str]:
    """The vars nginx's uwsgi_params sends for this request, in its order.

    ``path`` may carry a query. Headers become ``HTTP_*`` vars (Content-Type and Content-Length
    their CGI ones); ``extra`` vars are set last and replace any of the same name.
    """
    # Split by hand: urlsplit would drop CR, LF and tab, which tests send on purpose.
    path_part, _, query = path.partition("?")
    pairs = {
        "QUERY_STRING": query,
        "REQUEST_METHOD": method,
        "CONTENT_TYPE": "",
        "CONTENT_LENGTH": str(len(body)) if body else "",
        "REQUEST_URI": path,
        "PATH_INFO": unquote(path_part or "/", "latin-1"),
        "DOCUMENT_ROOT": "/",
        "SERVER_PROTOCOL": protocol,
        "REQUEST_SCHEME": "http",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "0",
        "SERVER_PORT": "80",
        "SERVER_NAME": host,
        "HTTP_HOST": host,
    }
    for name, value in headers.items() if isinstance(headers, Mapping) else headers:
        key = name.strip().upper().replace("-", "_")
        pairs[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"] = value.strip()
    pairs.update(extra)
    return pairs


def request_packet(
    path: str = "/",
    method: str = "GET",
    headers: Headers = (),
    body: bytes = b"",
    modifier1: int = 0,
    modifier2: int = 0,
    **extra: str,
) -> bytes:
    """One uwsgi request packet (header, vars of ``request_vars``, body)."""
    vars_ = request_vars(path, method, headers, body, **extra)
    return encode_request(vars_, body, modifier1=modifier1, modifier2=modifier2)


@dataclass
class Response:
    """An HTTP answer as binserve writes it on the uwsgi socket."""

    status_line: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def status(self) -> int:
        return int(self.status_line.split(" ", 2)[1])

    @property
    def header_lines(self) -> list[str]:
        """The header lines as sent (``Name: value``)."""
        return [f"{name}: {value}" for name, value in self.headers]

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), None when absent."""
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    @property
    def header_map(self) -> dict[str, str]:
        """Header values by lower-case name (the last one wins when a name repeats)."""
        return {k.lower(): v for k, v in self.headers}

    @property
    def text(self) -> str:
        return self.body.decode()


def parse_response(raw: bytes) -> Response:
    """Split a raw HTTP/1.x answer into status line, headers and body; fails without a whole head."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:  # an AssertionError: a test that gets no answer fails, as with a failed assert
        raise AssertionError(f"no end of headers in {raw[:300]!r}" if raw else "no response at all")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return Response(status_line, headers, body)


def read_response(sock: socket.socket) -> Response:
    """One answer from ``sock``, read up to its Content-Length when it has one, else to the close.

    A process the app forked may hold the connection open: then the close never comes.
    """
    raw = b""
    while True:
        head, sep, body = raw.partition(b"\r\n\r\n")
        if sep:
            response = parse_response(raw)
            length = response.header("Content-Length")
            if length is not None and len(body) >= int(length):
                return response
        chunk = sock.recv(65536)
        if not chunk:
            return parse_response(raw)
        raw += chunk


def connect(address: Address, timeout: float | None = 10.0) -> socket.socket:
    """A connected socket to a unix path, ``@abstract`` name or HOST:PORT (``timeout`` None: blocking)."""
    spec = str(address)
    tcp = None if isinstance(address, Path) else parse_tcp(spec)
    if tcp:
        host = "127.0.0.1" if tcp[0] == "0.0.0.0" else tcp[0]
        return socket.create_connection((host, tcp[1]), timeout=timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect("\0" + spec[1:] if is_abstract(spec) else spec)
    except BaseException:
        sock.close()
        raise
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes its side (a reset propagates)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def exchange(
    address: Address, data: bytes, timeout: float = 10.0, half_close: bool = False, reset_ends: bool = False
) -> bytes:
    """Send raw ``data`` and return every byte the server answers until it closes.

    Sending and reading interleave, so a server that answers before it has read everything (a
    refused packet, bytes past CONTENT_LENGTH) never deadlocks the client. A reset raises
    ``ConnectionResetError``; with ``reset_ends`` it ends the answer instead, for a test that
    sends what the server refuses (Linux resets a close that leaves bytes unread).
    ``half_close`` shuts the sending side down after ``data``, which nginx never does.
    ``timeout`` bounds the whole exchange.
    """
    deadline = time.monotonic() + timeout
    with connect(address, timeout) as sock:
        sock.setblocking(False)
        rest = memoryview(data)
        received: list[bytes] = []
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLOUT)
        sending = True
        while True:
            if sending and not rest:
                sending = False
                if half_close:
                    _shut_write(sock)
                poller.modify(sock, select.POLLIN)
            ready = poller.poll(max(deadline - time.monotonic(), 0) * 1000)
            if not ready:
                raise TimeoutError(f"no answer within {timeout} s; got {b''.join(received)[:200]!r}")
            events = ready[0][1]
            if sending and events & (select.POLLOUT | select.POLLERR | select.POLLHUP):
                try:
                    rest = rest[sock.send(rest[:262144]) :]
                except BlockingIOError:
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    rest = rest[:0]  # closed before reading it all: what it answered is still to read
            if events & (select.POLLIN | select.POLLERR | select.POLLHUP):
                try:
                    chunk = sock.recv(262144)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    if reset_ends:
                        return b"".join(received)
                    raise
                if not chunk:
                    return b"".join(received)
                received.append(chunk)


def _shut_write(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the server has closed already


def send(address: Address, data: bytes, timeout: float | None = 10.0) -> socket.socket:
    """Send ``data`` on a new connection and return it open: the caller reads (or holds) the answer."""
    sock = connect(address, timeout)
    try:
        sock.sendall(data)
    except BaseException:
        sock.close()
        raise
    return sock


def request(
    address: Address,
    path: str = "/",
    method: str = "GET",
    headers: Headers = (),
    body: bytes = b"",
    timeout: float = 10.0,
) -> Response:
    """One request straight over the uwsgi protocol, as nginx would pass it; the parsed answer."""
    return parse_response(exchange(address, request_packet(path, method, headers, body), timeout))


def ping(address: Address, timeout: float = 1.0) -> bool:
    """Whether a uwsgi server answers a ping (any failure to connect or answer is False)."""
    try:
        with connect(address, timeout) as sock:
            sock.sendall(PING)
            return sock.recv(4) == PONG
    except OSError:
        return False


def read_stats(address: Address, timeout: float = 5.0) -> dict[str, Any]:
    """One msgpack stats document, read as any client would: connect, read to EOF, decode."""
    with connect(address, timeout) as sock:
        document: dict[str, Any] = msgpack.unpackb(read_all(sock))
    return document

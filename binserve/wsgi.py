"""PEP 3333 on top of a decoded uwsgi request: the environ, wsgi.input and the response.

The response goes back to nginx as a raw HTTP/1.x message ended by closing the connection:
a status line with the request's SERVER_PROTOCOL, validated headers,
Content-Length whenever the body length is known, never ``Transfer-Encoding: chunked``.
"""

from __future__ import annotations

import _socket
import os
import re
import socket
import stat
import struct
import sys
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

from .protocol import NEED_DATA, Body, Decoder, Head, RemoteProtocolError
from .protocol.modifiers import WSGI_MANAGE_PATH_INFO

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]

RECV_CHUNK = 256 * 1024
MSG_DONTWAIT = socket.MSG_DONTWAIT

# RFC 9110 token characters for header names; values may hold HTAB, visible ASCII and
# obs-text (0x80-0xff), and nothing else: CR or LF would let the app split the response.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z").match
_BAD_VALUE = re.compile(r"[^\t\x20-\x7e\x80-\xff]").search
_STATUS = re.compile(r"[1-9][0-9][0-9](?: [\t\x20-\x7e\x80-\xff]*)?\Z").match
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)

_ERROR_BODY = b"Internal Server Error"
_ERROR_HEAD = " 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\r\n"
_TIMEOUT_BODY = b"Request Timeout"
_TIMEOUT_HEAD = " 408 Request Timeout\r\nContent-Type: text/plain\r\nContent-Length: 15\r\n\r\n"
# What nginx's $server_protocol can be; anything else gets HTTP/1.0 rather than echoing bytes
# a peer chose into the status line.
_PROTOCOLS: dict[str | None, str] = {p: p for p in ("HTTP/1.0", "HTTP/1.1", "HTTP/2.0", "HTTP/3.0")}
# Linux takes at most IOV_MAX (1024) buffers in one sendmsg; longer lists are joined first.
MAX_PARTS = 512


class ClientDisconnected(OSError):
    """nginx closed the connection before the whole request body arrived."""


class BodyReadTimeout(OSError):
    """The request body stopped arriving for longer than socket-timeout."""


class WriteTimeout(TimeoutError):
    """nginx stopped reading the response for longer than socket-timeout."""


class HeaderError(ValueError):
    """The app passed a status or header that cannot go on the wire."""


def timeval(seconds: float) -> bytes:
    """A ``struct timeval`` for SO_RCVTIMEO / SO_SNDTIMEO."""
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1_000_000))


class FileWrapper:
    """``wsgi.file_wrapper``: iterates a file in blocks; the server sends it with sendfile when it can."""

    def __init__(self, filelike: Any, blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while True:
            block = read(self.blksize)
            if not block:
                return
            yield block

    def fileno_for_sendfile(self) -> int | None:
        """The descriptor to sendfile from, if the object is a real regular file."""
        try:
            fd = self.filelike.fileno()
        except (AttributeError, OSError, ValueError):
            return None
        if not isinstance(fd, int):
            return None
        try:
            return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
        except OSError:
            return None


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


def make_base_environ(multiprocess: bool, multithread: bool = False) -> dict[str, Any]:
    """The keys every request's environ shares."""
    return {
        "wsgi.version": (1, 0),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": multithread,
        "wsgi.multiprocess": multiprocess,
        "wsgi.run_once": False,
        "wsgi.file_wrapper": FileWrapper,
        # Reading wsgi.input returns b"" at the end of the body, so frameworks may read to EOF
        # (werkzeug then handles uploads that arrived chunked, pallets/werkzeug#2346).
        "wsgi.input_terminated": True,
    }


def merge_vars(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Vars as a dict: repeated headers joined as nginx >= 1.23 does (``", "``, ``"; "`` for cookies).

    Only ``HTTP_*`` vars are headers; a repeated CGI var comes from a location that overrides a
    ``uwsgi_param`` of the included file, and there the last one wins, as in uWSGI.
    """
    env: dict[str, str] = {}
    for key, value in pairs:
        if key in env and key.startswith("HTTP_"):
            env[key] = env[key] + ("; " if key == "HTTP_COOKIE" else ", ") + value
        else:
            env[key] = value
    return env


def build_environ(head: Head, base: dict[str, Any], wsgi_input: Input | EmptyInput) -> dict[str, Any]:
    """The PEP 3333 environ for a request.

    nginx's ``HTTP_CONTENT_TYPE``/``HTTP_CONTENT_LENGTH`` copies are dropped (CGI forbids them),
    as is ``HTTP_TRANSFER_ENCODING``: nginx has de-chunked the body and CONTENT_LENGTH frames it.
    uWSGI's magic vars (UWSGI_SCRIPT, UWSGI_FILE, UWSGI_SETENV, ...) are plain strings here:
    binserve never acts on them, since anyone who can reach the socket could set them.
    """
    env: dict[str, Any] = merge_vars(head.vars) if head.duplicates else head.fields
    env.update(base)
    env["wsgi.input"] = wsgi_input
    # ``in`` before ``del``: most requests have none of these, and a test is cheaper than pop().
    if "HTTP_CONTENT_TYPE" in env:
        del env["HTTP_CONTENT_TYPE"]
    if "HTTP_CONTENT_LENGTH" in env:
        del env["HTTP_CONTENT_LENGTH"]
    if "HTTP_TRANSFER_ENCODING" in env:
        del env["HTTP_TRANSFER_ENCODING"]
    if "CONTENT_LENGTH" in env and not env["CONTENT_LENGTH"]:
        del env["CONTENT_LENGTH"]
    if "SCRIPT_NAME" not in env:
        env["SCRIPT_NAME"] = ""
    elif head.modifier1 == WSGI_MANAGE_PATH_INFO and env["SCRIPT_NAME"]:
        script_name = env["SCRIPT_NAME"].rstrip("/")
        path = env.get("PATH_INFO", "")
        if path.startswith(script_name) and (len(path) == len(script_name) or path[len(script_name)] == "/"):
            env["PATH_INFO"] = path[len(script_name) :]
        env["SCRIPT_NAME"] = script_name
    if "PATH_INFO" not in env:
        env["PATH_INFO"] = ""
    if "QUERY_STRING" not in env:
        env["QUERY_STRING"] = ""
    if "UWSGI_SCHEME" in env and env["UWSGI_SCHEME"]:
        env["wsgi.url_scheme"] = env["UWSGI_SCHEME"].lower()
    elif "HTTPS" in env and env["HTTPS"].lower() in ("on", "1"):
        env["wsgi.url_scheme"] = "https"
    else:
        env["wsgi.url_scheme"] = "http"
    if not env.get("SERVER_NAME"):
        host = env.get("HTTP_HOST", "")
        env["SERVER_NAME"] = (
            host.rsplit(":", 1)[0] if host and not host.endswith("]") else host or "localhost"
        )
    if "SERVER_PORT" not in env:
        env["SERVER_PORT"] = "443" if env["wsgi.url_scheme"] == "https" else "80"
    return env


# Apps send the same few statuses and headers again and again: each distinct one is checked
# once, then found in these (bounded) caches.
_STATUS_OK: dict[str, int] = {}
_HEADER_OK: dict[tuple[str, str], bool] = {}
_CACHE_LIMIT = 4096


def _check_status(status: Any) -> int:
    """Validate a status string; returns its code."""
    if type(status) is not str or not _STATUS(status):
        raise HeaderError(f"invalid status {status!r}: expected a str like '200 OK'")
    code = int(status[:3])
    if len(_STATUS_OK) < _CACHE_LIMIT:
        _STATUS_OK[status] = code
    return code


def _check_header(item: Any) -> bool:
    """Validate one (name, value) header; returns whether it is Content-Length."""
    if type(item) is not tuple or len(item) != 2:
        raise HeaderError(f"response header {item!r} is not a (name, value) tuple")
    name, value = item
    if type(name) is not str or not _TOKEN(name):
        raise HeaderError(f"invalid response header name {name!r}")
    if type(value) is not str or _BAD_VALUE(value):
        raise HeaderError(
            f"invalid value for response header {name!r}: {value!r} "
            "(CR, LF and other control characters are not allowed)"
        )
    lower = name.lower()
    if lower in _HOP_BY_HOP:
        raise HeaderError(f"hop-by-hop header {name!r} is not allowed from a WSGI app (PEP 3333)")
    is_length = lower == "content-length"
    if len(_HEADER_OK) < _CACHE_LIMIT:
        _HEADER_OK[item] = is_length
    return is_length


class Exchange:
    """One request's response side: start_response, write(), and sending the result."""

    __slots__ = (
        "conn",
        "environ",
        "status",
        "headers",
        "has_length",
        "head_sent",
        "head_only",
        "code",
    )

    def __init__(self, conn: Connection, environ: dict[str, Any]) -> None:
        self.conn = conn
        self.environ = environ
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.has_length = False
        self.head_sent = False
        self.head_only = environ.get("REQUEST_METHOD") == "HEAD"
        self.code = 0

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], None]:
        """PEP 3333 start_response; raises HeaderError for anything that cannot go on the wire."""
        if exc_info is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response called a second time without exc_info")
        code = _STATUS_OK.get(status) if type(status) is str else None
        if code is None:
            code = _check_status(status)
        if type(headers) is not list:
            raise HeaderError(f"response headers must be a list, not {type(headers).__name__}")
        has_length = False
        for item in headers:
            try:
                is_length = _HEADER_OK.get(item)
            except TypeError:  # unhashable: certainly not a (str, str) tuple
                is_length = None
            if is_length is None:
                is_length = _check_header(item)
            if is_length:
                has_length = True
        self.status = status
        self.headers = headers
        self.has_length = has_length
        self.code = code
        return self.write

    def protocol(self) -> str:
        """The request's SERVER_PROTOCOL, used for the status line (HTTP/1.0 when absent or odd)."""
        return _PROTOCOLS.get(self.environ.get("SERVER_PROTOCOL"), "HTTP/1.0")

    def server_error(self) -> bytes:
        """A complete 500 response, for an app that failed before sending its headers."""
        return (self.protocol() + _ERROR_HEAD).encode("latin-1") + _ERROR_BODY

    def request_timeout(self) -> bytes:
        """A complete 408 response, for a request whose body stopped arriving before any answer."""
        return (self.protocol() + _TIMEOUT_HEAD).encode("latin-1") + _TIMEOUT_BODY

    def render_head(self, length: int | None) -> bytes:
        """The status line and headers, adding Content-Length when it is known and the app gave none."""
        proto = _PROTOCOLS.get(self.environ.get("SERVER_PROTOCOL"), "HTTP/1.0")
        lines: list[str] = [proto, " ", self.status or "500 Internal Server Error", "\r\n"]
        for name, value in self.headers:
            lines += (name, ": ", value, "\r\n")
        # 204 and 304 carry no body and, by RFC 9110, no Content-Length of ours either.
        if length is not None and not self.has_length and self.code != 204 and self.code != 304:
            lines += ("Content-Length: ", str(length), "\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")

    def write(self, data: bytes) -> None:
        """The legacy write() callable: sends the headers first, then ``data`` at once."""
        if self.status is None:
            raise AssertionError("write() called before start_response()")
        if type(data) is not bytes:
            raise TypeError(f"write() takes bytes, not {type(data).__name__}")
        if not self.head_sent:
            self.head_sent = True
            self.conn.send([self.render_head(None)] if self.head_only else [self.render_head(None), data])
        elif data and not self.head_only:
            self.conn.send([data])

    def send_result(self, result: Iterable[bytes]) -> None:
        """Send what the app returned: lists at once with Content-Length, files by sendfile, else streamed."""
        kind = type(result)
        if kind is list or kind is tuple:
            total = 0
            for chunk in result:  # type: ignore[union-attr]
                if type(chunk) is not bytes:
                    raise TypeError(f"the app's response holds a {type(chunk).__name__}, not bytes")
                total += len(chunk)
            if self.status is None:
                raise AssertionError("the app returned a body without calling start_response()")
            if self.head_only:
                if not self.head_sent:
                    self.head_sent = True
                    head = self.render_head(total)
                    self.conn.send([head], len(head))
                return
            if self.head_sent:
                self.conn.send(list(result), total)
            else:
                self.head_sent = True
                head = self.render_head(total)
                self.conn.send([head, *result], total + len(head))
            return
        if kind is FileWrapper and not self.head_sent:
            fd = result.fileno_for_sendfile()  # type: ignore[attr-defined]
            if fd is not None:
                self._sendfile(fd)
                return
        for chunk in result:
            if type(chunk) is not bytes:
                raise TypeError(f"the app yielded a {type(chunk).__name__}, not bytes")
            if chunk:
                self._check_started()
                self.write(chunk)
        self._check_started()
        if not self.head_sent:
            self.head_sent = True
            self.conn.send([self.render_head(0)])

    def _check_started(self) -> None:
        if self.status is None:
            raise AssertionError("the app returned a body without calling start_response()")

    def _sendfile(self, fd: int) -> None:
        self._check_started()
        offset = os.lseek(fd, 0, os.SEEK_CUR)
        size = os.fstat(fd).st_size
        length = max(size - offset, 0)
        self.head_sent = True
        self.conn.send([self.render_head(length)])
        if self.head_only:
            return
        conn = self.conn
        conn.arm()
        out = conn.sock.fileno()
        end = offset + length
        while offset < end:
            try:
                n = os.sendfile(out, fd, offset, end - offset)
            except BlockingIOError:
                raise WriteTimeout(f"timeout sending a file: {offset} of {end} bytes sent") from None
            if n == 0:
                break
            offset += n
            conn.sent += n

"""The response side of PEP 3333: start_response, write() and sending what the app returned.

The response goes back to nginx as a raw HTTP/1.x message ended by closing the connection:
a status line with the request's SERVER_PROTOCOL, validated headers,
Content-Length whenever the body length is known, never ``Transfer-Encoding: chunked``.
Requests refused before any app ran get their error response from here too.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

from .connection import Connection, WriteTimeout
from .log import log

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


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
# Reasons of the statuses a request refused before the app ran is answered with.
_STATUS_TEXT = {
    400: "Bad Request",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
}


class HeaderError(ValueError):
    """The app passed a status or header that cannot go on the wire."""


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


def error_response(status: int, reason: str) -> bytes:
    """A complete response refusing a request before any app ran (a bad packet, a stalled body)."""
    body = f"{status} {_STATUS_TEXT.get(status, 'Error')}: {reason}\n".encode("latin-1", "replace")
    head = (
        f"HTTP/1.0 {status} {_STATUS_TEXT.get(status, 'Error')}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


# Apps send the same few statuses and headers again and again: each distinct one is checked
# once, then found in these (bounded) caches.
_STATUS_OK: dict[str, int] = {}
_HEADER_OK: dict[tuple[str, str], bool | int] = {}
DROP = 2  # a header binserve leaves out (hop-by-hop): neither True nor False
_HOP_WARNED: set[str] = set()
_CACHE_LIMIT = 4096


def _check_status(status: Any) -> int:
    """Validate a status string; returns its code."""
    if type(status) is not str or not _STATUS(status):
        raise HeaderError(f"invalid status {status!r}: expected a str like '200 OK'")
    code = int(status[:3])
    if len(_STATUS_OK) < _CACHE_LIMIT:
        _STATUS_OK[status] = code
    return code


def _check_header(item: Any) -> bool | int:
    """Validate one (name, value) header; returns whether it is Content-Length, or DROP."""
    if type(item) is not tuple or len(item) != 2:
        raise HeaderError(f"response header {item!r} is not a (name, value) tuple")
    name, value = item
    if type(name) is not str or not _TOKEN(name):
        raise HeaderError(f"invalid response header name {name!r}")
    if type(value) is not str or _BAD_VALUE(value):
        if type(value) is str and not any(char < " " and char != "\t" or char == "\x7f" for char in value):
            raise HeaderError(
                f"invalid value for response header {name!r}: {value!r} has characters beyond "
                "latin-1, which a header cannot carry (PEP 3333): encode them, as RFC 8187 or "
                "percent-encoding do"
            )
        raise HeaderError(
            f"invalid value for response header {name!r}: {value!r} "
            "(CR, LF and other control characters are not allowed)"
        )
    lower = name.lower()
    if lower in _HOP_BY_HOP:
        # PEP 3333 forbids them; nginx would strip them and uWSGI passes them on: dropped, said once.
        if lower not in _HOP_WARNED:
            _HOP_WARNED.add(lower)
            log(
                f"the app set the hop-by-hop header {name!r}, which a WSGI app may not (the connection "
                "to nginx is binserve's): dropped, here and in every later response"
            )
        verdict: bool | int = DROP
    else:
        verdict = lower == "content-length"
    if len(_HEADER_OK) < _CACHE_LIMIT:
        _HEADER_OK[item] = verdict
    return verdict


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
        "head",
        "pieces",
        "sent_file",
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
        # For the request log, as uWSGI counts them: the status line and headers sent (their size
        # and count are worked out from them only when a line is written), and the pieces the
        # body came in (uWSGI's "switches").
        self.head = b""
        self.pieces = 0
        self.sent_file = False

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
        has_length = dropped = False
        for item in headers:
            try:
                is_length = _HEADER_OK.get(item)
            except TypeError:  # unhashable: certainly not a (str, str) tuple
                is_length = None
            if is_length is None:
                is_length = _check_header(item)
            if is_length == DROP:
                dropped = True
            elif is_length:
                has_length = True
        if dropped:
            headers = [item for item in headers if item[0].lower() not in _HOP_BY_HOP]
        if len(status) == 3:  # no reason phrase: the status line still needs its space (RFC 9112)
            status += " "
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
        return self._canned(_ERROR_HEAD, _ERROR_BODY)

    def request_timeout(self) -> bytes:
        """A complete 408 response, for a request whose body stopped arriving before any answer."""
        return self._canned(_TIMEOUT_HEAD, _TIMEOUT_BODY)

    def _canned(self, head: str, body: bytes) -> bytes:
        self.head = (self.protocol() + head).encode("latin-1")
        self.pieces = 1
        return self.head + body

    @property
    def head_size(self) -> int:
        """Bytes of the status line and headers sent."""
        return len(self.head)

    @property
    def header_count(self) -> int:
        """Headers sent: the head's lines but the status line and the blank one that ends it."""
        return max(self.head.count(b"\r\n") - 2, 0)

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
        self.head = head = "".join(lines).encode("latin-1")
        return head

    def write(self, data: bytes) -> None:
        """The legacy write() callable: sends the headers first, then ``data`` at once."""
        if self.status is None:
            raise AssertionError("write() called before start_response()")
        if type(data) is not bytes:
            raise TypeError(f"write() takes bytes, not {type(data).__name__}")
        self.pieces += 1
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
            self.pieces += len(result)  # type: ignore[arg-type]
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
            # A HEAD answered with an empty iterator says nothing of the GET's length: none is sent.
            self.conn.send([self.render_head(None if self.head_only else 0)])

    def _check_started(self) -> None:
        if self.status is None:
            raise AssertionError("the app returned a body without calling start_response()")

    def _sendfile(self, fd: int) -> None:
        self._check_started()
        self.pieces += 1
        self.sent_file = True
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

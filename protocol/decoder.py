"""The fast, incremental uwsgi request decoder (sans-IO).

The caller owns the socket: it passes whatever bytes it read to ``receive_data`` (``b""``
for end of stream) and pulls events with ``next_event``:

    Head   the header and the vars block, decoded as latin-1 (PEP 3333), in wire order with
           duplicates kept; ``content_length`` from CONTENT_LENGTH
    Body   a piece of the request body (never past CONTENT_LENGTH)
    End    the request is complete; bytes after it stay in ``trailing_data``
    NEED_DATA / CLOSED   feed more bytes / the peer closed before sending a single byte

Malformed input raises ``RemoteProtocolError`` and nothing else. ``protocol.spec`` is the
normative format; tests prove this decoder agrees with it on every packet.
"""

from __future__ import annotations

import struct

from .errors import LocalProtocolError, RemoteProtocolError
from .modifiers import VARS_MODIFIERS

HEADER_SIZE = 4
MAX_BLOCK = 0xFFFF


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")
CLOSED = _Sentinel("CLOSED")


class Head:
    """The packet header and its vars (or its raw payload, for modifiers without vars).

    ``fields`` holds the vars as a dict, the last value winning; the receiver owns it and may
    turn it into the environ in place. ``vars`` gives every var in wire order, duplicates
    kept; it is worked out from the block when asked for, off the hot path. ``var_count``
    (vars on the wire, repeats included) and ``size`` (bytes of the vars block) are what
    uWSGI's request line reports, counted while decoding at no extra cost.
    """

    __slots__ = (
        "modifier1",
        "modifier2",
        "fields",
        "duplicates",
        "payload",
        "content_length",
        "var_count",
        "size",
        "_block",
    )

    def __init__(
        self,
        modifier1: int,
        modifier2: int,
        fields: dict[str, str],
        payload: bytes,
        content_length: int,
        block: bytes = b"",
        duplicates: bool = False,
        var_count: int = 0,
    ) -> None:
        self.modifier1 = modifier1
        self.modifier2 = modifier2
        self.fields = fields
        self.duplicates = duplicates
        self.payload = payload
        self.content_length = content_length
        self.var_count = var_count
        self.size = len(block)  # 0 for a packet without vars
        self._block = block

    @property
    def vars(self) -> list[tuple[str, str]]:
        """Every var in wire order, repeated keys kept (latin-1 decoded)."""
        return _walk(self._block)

    def __repr__(self) -> str:
        return (
            f"Head(modifier1={self.modifier1}, modifier2={self.modifier2}, "
            f"vars={self.vars!r}, payload={self.payload!r}, content_length={self.content_length})"
        )


class Body:
    """A piece of the request body."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Body({self.data!r})"


class End:
    """The request is complete."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "End()"


END = End()

Event = Head | Body | End | _Sentinel

_HEADER, _VARS, _BODY, _DONE = range(4)


def parse_content_length(value: str) -> int:
    """CONTENT_LENGTH as nginx sends it: empty means 0, otherwise ASCII digits only.

    uWSGI reads leading digits and ignores the rest; a value like ``12abc`` or ``-1`` is
    refused here instead, since two readers disagreeing on a body length is how request
    smuggling starts.
    """
    if not value:
        return 0
    # Past 18 digits no real body fits in memory, and int() refuses over 4300 digits.
    if len(value) > 18 or not (value.isascii() and value.isdigit()):
        raise RemoteProtocolError(f"invalid CONTENT_LENGTH {value[:40]!r}: not a decimal number", 400)
    return int(value)


_U16 = struct.Struct("<H").unpack_from


def _walk(block: bytes) -> list[tuple[str, str]]:
    """The vars in wire order, checking every size field and naming the first bad one.

    The careful pass: used for ``Head.vars`` and to explain a block the fast pass refused.
    """
    end = len(block)
    pos = 0
    pairs: list[tuple[str, str]] = []
    while pos < end:
        count = len(pairs) + 1
        if pos + 2 > end:
            raise RemoteProtocolError(
                f"var {count} at offset {pos}: key size runs past the end of the {end}-byte vars block"
            )
        klen = _U16(block, pos)[0]
        if not klen:
            raise RemoteProtocolError(f"var {count} at offset {pos}: uwsgi key cannot be null")
        kend = pos + 2 + klen
        if kend + 2 > end:
            raise RemoteProtocolError(
                f"var {count} at offset {pos}: key of {klen} bytes runs past the end "
                f"of the {end}-byte vars block"
            )
        key = block[pos + 2 : kend].decode("latin-1")
        vlen = _U16(block, kend)[0]
        vend = kend + 2 + vlen
        if vend > end:
            raise RemoteProtocolError(
                f"var {count} ({key[:40]!r}) at offset {pos}: value of {vlen} bytes "
                f"runs past the end of the {end}-byte vars block"
            )
        pairs.append((key, block[kend + 2 : vend].decode("latin-1")))
        pos = vend
    return pairs


def _parse(block: bytes, max_vars: int) -> tuple[dict[str, str], bool, int, int]:
    """The vars as a dict (the last value winning), whether any key repeats, the content length, the count.

    The hot path. Keys and values are decoded as latin-1 in one go: latin-1 maps byte i to
    code point i, so the offsets read from the size fields index the decoded string
    directly. The loop checks only cheaply (a size field past the end raises IndexError, a
    value past it leaves ``pos`` beyond the end); ``_walk`` then finds and names the fault.
    """
    text = block.decode("latin-1")
    end = len(block)
    pos = count = 0
    fields: dict[str, str] = {}
    try:
        while pos < end:
            key = pos + 2
            pos = key + (block[pos] | block[pos + 1] << 8)
            value = pos + 2
            vend = value + (block[pos] | block[pos + 1] << 8)
            fields[text[key:pos]] = text[value:vend]
            count += 1
            pos = vend
    except IndexError:
        pos = end + 1
    # An empty key slices to "": one lookup here instead of a test per var.
    if pos != end or "" in fields:
        _walk(block)
        raise RemoteProtocolError("malformed vars block")  # unreachable: _walk names the fault
    if count > max_vars:
        raise RemoteProtocolError(f"too many vars: {count} (max {max_vars})", 431)
    duplicates = len(fields) != count
    length = fields.get("CONTENT_LENGTH")
    if length is None:
        return fields, duplicates, 0, count
    if duplicates:
        lengths = sorted({value for key, value in _walk(block) if key == "CONTENT_LENGTH"})
        if len(lengths) > 1:
            raise RemoteProtocolError(
                f"conflicting CONTENT_LENGTH vars {lengths[0][:40]!r} and {lengths[1][:40]!r}"
            )
    return fields, duplicates, parse_content_length(length), count


def parse_vars(block: bytes, max_vars: int = 1024) -> tuple[list[tuple[str, str]], int]:
    """Decode a vars block into ``[(key, value), ...]`` (latin-1, wire order) and its content length."""
    _, _, length, _ = _parse(block, max_vars)
    return _walk(block), length


def _make_head(buf: bytes | bytearray, need: int, max_vars: int, max_body: int | None) -> Head:
    """The Head of the packet in ``buf[:need]`` (header and vars, all present)."""
    modifier1 = buf[0]
    block = bytes(buf[HEADER_SIZE:need])
    if modifier1 not in VARS_MODIFIERS:
        return Head(modifier1, buf[3], {}, block, 0)
    fields, duplicates, length, count = _parse(block, max_vars)
    if max_body is not None and length > max_body:
        raise RemoteProtocolError(f"Invalid (too big) CONTENT_LENGTH: {length} (max {max_body})", 413)
    return Head(modifier1, buf[3], fields, b"", length, block, duplicates, count)


def _block_size(buf: bytes | bytearray, max_vars_size: int) -> int:
    """The datasize of the header at the front of ``buf``, refused when over the limit."""
    size = buf[1] | buf[2] << 8
    if size > max_vars_size:
        raise RemoteProtocolError(f"invalid request block size: {size} (max {max_vars_size})", 431)
    return size


def decode_head(
    data: bytes, max_vars_size: int = MAX_BLOCK, max_body: int | None = None, max_vars: int = 1024
) -> tuple[Head, int] | None:
    """Decode a packet's header and vars when ``data`` holds them all (the usual first read).

    Returns the Head and the offset where the body starts, or None when more bytes are
    needed (then feed a ``Decoder``). Same checks and errors as ``Decoder``, without its
    state machine; ``Decoder.after_head`` reads the body that follows.
    """
    if len(data) < HEADER_SIZE:
        return None
    need = HEADER_SIZE + _block_size(data, max_vars_size)
    if len(data) < need:
        return None
    return _make_head(data, need, max_vars, max_body), need


class Decoder:
    """Incremental decoder for one uwsgi request (header, vars block, body).

    Limits are fixed at construction: ``max_vars_size`` bounds the vars block (uWSGI's
    buffer-size), ``max_body`` the CONTENT_LENGTH (limit-post, ``None`` for none),
    ``max_vars`` the number of vars.
    """

    __slots__ = ("max_vars_size", "max_body", "max_vars", "_buf", "_state", "_need", "_head", "_left", "_eof")

    def __init__(
        self, max_vars_size: int = MAX_BLOCK, max_body: int | None = None, max_vars: int = 1024
    ) -> None:
        if not 0 <= max_vars_size <= MAX_BLOCK:
            raise LocalProtocolError(f"max_vars_size must be within 0..{MAX_BLOCK}, not {max_vars_size}")
        self.max_vars_size = max_vars_size
        self.max_body = max_body
        self.max_vars = max_vars
        self._buf: bytes | bytearray = b""
        self._state = _HEADER
        self._need = HEADER_SIZE
        self._head: Head | None = None
        self._left = 0
        self._eof = False

    @classmethod
    def after_head(cls, head: Head, rest: bytes) -> Decoder:
        """A decoder for the body of a request whose Head came from ``decode_head``.

        ``rest`` holds the bytes that followed the vars in the same read.
        """
        decoder = cls()
        decoder._head = head
        decoder._state = _BODY
        decoder._left = head.content_length
        decoder._buf = rest
        return decoder

    @property
    def head(self) -> Head | None:
        """The Head event once it has been produced."""
        return self._head

    @property
    def body_left(self) -> int:
        """Body bytes announced by CONTENT_LENGTH and not yet produced as Body events."""
        return self._left

    @property
    def unreceived(self) -> int:
        """Body bytes announced by CONTENT_LENGTH that have not even been fed in yet."""
        if self._state != _BODY:
            return 0
        return max(self._left - len(self._buf), 0)

    @property
    def trailing_data(self) -> bytes:
        """Bytes received and not yet turned into events (after End: bytes past the request)."""
        return bytes(self._buf)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the peer; ``b""`` means the peer closed its side."""
        if self._eof:
            raise LocalProtocolError("receive_data after end of stream")
        if not data:
            self._eof = True
        elif not self._buf:
            self._buf = data
        else:
            if isinstance(self._buf, bytes):
                self._buf = bytearray(self._buf)
            self._buf += data

    def next_event(self) -> Event:
        """Return the next event, ``NEED_DATA`` if more bytes are needed, or raise ProtocolError."""
        state = self._state
        if state == _BODY:
            buf = self._buf
            if buf and self._left:
                left = self._left
                if len(buf) <= left:
                    chunk = bytes(buf)
                    self._buf = b""
                else:
                    chunk = bytes(buf[:left])
                    self._buf = buf[left:]
                self._left = left - len(chunk)
                if not self._left:
                    self._state = _DONE
                return Body(chunk)
            if not self._left:
                self._state = _DONE
                return END
            if self._eof:
                got = self._head.content_length - self._left if self._head else 0
                raise RemoteProtocolError(
                    f"connection closed after {got} of {got + self._left} body bytes (CONTENT_LENGTH)"
                )
            return NEED_DATA
        if state == _HEADER:
            buf = self._buf
            if len(buf) < HEADER_SIZE:
                if self._eof:
                    if not buf:
                        return CLOSED
                    raise RemoteProtocolError(f"connection closed after {len(buf)} of 4 header bytes")
                return NEED_DATA
            self._need = HEADER_SIZE + _block_size(buf, self.max_vars_size)
            self._state = state = _VARS
        if state == _VARS:
            buf = self._buf
            need = self._need
            if len(buf) < need:
                if self._eof:
                    raise RemoteProtocolError(
                        f"connection closed after {len(buf)} of {need} packet bytes (header and vars)"
                    )
                return NEED_DATA
            self._head = head = _make_head(buf, need, self.max_vars, self.max_body)
            self._buf = buf[need:]
            self._left = head.content_length
            self._state = _BODY
            return head
        return END

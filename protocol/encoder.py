"""Building uwsgi packets: requests for clients, tests and tools, and the ping reply.

Keys and values may be ``str`` (encoded as latin-1, as PEP 3333 decodes them) or ``bytes``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .errors import LocalProtocolError
from .modifiers import PING as PING_MODIFIER
from .modifiers import WSGI

PING = bytes((PING_MODIFIER, 0, 0, 0))
PONG = bytes((PING_MODIFIER, 0, 0, 1))

VarsLike = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]]


def _as_bytes(item: str | bytes) -> bytes:
    return item.encode("latin-1") if isinstance(item, str) else bytes(item)


def encode_header(modifier1: int, datasize: int, modifier2: int = 0) -> bytes:
    """The 4-byte header: modifier1, datasize as little-endian u16, modifier2."""
    if not 0 <= datasize <= 0xFFFF:
        raise LocalProtocolError(f"datasize {datasize} does not fit the u16 size field")
    if not (0 <= modifier1 <= 255 and 0 <= modifier2 <= 255):
        raise LocalProtocolError(f"modifiers must be bytes, not {modifier1}, {modifier2}")
    return bytes((modifier1, datasize & 0xFF, datasize >> 8, modifier2))


def encode_vars(vars: VarsLike) -> bytes:
    """The vars block for ``vars`` (a mapping, or pairs when keys repeat)."""
    pairs = vars.items() if isinstance(vars, Mapping) else vars
    parts: list[bytes] = []
    for key, value in pairs:
        k, v = _as_bytes(key), _as_bytes(value)
        if not k:
            raise LocalProtocolError("a uwsgi var key cannot be empty")
        if len(k) > 0xFFFF or len(v) > 0xFFFF:
            raise LocalProtocolError(f"var {k[:40]!r} is longer than 65535 bytes")
        parts += (len(k).to_bytes(2, "little"), k, len(v).to_bytes(2, "little"), v)
    return b"".join(parts)


def encode_request(vars: VarsLike, body: bytes = b"", modifier1: int = WSGI, modifier2: int = 0) -> bytes:
    """A whole request packet. CONTENT_LENGTH is added from ``body`` when ``vars`` lacks it."""
    pairs = list(vars.items() if isinstance(vars, Mapping) else vars)
    if body and not any(_as_bytes(k) == b"CONTENT_LENGTH" for k, _ in pairs):
        pairs.append(("CONTENT_LENGTH", str(len(body))))
    block = encode_vars(pairs)
    return encode_header(modifier1, len(block), modifier2) + block + body


def encode_pong(message: bytes = b"") -> bytes:
    """The reply to a ping: modifier1 100, modifier2 1, and an optional warning message."""
    return encode_header(PING_MODIFIER, len(message), 1) + message

"""The normative declaration of the uwsgi packet, written with ``construct``.

This is the format as uWSGI documents it and nginx's uwsgi module writes it: a 4-byte
header ``modifier1:u8 datasize:u16le modifier2:u8``, then ``datasize`` bytes of vars, each
``u16le key_size, key, u16le value_size, value``, with no count and no terminator. Keys must
not be empty (uWSGI drops such requests); values may.

It is slow (about 30x the hand-written decoder), so the server never parses with it: tests
use it as the oracle the fast decoder must agree with, and builders use it to make packets.
"""

from construct import (
    Bytes,
    Check,
    FixedSized,
    GreedyBytes,
    GreedyRange,
    Int8ul,
    Int16ul,
    Prefixed,
    Rebuild,
    Struct,
    Terminated,
    len_,
    this,
)

Header = Struct(
    "modifier1" / Int8ul,
    "datasize" / Int16ul,
    "modifier2" / Int8ul,
)

Var = Struct(
    "key" / Prefixed(Int16ul, GreedyBytes),
    Check(len_(this.key) > 0),
    "value" / Prefixed(Int16ul, GreedyBytes),
)

# GreedyRange stops quietly at the first var that does not parse; Terminated then
# rejects whatever is left, so a truncated or overlong var is an error, not a short list.
VarsBlock = Struct(
    "vars" / GreedyRange(Var),
    Terminated,
)

Packet = Struct(
    "modifier1" / Int8ul,
    # When building, the size is that of the vars block as built, so callers never count bytes.
    "datasize" / Rebuild(Int16ul, lambda ctx: len(VarsBlock.build(ctx.vars))),
    "modifier2" / Int8ul,
    "vars" / FixedSized(this.datasize, VarsBlock),
)

# A packet whose payload is not a vars block (ping, echo, arrays): the raw bytes.
RawPacket = Struct(
    "modifier1" / Int8ul,
    "datasize" / Rebuild(Int16ul, len_(this.payload)),
    "modifier2" / Int8ul,
    "payload" / Bytes(this.datasize),
)

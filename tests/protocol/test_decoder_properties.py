"""Property tests: the fast decoder agrees with the normative ``spec`` on every packet.

(a) every valid packet, however it is split, decodes to what was built;
(b) any bytes decode or raise ProtocolError, nothing else, and the decoder accepts a vars block
    exactly when the spec does (CONTENT_LENGTH checks aside);
(c) each limit raises with its status hint, at its boundary.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import construct
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from test_decoder_vectors import decode

from binserve.protocol import (
    CLOSED,
    Body,
    Decoder,
    End,
    Head,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    encode_request,
    parse_vars,
    spec,
)

Pairs = list[tuple[bytes, bytes]]

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NAMES = [b"REQUEST_METHOD", b"PATH_INFO", b"QUERY_STRING", b"HTTP_HOST", b"HTTP_X_DUP", b"SCRIPT_NAME"]
# Keys past 255 bytes are rare on the wire but set the size field's high byte.
keys = st.one_of(
    st.sampled_from(NAMES), st.binary(min_size=1, max_size=40), st.binary(min_size=250, max_size=300)
).filter(lambda k: k != b"CONTENT_LENGTH")
# Values past 255 bytes set the high byte of the u16 size field.
values = st.one_of(st.binary(max_size=40), st.binary(min_size=250, max_size=400))
pair_lists = st.lists(st.tuples(keys, values), max_size=12)
modifier1s = st.sampled_from([0, 30])
modifier2s = st.integers(0, 255)


def build(pairs: Pairs, modifier1: int = 0, modifier2: int = 0) -> bytes:
    """A packet built by the normative declaration."""
    return spec.Packet.build(
        {
            "modifier1": modifier1,
            "modifier2": modifier2,
            "vars": {"vars": [{"key": k, "value": v} for k, v in pairs]},
        }
    )


def latin1(pairs: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in pairs]


def spec_pairs(block: bytes) -> Pairs:
    """The vars block as the spec parses it; raises construct.ConstructError if it is not one."""
    return [(v.key, v.value) for v in spec.VarsBlock.parse(block).vars]


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def bytewise(data: bytes) -> Iterator[bytes]:
    return (data[i : i + 1] for i in range(len(data)))


def run(
    chunks: Iterable[bytes], decoder: Decoder | None = None, eof: bool = True
) -> tuple[Decoder, list[object]]:
    """Feed ``chunks`` then EOF, pulling events until NEED_DATA, End or CLOSED after each."""
    decoded = decode(chunks, decoder, eof)
    return decoded.decoder, decoded.events


def body_of(events: list[object]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Body))


def check_decodes_to(events: list[object], pairs: Pairs, modifier1: int, modifier2: int) -> None:
    head = events[0]
    assert isinstance(head, Head)
    assert (head.modifier1, head.modifier2) == (modifier1, modifier2)
    assert head.vars == latin1(pairs)
    assert head.var_count == len(pairs)
    assert head.size == len(spec.VarsBlock.build({"vars": [{"key": k, "value": v} for k, v in pairs]}))
    assert isinstance(events[-1], End)


# --- (a) valid packets round-trip ----------------------------------------------------------------


@FAST
@given(pairs=pair_lists, modifier1=modifier1s, modifier2=modifier2s, data=st.data())
def test_spec_built_packet_decodes_whole_and_split(
    pairs: Pairs, modifier1: int, modifier2: int, data: st.DataObject
) -> None:
    packet = build(pairs, modifier1, modifier2)
    assert spec.Header.parse(packet).datasize == len(packet) - 4

    dec, events = run([packet])
    check_decodes_to(events, pairs, modifier1, modifier2)
    assert dec.trailing_data == b""

    cuts = data.draw(st.lists(st.integers(1, max(1, len(packet) - 1)), max_size=8), label="cuts")
    dec, events = run(split(packet, cuts))
    check_decodes_to(events, pairs, modifier1, modifier2)


@FEW
@given(pairs=st.lists(st.tuples(keys, st.binary(max_size=40)), max_size=8), modifier1=modifier1s)
def test_spec_built_packet_decodes_bytewise(pairs: Pairs, modifier1: int) -> None:
    packet = build(pairs, modifier1, 7)
    _, events = run(bytewise(packet))
    check_decodes_to(events, pairs, modifier1, 7)
    assert len(events) == 2  # Head, End: no body


@FAST
@given(
    pairs=pair_lists,
    body=st.binary(max_size=600),
    modifier1=modifier1s,
    modifier2=modifier2s,
    trailing=st.binary(max_size=20),
    data=st.data(),
)
def test_encoded_request_round_trips(
    pairs: Pairs, body: bytes, modifier1: int, modifier2: int, trailing: bytes, data: st.DataObject
) -> None:
    packet = encode_request(pairs, body, modifier1, modifier2)
    # The encoder writes what the spec declares, plus CONTENT_LENGTH when there is a body.
    parsed = spec.Packet.parse(packet)
    want = pairs + [(b"CONTENT_LENGTH", str(len(body)).encode())] if body else pairs
    assert [(v.key, v.value) for v in parsed.vars.vars] == want
    assert (parsed.modifier1, parsed.modifier2) == (modifier1, modifier2)
    assert packet[4 + parsed.datasize :] == body

    cuts = data.draw(st.lists(st.integers(1, len(packet) + len(trailing)), max_size=8), label="cuts")
    dec, events = run(split(packet + trailing, cuts), eof=False)
    check_decodes_to(events, want, modifier1, modifier2)
    assert events[0].content_length == len(body)
    assert body_of(events) == body
    assert dec.trailing_data == trailing


@FEW
@given(
    pairs=st.lists(st.tuples(keys, st.binary(max_size=20)), max_size=4),
    body=st.binary(min_size=1, max_size=200),
)
def test_encoded_request_decodes_bytewise(pairs: Pairs, body: bytes) -> None:
    _, events = run(bytewise(encode_request(pairs, body)))
    bodies = [e.data for e in events if isinstance(e, Body)]
    assert bodies == [body[i : i + 1] for i in range(len(body))]
    assert isinstance(events[-1], End)


# --- (b) any bytes: decode or ProtocolError, and agree with the spec ---------------------------


def check_any_bytes(stream: bytes, chunks: Iterable[bytes] | None = None) -> None:
    """``stream`` decodes or raises ProtocolError; its vars block is judged as the spec judges it."""
    try:
        _, events = run([stream] if chunks is None else chunks)
    except RemoteProtocolError:
        events = None
    # Any other exception (IndexError, UnicodeError, ValueError, ...) fails the test here.

    if not stream:
        assert events == [CLOSED]
        return
    if len(stream) < 4:
        event("EOF in header")
        assert events is None
        return
    if events is not None:
        assert isinstance(events[0], Head) and isinstance(events[-1], End)
    header = spec.Header.parse(stream)
    block = stream[4 : 4 + header.datasize]
    if len(block) < header.datasize:
        event("EOF in vars block")
        assert events is None
        return
    if header.modifier1 not in (0, 30):
        # Not a vars packet: the payload is passed on raw and there is no body.
        event("raw payload")
        assert events is not None
        assert events[0].payload == block and events[0].vars == []
        return

    try:
        want = spec_pairs(block)
    except construct.ConstructError:
        event("spec and decoder reject the block")
        with pytest.raises(RemoteProtocolError):
            parse_vars(block)
        assert events is None
        return
    try:
        got, length = parse_vars(block)
    except RemoteProtocolError as err:
        # The spec does not know CONTENT_LENGTH; that is the only other reason to refuse a block.
        event("decoder rejects CONTENT_LENGTH")
        assert "CONTENT_LENGTH" in err.message
        assert any(k == b"CONTENT_LENGTH" for k, _ in want)
        assert events is None
        return
    assert got == latin1(want)
    if events is not None:
        event("both accept")
        assert events[0].vars == got
        assert (events[0].var_count, events[0].size) == (len(want), header.datasize)
        assert body_of(events) == stream[4 + header.datasize : 4 + header.datasize + length]
    else:
        event("EOF in body")
        assert len(stream) < 4 + header.datasize + length


@settings(max_examples=500, deadline=None)
@given(stream=st.binary(max_size=300))
def test_random_bytes(stream: bytes) -> None:
    check_any_bytes(stream)


@FAST
@given(block=st.binary(max_size=300), modifier1=st.sampled_from([0, 30, 100, 5]), data=st.data())
def test_random_vars_block_with_true_size(block: bytes, modifier1: int, data: st.DataObject) -> None:
    # A correct header in front of random bytes gets past the size check into the vars parser.
    stream = bytes((modifier1, len(block) & 0xFF, len(block) >> 8, 0)) + block
    check_any_bytes(stream)
    cuts = data.draw(st.lists(st.integers(1, len(stream)), max_size=6), label="cuts")
    check_any_bytes(stream, split(stream, cuts))


CL_VALUES = [b"", b"0", b"5", b"0005", b"12abc", b"-1", b"+5", b" 5", b"5 ", b"\xb2", b"99999999999"]


@st.composite
def var_soup(draw: st.DrawFn) -> bytes:
    """A vars block made of mostly well-formed vars (CONTENT_LENGTH often) and some raw garbage."""
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["var", "var", "content_length", "garbage", "empty_key"]))
        if kind == "garbage":
            parts.append(draw(st.binary(max_size=6)))
            continue
        key = b"" if kind == "empty_key" else b"CONTENT_LENGTH" if kind == "content_length" else draw(keys)
        value = draw(st.sampled_from(CL_VALUES) if kind == "content_length" else st.binary(max_size=10))
        parts.append(len(key).to_bytes(2, "little") + key + len(value).to_bytes(2, "little") + value)
    return b"".join(parts)


@FAST
@given(block=var_soup(), body=st.binary(max_size=8))
def test_vars_soup_agrees_with_spec(block: bytes, body: bytes) -> None:
    stream = b"\x00" + len(block).to_bytes(2, "little") + b"\x00" + block + body
    check_any_bytes(stream)


@st.composite
def mutated_packets(draw: st.DrawFn) -> bytes:
    """A valid packet (vars and body) with bytes flipped, inserted and deleted."""
    pairs = draw(st.lists(st.tuples(keys, st.binary(max_size=20)), max_size=6))
    packet = bytearray(encode_request(pairs, draw(st.binary(max_size=20)), draw(modifier1s)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "insert":
            packet.insert(draw(st.integers(0, len(packet))), draw(st.integers(0, 255)))
        elif packet:
            at = draw(st.integers(0, len(packet) - 1))
            if op == "flip":
                packet[at] ^= draw(st.integers(1, 255))
            else:
                del packet[at]
    return bytes(packet)


@settings(max_examples=500, deadline=None)
@given(stream=mutated_packets())
def test_mutated_packets(stream: bytes) -> None:
    check_any_bytes(stream)


@FAST
@given(block=var_soup(), mutation=st.tuples(st.integers(0, 400), st.integers(1, 255)))
def test_mutated_block_with_true_size(block: bytes, mutation: tuple[int, int]) -> None:
    # Mutate the vars only and fix up the header, so the damage reaches the vars parser.
    assume(block)
    at, xor = mutation
    mutated = bytearray(block)
    mutated[at % len(block)] ^= xor
    stream = bytes((30, len(mutated) & 0xFF, len(mutated) >> 8, 0)) + bytes(mutated)
    check_any_bytes(stream)


def test_check_any_bytes_catches_a_disagreement() -> None:
    # Guard against a vacuous oracle: a zero-length key is refused by spec and decoder alike.
    block = b"\x00\x00\x01\x00x"
    with pytest.raises(construct.ConstructError):
        spec_pairs(block)
    with pytest.raises(RemoteProtocolError, match="cannot be null"):
        parse_vars(block)


def test_huge_content_length_is_a_protocol_error() -> None:
    packet = encode_request([("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", "1" * 5000)])
    with pytest.raises(RemoteProtocolError):
        run([packet], Decoder(max_body=1 << 20))


# --- (c) limits ----------------------------------------------------------------------------------


@FAST
@given(size=st.one_of(st.just(0), st.integers(5, 3000)), limit=st.integers(0, 3000))
def test_max_vars_size(size: int, limit: int) -> None:
    packet = encode_request([("K", "v" * (size - 5))] if size else [])
    assert spec.Header.parse(packet).datasize == size
    dec = Decoder(max_vars_size=limit)
    if size > limit:
        # Refused from the header alone, before the block is buffered.
        with pytest.raises(RemoteProtocolError) as err:
            run([packet[:4]], dec, eof=False)
        assert err.value.status_hint == 431
        assert f"invalid request block size: {size} (max {limit})" in err.value.message
    else:
        _, events = run([packet], dec)
        assert len(events[0].vars) == (1 if size else 0)


@FAST
@given(length=st.integers(0, 10**12), limit=st.integers(0, 10**12))
def test_max_body(length: int, limit: int) -> None:
    packet = encode_request([("CONTENT_LENGTH", str(length))])
    dec = Decoder(max_body=limit)
    if length > limit:
        # Refused at the head, before any body arrives.
        with pytest.raises(RemoteProtocolError) as err:
            run([packet], dec, eof=False)
        assert err.value.status_hint == 413
        assert f"CONTENT_LENGTH: {length} (max {limit})" in err.value.message
    else:
        _, events = run([packet], dec, eof=False)
        assert events[0].content_length == length
        assert dec.body_left == length


@FAST
@given(count=st.integers(0, 60), limit=st.integers(0, 60))
def test_max_vars(count: int, limit: int) -> None:
    packet = encode_request([(f"HTTP_X_{i}", "") for i in range(count)])
    dec = Decoder(max_vars=limit)
    if count > limit:
        with pytest.raises(RemoteProtocolError) as err:
            run([packet], dec)
        assert err.value.status_hint == 431
        assert f"too many vars: {count} (max {limit})" in err.value.message
    else:
        _, events = run([packet], dec)
        assert len(events[0].vars) == count


@pytest.mark.parametrize("limit", [-1, 0x10000])
def test_max_vars_size_out_of_range(limit: int) -> None:
    with pytest.raises(LocalProtocolError, match="max_vars_size"):
        Decoder(max_vars_size=limit)


def test_receive_after_eof_is_local_error() -> None:
    dec = Decoder()
    dec.receive_data(b"")
    assert dec.next_event() is CLOSED
    with pytest.raises(LocalProtocolError) as err:
        dec.receive_data(b"\x00")
    assert isinstance(err.value, ProtocolError)
    assert not isinstance(err.value, RemoteProtocolError)

"""The encoder (requests, ping/pong) and the modifier table, checked against uWSGI's documented bytes."""

from __future__ import annotations

import pytest

from binserve.protocol import (
    PING,
    PONG,
    Decoder,
    LocalProtocolError,
    ProtocolError,
    encode_header,
    encode_pong,
    encode_request,
    encode_vars,
    spec,
)
from binserve.protocol import modifiers as mods


def test_ping_and_pong_bytes() -> None:
    # uWSGI's ping: request 64 00 00 00; uWSGI's reply b'd\x00\x00\x01'.
    assert PING == b"d\x00\x00\x00"
    assert PONG == b"d\x00\x00\x01"
    assert encode_pong() == PONG
    assert spec.RawPacket.parse(PING).modifier1 == mods.PING


def test_pong_with_warning_message() -> None:
    reply = encode_pong(b"overloaded")
    assert reply == b"d\x0a\x00\x01overloaded"
    parsed = spec.RawPacket.parse(reply)
    assert (parsed.modifier1, parsed.datasize, parsed.modifier2, parsed.payload) == (
        100,
        10,
        1,
        b"overloaded",
    )


def test_ping_decodes_as_raw_packet() -> None:
    dec = Decoder()
    dec.receive_data(PING)
    head = dec.next_event()
    assert (head.modifier1, head.modifier2, head.vars, head.payload) == (100, 0, [], b"")
    assert mods.action(head.modifier1) is mods.Action.PING


def test_header_is_little_endian() -> None:
    # A captured packet: the LAB hexdump header 00 56 01 00 is 342 bytes of vars.
    assert encode_header(0, 342) == b"\x00\x56\x01\x00"
    assert encode_header(30, 0xFFFF, 7) == b"\x1e\xff\xff\x07"
    assert spec.Header.parse(b"\x00\x56\x01\x00").datasize == 342


@pytest.mark.parametrize(
    ("modifier1", "datasize", "modifier2"), [(0, -1, 0), (0, 0x10000, 0), (256, 0, 0), (0, 0, -1)]
)
def test_header_out_of_range(modifier1: int, datasize: int, modifier2: int) -> None:
    with pytest.raises(LocalProtocolError):
        encode_header(modifier1, datasize, modifier2)


def test_vars_wire_format() -> None:
    assert encode_vars({"QUERY_STRING": ""}) == b"\x0c\x00QUERY_STRING\x00\x00"
    # Pairs keep duplicates and order; str is latin-1, bytes pass through.
    block = encode_vars([("HTTP_X_DUP", "one"), (b"HTTP_X_DUP", b"two"), ("PATH_INFO", "/caf\xe9")])
    assert [(v.key, v.value) for v in spec.VarsBlock.parse(block).vars] == [
        (b"HTTP_X_DUP", b"one"),
        (b"HTTP_X_DUP", b"two"),
        (b"PATH_INFO", b"/caf\xe9"),
    ]


@pytest.mark.parametrize("key", ["", b""])
def test_empty_key_rejected(key: str | bytes) -> None:
    with pytest.raises(LocalProtocolError, match="cannot be empty") as err:
        encode_vars([("REQUEST_METHOD", "GET"), (key, "x")])
    assert isinstance(err.value, ProtocolError)
    with pytest.raises(LocalProtocolError):
        encode_request({key: "x"})


def test_empty_value_allowed() -> None:
    assert encode_vars([("CONTENT_TYPE", "")]) == b"\x0c\x00CONTENT_TYPE\x00\x00"


def test_var_too_long_rejected() -> None:
    with pytest.raises(LocalProtocolError, match="longer than 65535"):
        encode_vars([("HTTP_X_BIG", "a" * 0x10000)])
    # A block over the u16 datasize is refused too, even when each var fits.
    with pytest.raises(LocalProtocolError, match="u16"):
        encode_request([("A", "a" * 40000), ("B", "b" * 40000)])


def test_encode_request_adds_content_length() -> None:
    packet = encode_request({"REQUEST_METHOD": "POST"}, b"hello", modifier1=30, modifier2=2)
    parsed = spec.Packet.parse(packet)
    assert (parsed.modifier1, parsed.modifier2) == (30, 2)
    assert [(v.key, v.value) for v in parsed.vars.vars] == [
        (b"REQUEST_METHOD", b"POST"),
        (b"CONTENT_LENGTH", b"5"),
    ]
    assert packet.endswith(b"hello")
    assert len(packet) == 4 + parsed.datasize + 5


def test_encode_request_keeps_given_content_length_and_adds_none_without_body() -> None:
    given = encode_request([(b"CONTENT_LENGTH", b"3")], b"abc")
    assert [v.key for v in spec.Packet.parse(given).vars.vars] == [b"CONTENT_LENGTH"]
    empty = encode_request({"REQUEST_METHOD": "GET"})
    assert [v.key for v in spec.Packet.parse(empty).vars.vars] == [b"REQUEST_METHOD"]
    assert encode_request([]) == b"\x00\x00\x00\x00"


def test_describe_names_modifiers() -> None:
    assert mods.describe(0) == "0 (WSGI request)"
    assert mods.describe(30) == "30 (WSGI request, PATH_INFO minus SCRIPT_NAME)"
    assert mods.describe(5) == "5 (PSGI (Perl))"
    assert mods.describe(100) == "100 (ping)"
    assert mods.describe(4) == "4 (unknown)"


def test_action_per_modifier() -> None:
    assert mods.action(0) is mods.action(30) is mods.Action.WSGI
    assert mods.action(100) is mods.Action.PING
    for unsupported in (5, 7, 17, 72, 101, 173, 255):
        assert mods.action(unsupported) is mods.Action.UNSUPPORTED, unsupported
    assert mods.action(4) is mods.Action.UNSUPPORTED  # unknown
    assert mods.VARS_MODIFIERS == {0, 30}
    assert all(0 <= m <= 255 for m in mods.MODIFIERS)

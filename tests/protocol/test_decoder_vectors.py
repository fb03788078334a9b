"""The decoder against the packet corpus in tests/packets/.

nginx-1.22/ holds real captures (see its README.md): each must decode whole, one byte at a time
and with trailing bytes, to exactly what the normative ``spec.Packet`` parses. invalid/ holds
hand-made broken packets; expected.json names the error each must raise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import construct
import pytest

from binserve.protocol import (
    CLOSED,
    NEED_DATA,
    PING,
    Body,
    Decoder,
    End,
    Head,
    RemoteProtocolError,
    encode_request,
    spec,
)
from binserve.protocol import modifiers as mods

PACKETS = Path(__file__).parent.parent / "packets"
NGINX = PACKETS / "nginx-1.22"
INVALID = PACKETS / "invalid"
CAPTURES = sorted(p.stem for p in NGINX.glob("*.uwsgi"))
EXPECTED: dict[str, dict] = json.loads((INVALID / "expected.json").read_text())

# Bytes after a request: the next request on the stream must be left untouched for its reader.
JUNK = PING + b"\x00junk after the request"


@dataclass
class Decoded:
    decoder: Decoder
    events: list[object] = field(default_factory=list)

    @property
    def head(self) -> Head:
        assert self.events and isinstance(self.events[0], Head), self.events[:3]
        return self.events[0]

    @property
    def bodies(self) -> list[bytes]:
        return [e.data for e in self.events if isinstance(e, Body)]

    @property
    def body(self) -> bytes:
        return b"".join(self.bodies)


def decode(chunks: Iterable[bytes], decoder: Decoder | None = None, eof: bool = True) -> Decoded:
    """Feed ``chunks`` (then EOF), pulling events after each until NEED_DATA, End or CLOSED."""
    out = Decoded(decoder if decoder is not None else Decoder())
    dec = out.decoder
    finished = False

    def drain() -> bool:
        for _ in range(10):  # one chunk yields at most Head, Body, End
            event = dec.next_event()
            if event is NEED_DATA:
                return False
            out.events.append(event)
            if isinstance(event, End) or event is CLOSED:
                return True
        raise AssertionError(f"decoder made no progress: {out.events[-10:]}")

    for chunk in chunks:
        if not chunk:
            continue  # b"" would mean end of stream
        dec.receive_data(chunk)
        if not finished:
            finished = drain()
    if eof:
        dec.receive_data(b"")
        if not finished:
            finished = drain()
            assert finished, "NEED_DATA after end of stream"
    return out


def bytewise(data: bytes) -> Iterator[bytes]:
    return (data[i : i + 1] for i in range(len(data)))


def read_capture(name: str) -> bytes:
    return (NGINX / f"{name}.uwsgi").read_bytes()


def spec_vars(packet: bytes) -> list[tuple[str, str]]:
    parsed = spec.Packet.parse(packet)
    return [(v.key.decode("latin-1"), v.value.decode("latin-1")) for v in parsed.vars.vars]


def var(head: Head, key: str) -> str:
    values = [v for k, v in head.vars if k == key]
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


# --- the nginx captures ------------------------------------------------------------------------


def test_corpus_is_complete() -> None:
    # The README table documents every capture, and every documented capture is here.
    readme = (NGINX / "README.md").read_text()
    documented = set(re.findall(r"^\| (\w+) \|", readme, re.MULTILINE)) - {"file"}
    assert documented == set(CAPTURES)
    assert len(CAPTURES) == 17


FEEDS = {
    "whole": lambda data: [data],
    "bytewise": bytewise,
    "7-byte": lambda data: [data[i : i + 7] for i in range(0, len(data), 7)],
}


@pytest.mark.parametrize("feed", sorted(FEEDS))
@pytest.mark.parametrize("name", CAPTURES)
def test_capture_decodes_like_spec(name: str, feed: str) -> None:
    data = read_capture(name)
    header = spec.Header.parse(data)
    got = decode(FEEDS[feed](data))

    head = got.head
    assert (head.modifier1, head.modifier2) == (header.modifier1, header.modifier2)
    assert head.vars == spec_vars(data)
    assert head.payload == b""
    body = data[4 + header.datasize :]
    assert head.content_length == len(body)
    assert got.body == body
    assert isinstance(got.events[-1], End)
    assert got.decoder.trailing_data == b""
    assert got.decoder.body_left == 0
    if feed == "bytewise":
        assert all(len(b) == 1 for b in got.bodies)


@pytest.mark.parametrize("feed", ["whole", "bytewise"])
@pytest.mark.parametrize("name", CAPTURES)
def test_capture_with_trailing_bytes(name: str, feed: str) -> None:
    data = read_capture(name)
    got = decode(FEEDS[feed](data + JUNK), eof=False)

    assert got.head.vars == spec_vars(data)
    assert got.body == data[4 + spec.Header.parse(data).datasize :]
    assert isinstance(got.events[-1], End)
    assert got.decoder.trailing_data == JUNK
    # Once ended, the decoder stays ended and keeps the next request's bytes for its reader.
    assert isinstance(got.decoder.next_event(), End)
    assert got.decoder.trailing_data == JUNK
    nxt = decode([got.decoder.trailing_data], eof=False)
    assert (nxt.head.modifier1, nxt.head.modifier2, nxt.head.payload) == (mods.PING, 0, b"")
    assert nxt.decoder.trailing_data == b"\x00junk after the request"


def test_capture_in_two_pieces_at_every_header_and_vars_offset() -> None:
    data = read_capture("post_form")
    want = spec_vars(data)
    for cut in range(1, 4 + spec.Header.parse(data).datasize + 3):
        got = decode([data[:cut], data[cut:]])
        assert got.head.vars == want, cut
        assert got.body == b"name=binserve&version=1", cut


# --- facts the README states about individual captures ----------------------------------------


def decoded_capture(name: str) -> Decoded:
    return decode([read_capture(name)])


def test_get_root_plain_var_set() -> None:
    head = decoded_capture("get_root").head
    assert len(head.vars) == 16
    assert var(head, "CONTENT_LENGTH") == ""
    assert head.content_length == 0
    assert var(head, "REQUEST_METHOD") == "GET"


def test_get_query_keeps_query_string_raw() -> None:
    head = decoded_capture("get_query").head
    assert var(head, "QUERY_STRING") == "q=hello+world&lang=en&x=%2F%3F"
    assert var(head, "PATH_INFO") == "/search"


def test_get_unicode_path_is_utf8_bytes_as_latin1() -> None:
    head = decoded_capture("get_unicode_path").head
    assert var(head, "PATH_INFO") == "/café/naïve path".encode().decode("latin-1")
    assert var(head, "REQUEST_URI") == "/caf%C3%A9/na%C3%AFve%20path"


def test_get_many_headers_keeps_duplicates_in_order() -> None:
    head = decoded_capture("get_many_headers").head
    assert [v for k, v in head.vars if k == "HTTP_X_DUP"] == ["one", "two"]
    assert var(head, "HTTP_COOKIE") == "a=1; b=2"


def test_script_name_mod30() -> None:
    head = decoded_capture("script_name_mod30").head
    assert head.modifier1 == 30 == mods.WSGI_MANAGE_PATH_INFO
    assert mods.action(head.modifier1) is mods.Action.WSGI
    assert var(head, "SCRIPT_NAME") == "/app2"
    assert var(head, "PATH_INFO") == "/app2/sub/path"


def test_https_vars() -> None:
    head = decoded_capture("https_vars").head
    assert var(head, "HTTPS") == "on"
    assert var(head, "UWSGI_SCHEME") == "https"


def test_http10() -> None:
    assert var(decoded_capture("http10").head, "SERVER_PROTOCOL") == "HTTP/1.0"


def test_head_method() -> None:
    got = decoded_capture("head")
    assert var(got.head, "REQUEST_METHOD") == "HEAD"
    assert got.body == b""


def test_long_header_block_over_uwsgi_default_buffer() -> None:
    data = read_capture("long_header")
    assert spec.Header.parse(data).datasize == 6360
    head = decode([data]).head
    assert len(var(head, "HTTP_X_LONG")) == 6000
    # uWSGI's default buffer-size (4096) refuses it; binserve with the same limit does too.
    with pytest.raises(RemoteProtocolError, match=r"invalid request block size: 6360 \(max 4096\)") as err:
        decode([data[:4]], Decoder(max_vars_size=4096), eof=False)
    assert err.value.status_hint == 431
    assert decode([data], Decoder(max_vars_size=6360)).head.vars == head.vars


def test_post_bodies() -> None:
    form = decoded_capture("post_form")
    assert form.body == b"name=binserve&version=1"
    assert var(form.head, "CONTENT_LENGTH") == "23"
    js = decoded_capture("post_json")
    assert var(js.head, "CONTENT_TYPE") == var(js.head, "HTTP_CONTENT_TYPE") == "application/json"
    assert isinstance(json.loads(js.body), dict)
    multipart = decoded_capture("post_multipart")
    boundary = var(multipart.head, "CONTENT_TYPE").split("boundary=")[1]
    assert multipart.body.rstrip(b"\r\n").endswith(f"--{boundary}--".encode())


def test_post_chunked_is_dechunked_by_nginx() -> None:
    chunked = decoded_capture("post_chunked")
    assert var(chunked.head, "HTTP_TRANSFER_ENCODING") == "chunked"
    assert var(chunked.head, "CONTENT_LENGTH") == "300000"
    assert chunked.head.content_length == 300000
    # The body is the same 300,000 bytes as the plain upload: no chunk framing is left.
    plain = decoded_capture("post_binary_300k")
    assert var(plain.head, "HTTP_CONTENT_LENGTH") == "300000"
    assert chunked.body == plain.body
    assert len(plain.body) == 300000
    assert decoded_capture("unbuffered_post").body == plain.body


# --- hand-made invalid packets -----------------------------------------------------------------


def test_invalid_corpus_matches_expected_json() -> None:
    assert {p.name for p in INVALID.glob("*.uwsgi")} == set(EXPECTED)
    assert len(EXPECTED) >= 12
    for name, case in EXPECTED.items():
        assert set(case) >= {"error_contains", "status_hint", "decoder_kwargs"}, name


@pytest.mark.parametrize("feed", ["whole", "bytewise"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_invalid_packet_raises(name: str, feed: str) -> None:
    case = EXPECTED[name]
    data = (INVALID / name).read_bytes()
    with pytest.raises(RemoteProtocolError) as err:
        decode(FEEDS[feed](data), Decoder(**case["decoder_kwargs"]))
    assert case["error_contains"] in err.value.message
    assert str(err.value) == err.value.message
    assert err.value.status_hint == case["status_hint"]


@pytest.mark.parametrize(
    "name",
    [
        "truncated_header.uwsgi",
        "truncated_vars.uwsgi",
        "datasize_more_than_sent.uwsgi",
        "body_truncated.uwsgi",
    ],
)
def test_truncated_packet_is_an_error_only_at_eof(name: str) -> None:
    # Before EOF a short packet is not an error: more bytes may come.
    dec = Decoder()
    dec.receive_data((INVALID / name).read_bytes())
    events = []
    while (event := dec.next_event()) is not NEED_DATA:
        events.append(event)
    assert not any(isinstance(e, End) for e in events)
    dec.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="connection closed after"):
        dec.next_event()


@pytest.mark.parametrize(
    "name",
    [
        "zero_length_key.uwsgi",
        "key_size_past_end.uwsgi",
        "key_size_field_cut.uwsgi",
        "value_size_past_end.uwsgi",
        "value_size_field_missing.uwsgi",
    ],
)
def test_spec_rejects_malformed_vars_too(name: str) -> None:
    # The decoder's structural rejections are the spec's: the normative declaration fails as well.
    data = (INVALID / name).read_bytes()
    with pytest.raises(construct.ConstructError):
        spec.Packet.parse(data)


def test_empty_stream_is_closed() -> None:
    got = decode([])
    assert got.events == [CLOSED]


def test_limits_below_request_accept_it() -> None:
    # The limits in expected.json are what breaks those packets: a request within them decodes.
    data = encode_request([("REQUEST_METHOD", "POST")], b"x" * 1000)
    got = decode([data], Decoder(max_vars_size=4096, max_body=1000, max_vars=2))
    assert got.body == b"x" * 1000


# --- known decoder bugs (reported; remove the marker once fixed) --------------------------------


@pytest.mark.parametrize("name", ["get_root", "put_empty", "script_name_mod30"])
def test_no_empty_body_event_before_trailing_bytes(name: str) -> None:
    got = decode([read_capture(name) + JUNK], eof=False)
    assert [type(e) for e in got.events] == [Head, End]

"""The PEP 3333 environ and wsgi.input, driven directly: build_environ, merge_vars, Input.

wsgi.input runs over a real socketpair: one end is the worker's accepted connection, the other
plays nginx. The decoder is fed what the worker's first recv() would hold (the header, the vars
and maybe the start of the body); the rest of the body comes through the socket. Every reader is
checked for every split point between those two sources, against io.BytesIO as the reference.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import sys
import threading
import warnings
import wsgiref.validate
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from binserve.body import Input
from binserve.connection import BodyReadTimeout, ClientDisconnected, Connection, timeval
from binserve.environ import build_environ, make_base_environ, merge_vars
from binserve.protocol import Decoder, Head, encode_request
from binserve.protocol.encoder import VarsLike

CAPTURES_DIR = Path(__file__).parent.parent / "packets" / "nginx-1.22"
EXPECTED_DIR = CAPTURES_DIR / "expected"
CAPTURES = sorted(p.stem for p in CAPTURES_DIR.glob("*.uwsgi"))

# nginx's stock var set for a GET (the get_root capture), minus the body-related ones.
BASE_VARS = {
    "QUERY_STRING": "",
    "REQUEST_METHOD": "GET",
    "CONTENT_TYPE": "",
    "CONTENT_LENGTH": "",
    "REQUEST_URI": "/",
    "PATH_INFO": "/",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REMOTE_ADDR": "127.0.0.1",
    "SERVER_PORT": "8080",
    "SERVER_NAME": "example.org",
    "HTTP_HOST": "example.org:8080",
}

BODY = b"alpha\nbeta\n\ngamma, no newline at the end"


# --- helpers -----------------------------------------------------------------------------------


class Wire:
    """A request whose first ``split`` body bytes arrived with the header; nginx's end is ``peer``."""

    def __init__(
        self, worker: socket.socket, peer: socket.socket, decoder: Decoder, head: Head, timeout: float
    ):
        self.worker = worker
        self.peer = peer
        self.decoder = decoder
        self.head = head
        self.conn = Connection(worker, False, timeval(timeout))
        self.input = Input(self.conn, decoder, head.content_length)

    def environ(self, multiprocess: bool = True) -> dict[str, Any]:
        return build_environ(self.head, make_base_environ(multiprocess=multiprocess), self.input)


@contextmanager
def wire(
    vars: VarsLike,
    body: bytes = b"",
    split: int | None = None,
    send_rest: bool = True,
    trailing: bytes = b"",
    modifier1: int = 0,
    timeout: float = 5.0,
    raw: bytes | None = None,
) -> Iterator[Wire]:
    """Decode the head of a request from its first ``split`` body bytes; the rest goes through the socket.

    ``raw`` is a whole packet (vars and body) to split instead of one built from ``vars`` and ``body``.
    A rest larger than the socket buffer is sent from a thread (its sendall returns as the reader drains).
    """
    if raw is None:
        raw = encode_request(vars, modifier1=modifier1) + body
        body_len = len(body)
    else:
        body_len = len(raw) - 4 - int.from_bytes(raw[1:3], "little")
    cut = len(raw) - body_len + (body_len if split is None else split)
    worker, peer = socket.socketpair()
    sender = None
    try:
        decoder = Decoder()
        decoder.receive_data(raw[:cut])
        head = decoder.next_event()
        assert isinstance(head, Head), head
        rest = raw[cut:] + trailing
        if send_rest and len(rest) <= 32768:
            peer.sendall(rest)  # fits the socket buffer: all there before the first read
        elif send_rest:
            sender = threading.Thread(target=_send_quietly, args=(peer, rest), daemon=True)
            sender.start()
        yield Wire(worker, peer, decoder, head, timeout)
    finally:
        worker.close()  # first, so a sender the test left blocked fails at once
        if sender is not None:
            sender.join(10)
        peer.close()


def _send_quietly(peer: socket.socket, data: bytes) -> None:
    try:
        peer.sendall(data)
    except OSError:
        pass  # the test stopped reading (it failed, or the worker end is closed): nothing to send to


def post(body: bytes, **extra: str) -> dict[str, str]:
    return {**BASE_VARS, "REQUEST_METHOD": "POST", "CONTENT_LENGTH": str(len(body)), **extra}


def environ_of(vars: VarsLike, modifier1: int = 0) -> dict[str, Any]:
    with wire(vars, modifier1=modifier1) as w:
        return w.environ()


def cgi_part(environ: dict[str, Any]) -> dict[str, str]:
    """The str-valued keys: the CGI vars and wsgi.url_scheme."""
    return {k: v for k, v in environ.items() if isinstance(v, str)}


def check_pep3333(environ: dict[str, Any]) -> None:
    """wsgiref's validator, with its warnings (e.g. a missing QUERY_STRING) as failures."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wsgiref.validate.check_environ(environ)


def apply_ops(reader: Any, ops: list[tuple[str, int | None]]) -> list[Any]:
    """Run read/readline/readlines/iteration calls; the same script on a BytesIO is the reference."""
    out: list[Any] = []
    for name, arg in ops:
        if name == "iter":
            out.append(list(reader))
        elif arg is None:
            out.append(getattr(reader, name)())
        else:
            out.append(getattr(reader, name)(arg))
    return out


# --- wsgi.input: every reader, every split between header-time bytes and socket bytes ------------


@pytest.mark.parametrize("split", range(len(BODY) + 1))
def test_read_all_then_end(split: int) -> None:
    with wire(post(BODY), BODY, split) as w:
        assert w.input.read() == BODY
        assert w.input.read() == b""
        assert w.input.read(5) == b""
        assert w.input.readline() == b""
        assert w.input.readlines() == []
        assert list(w.input) == []
        assert w.input.unread_on_socket == 0


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 11, len(BODY) - 1, len(BODY), len(BODY) + 1, 1 << 20])
def test_read_n_crossing_every_boundary(size: int) -> None:
    for split in range(len(BODY) + 1):
        with wire(post(BODY), BODY, split) as w:
            pieces = []
            while piece := w.input.read(size):
                assert len(piece) <= size
                pieces.append(piece)
            assert b"".join(pieces) == BODY, split
            # Every piece but the last is full: read(n) waits for n bytes while the body lasts.
            assert all(len(p) == size for p in pieces[:-1]), (split, [len(p) for p in pieces])
            assert w.input.read(size) == b"" and w.input.read() == b""


@pytest.mark.parametrize("split", range(len(BODY) + 1))
def test_readline_iteration_readlines(split: int) -> None:
    lines = BODY.splitlines(keepends=True)
    with wire(post(BODY), BODY, split) as w:
        got = []
        while line := w.input.readline():
            got.append(line)
        assert got == lines
    with wire(post(BODY), BODY, split) as w:
        assert list(w.input) == lines
    with wire(post(BODY), BODY, split) as w:
        assert w.input.readlines() == lines
    with wire(post(BODY), BODY, split) as w:
        # A hint stops readlines once that many bytes were returned: 6 + 5 >= 7.
        assert w.input.readlines(7) == [b"alpha\n", b"beta\n"]
        assert w.input.read() == b"\ngamma, no newline at the end"


@pytest.mark.parametrize("split", range(len(BODY) + 1))
def test_readline_size_limits(split: int) -> None:
    with wire(post(BODY), BODY, split) as w:
        inp = w.input
        assert inp.readline(3) == b"alp"
        assert inp.readline(3) == b"ha\n"
        assert inp.readline(0) == b""
        assert inp.readline(100) == b"beta\n"
        assert inp.readline(None) == b"\n"
        assert inp.readline(5) == b"gamma"
        assert inp.readline(-1) == b", no newline at the end"
        assert inp.readline(5) == b""
        assert inp.readline() == b""


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("read"), st.none() | st.integers(-1, 20)),
        st.tuples(st.just("readline"), st.none() | st.integers(-1, 20)),
        st.tuples(st.just("readlines"), st.none() | st.integers(-1, 30)),
        st.tuples(st.just("iter"), st.none()),
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=60).map(lambda b: b.replace(b"\x00", b"\n")), ops=OPS, data=st.data())
def test_input_behaves_like_a_file_bounded_by_content_length(
    body: bytes, ops: list[tuple[str, int | None]], data: st.DataObject
) -> None:
    split = data.draw(st.integers(0, len(body)), label="split")
    with wire(post(body), body, split, trailing=b"NEXT REQUEST\n") as w:
        reference = io.BytesIO(body)
        assert apply_ops(w.input, ops) == apply_ops(reference, ops)
        assert w.input.read() == reference.read()
        assert w.input.read() == b""
        # Whatever was read, the bytes past CONTENT_LENGTH were never taken off the socket.
        w.peer.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := w.worker.recv(64):
            got += chunk
        assert got == b"NEXT REQUEST\n"


def test_body_arriving_in_stages() -> None:
    """Header-time bytes first, then socket bytes as nginx sends them, mixing every reader."""
    body = b"abcd\nefgh\nij"
    with wire(post(body), body, split=2, send_rest=False) as w:
        inp = w.input
        w.peer.sendall(b"cd\nef")
        assert inp.read(3) == b"abc"  # 2 bytes from the decoder, 1 from the socket
        assert inp.readline() == b"d\n"
        assert inp.unread_on_socket == 5
        w.peer.sendall(b"gh\nij")
        assert inp.read(4) == b"efgh"  # 2 buffered, 2 from a second recv
        assert list(inp) == [b"\n", b"ij"]
        assert inp.read() == b"" and inp.unread_on_socket == 0


def test_large_body_from_a_slow_socket() -> None:
    """300 KB, more than a socketpair buffers: many recv()s, each reader gets the same bytes."""
    body = b"".join(b"%06d " % i + b"x" * (i % 97) + b"\n" for i in range(5000))[:300_000]
    lines = body.splitlines(keepends=True)
    with wire(post(body), body, split=1000) as w:
        assert w.input.read() == body
    with wire(post(body), body, split=1000) as w:
        pieces = []
        while piece := w.input.read(8191):
            pieces.append(piece)
        assert b"".join(pieces) == body and {len(p) for p in pieces[:-1]} == {8191}
    with wire(post(body), body, split=1000) as w:
        assert list(w.input) == lines
    with wire(post(body), body, split=1000) as w:
        assert w.input.readlines() == lines
    with wire(post(body), body, split=1000) as w:
        assert w.input.readline(5) == body[:5]
        assert w.input.readline() == body[5:8]  # the rest of the line "000000 \n"
        assert w.input.read(5000) == body[8:5008]
        assert w.input.read() == body[5008:]


def test_read_stops_at_content_length_with_more_bytes_on_the_socket() -> None:
    with wire(post(b"hello"), b"hello", split=0, trailing=b"MORE") as w:
        assert w.input.read() == b"hello"
        assert w.input.read(10) == b""
        assert w.input.readline() == b""
        assert w.worker.recv(100, socket.MSG_DONTWAIT) == b"MORE"


def test_read_stops_at_content_length_with_more_bytes_at_header_time() -> None:
    raw = encode_request(post(b"hello")) + b"hello" + b"MORE"
    with wire([], raw=raw) as w:  # the whole packet plus 4 extra bytes arrived in the first recv
        assert w.input.read(100) == b"hello"
        assert w.input.read() == b""
        assert w.decoder.trailing_data == b"MORE"


@pytest.mark.parametrize("length", ["", None])
def test_no_content_length_means_an_empty_body(length: str | None) -> None:
    vars = dict(BASE_VARS, REQUEST_METHOD="POST")
    if length is None:
        del vars["CONTENT_LENGTH"]
    with wire(vars, split=0) as w:
        w.peer.sendall(b"bytes nginx would never send")
        inp = w.input
        assert (inp.read(), inp.read(10), inp.readline(), inp.readlines(), list(inp)) == (
            b"",
            b"",
            b"",
            [],
            [],
        )
        assert w.worker.recv(100, socket.MSG_DONTWAIT) == b"bytes nginx would never send"
        assert "CONTENT_LENGTH" not in w.environ()


# --- wsgi.input: a stalled or vanished nginx ----------------------------------------------------


@contextmanager
def watchdog(sock: socket.socket, seconds: float = 5.0) -> Iterator[None]:
    """If the reader under test hangs instead of timing out, end the stream so the test fails."""
    timer = threading.Timer(seconds, sock.shutdown, args=(socket.SHUT_WR,))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


READERS: dict[str, Callable[[Input], object]] = {
    "read": lambda inp: inp.read(),
    "read(n)": lambda inp: inp.read(8),
    "readline": lambda inp: inp.readline(),
    "readlines": lambda inp: inp.readlines(),
    "iteration": lambda inp: list(inp),
}


@pytest.mark.parametrize("reader", READERS)
def test_body_read_timeout(reader: str) -> None:
    body = b"0123456789"
    with wire(post(body), body, split=3, send_rest=False, timeout=0.1) as w:
        w.peer.sendall(b"34")
        assert not w.conn.armed  # nothing was armed while the body needed no wait
        with watchdog(w.peer), pytest.raises(BodyReadTimeout, match="5 of 10 bytes") as err:
            READERS[reader](w.input)
        assert isinstance(err.value, OSError)
        assert w.conn.armed


@pytest.mark.parametrize("reader", READERS)
def test_client_closing_early(reader: str) -> None:
    body = b"0123456789"
    with wire(post(body), body, split=3, send_rest=False) as w:
        w.peer.sendall(b"34")
        w.peer.close()
        with pytest.raises(ClientDisconnected, match="5 of 10") as err:
            READERS[reader](w.input)
        assert isinstance(err.value, OSError)


def test_what_arrived_before_the_close_is_still_served() -> None:
    body = b"0123456789"
    with wire(post(body), body, split=3, send_rest=False) as w:
        w.peer.sendall(b"34")
        w.peer.close()
        assert w.input.read(5) == b"01234"
        with pytest.raises(ClientDisconnected):
            w.input.read(1)


# --- build_environ and merge_vars ----------------------------------------------------------------


def test_merge_vars_joins_repeats_in_order() -> None:
    pairs = [
        ("HTTP_X_DUP", "one"),
        ("HTTP_COOKIE", "c1=1"),
        ("HTTP_ACCEPT", "*/*"),
        ("HTTP_X_DUP", "two"),
        ("HTTP_COOKIE", "c2=2"),
        ("HTTP_X_DUP", "three"),
    ]
    assert merge_vars(pairs) == {
        "HTTP_X_DUP": "one, two, three",
        "HTTP_COOKIE": "c1=1; c2=2",
        "HTTP_ACCEPT": "*/*",
    }
    assert merge_vars([("HTTP_X_E", ""), ("HTTP_X_E", "x")]) == {"HTTP_X_E": ", x"}
    assert merge_vars([]) == {}


def test_repeated_vars_merged_in_the_environ() -> None:
    env = environ_of(
        [
            *BASE_VARS.items(),
            ("HTTP_X_DUP", "a"),
            ("HTTP_COOKIE", "c1=1"),
            ("HTTP_X_DUP", "b"),
            ("HTTP_COOKIE", "c2=2"),
        ]
    )
    assert env["HTTP_X_DUP"] == "a, b"
    assert env["HTTP_COOKIE"] == "c1=1; c2=2"
    single = environ_of({**BASE_VARS, "HTTP_COOKIE": "a=1; b=2"})
    assert single["HTTP_COOKIE"] == "a=1; b=2"


def test_repeated_cgi_params_are_not_joined() -> None:
    """Only repeated headers (HTTP_*) are joined; a repeated uwsgi_param keeps one value.

    nginx sends a uwsgi_param twice when a location overrides one of `include uwsgi_params`
    (`uwsgi_param HTTPS on;` on an ssl server, `uwsgi_param REMOTE_ADDR $http_x_real_ip;`), and the
    decoder accepts a repeated CONTENT_LENGTH when both agree. Joined, they would read "5, 5"
    (not an integer) and "on, on" (not https). uWSGI keeps the last one: the operator's override.
    """
    body = b"hello"
    vars = [
        *post(body).items(),
        ("HTTPS", "on"),
        ("REMOTE_ADDR", "203.0.113.9"),
        ("CONTENT_LENGTH", "5"),
        ("HTTPS", "on"),
        ("HTTP_X_DUP", "a"),
        ("HTTP_X_DUP", "b"),
    ]
    with wire(vars, body) as w:
        env = w.environ()
        assert env["CONTENT_LENGTH"] == "5"
        assert env["HTTPS"] == "on" and env["wsgi.url_scheme"] == "https"
        assert env["REMOTE_ADDR"] == "203.0.113.9"
        assert env["HTTP_X_DUP"] == "a, b"
        assert env["wsgi.input"].read() == body
        check_pep3333(env)


def test_script_name_always_present() -> None:
    env = environ_of(BASE_VARS)
    assert env["SCRIPT_NAME"] == ""
    bare = environ_of({"REQUEST_METHOD": "GET"})  # not even PATH_INFO or QUERY_STRING
    assert (bare["SCRIPT_NAME"], bare["PATH_INFO"], bare["QUERY_STRING"]) == ("", "", "")
    check_pep3333(bare)


@pytest.mark.parametrize(
    ("script_name", "path_info", "want_script", "want_path"),
    [
        ("/app2", "/app2/sub/path", "/app2", "/sub/path"),
        ("/app2", "/app2", "/app2", ""),
        ("/app2", "/app2/", "/app2", "/"),
        ("/app2/", "/app2/sub", "/app2", "/sub"),  # a trailing / on the mount point is not part of it
        ("/app2", "/app20/x", "/app2", "/app20/x"),  # a prefix only at a / boundary
        ("/app2", "/other/app2", "/app2", "/other/app2"),
        ("/app2", "/ap", "/app2", "/ap"),
        ("/a/b", "/a/b/c", "/a/b", "/c"),
        ("", "/x", "", "/x"),
    ],
)
def test_modifier1_30_strips_script_name(
    script_name: str, path_info: str, want_script: str, want_path: str
) -> None:
    env = environ_of({**BASE_VARS, "SCRIPT_NAME": script_name, "PATH_INFO": path_info}, modifier1=30)
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == (want_script, want_path)
    check_pep3333(env)


def test_modifier1_0_leaves_path_info_whole() -> None:
    env = environ_of({**BASE_VARS, "SCRIPT_NAME": "/app2", "PATH_INFO": "/app2/sub"})
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/app2", "/app2/sub")


def test_http_content_copies_and_transfer_encoding_dropped() -> None:
    body = b"x" * 30
    vars = post(
        body,
        CONTENT_TYPE="text/plain",
        HTTP_CONTENT_TYPE="text/plain",
        HTTP_CONTENT_LENGTH="30",
        HTTP_TRANSFER_ENCODING="chunked",
    )
    with wire(vars, body) as w:
        env = w.environ()
        for key in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH", "HTTP_TRANSFER_ENCODING"):
            assert key not in env
        assert (env["CONTENT_TYPE"], env["CONTENT_LENGTH"]) == ("text/plain", "30")
        # nginx de-chunked the body: it is read as CONTENT_LENGTH plain bytes, not chunk framing.
        assert env["wsgi.input"].read() == body
        check_pep3333(env)


def test_empty_content_length_removed_and_others_kept() -> None:
    assert "CONTENT_LENGTH" not in environ_of(BASE_VARS)
    assert environ_of({**BASE_VARS, "CONTENT_LENGTH": "0"})["CONTENT_LENGTH"] == "0"
    assert environ_of({**BASE_VARS, "CONTENT_TYPE": ""})["CONTENT_TYPE"] == ""


@pytest.mark.parametrize(
    ("extra", "scheme"),
    [
        ({}, "http"),
        ({"HTTPS": "on"}, "https"),
        ({"HTTPS": "ON"}, "https"),
        ({"HTTPS": "1"}, "https"),
        ({"HTTPS": "off"}, "http"),
        ({"HTTPS": ""}, "http"),
        ({"HTTPS": "0"}, "http"),
        ({"UWSGI_SCHEME": "https"}, "https"),
        ({"UWSGI_SCHEME": "http", "HTTPS": "on"}, "http"),  # the explicit scheme wins
        ({"UWSGI_SCHEME": "https", "HTTPS": "off"}, "https"),
        ({"UWSGI_SCHEME": "", "HTTPS": "on"}, "https"),
        ({"REQUEST_SCHEME": "https"}, "http"),  # nginx's REQUEST_SCHEME is not one of the two sources
    ],
)
def test_url_scheme(extra: dict[str, str], scheme: str) -> None:
    env = environ_of({**BASE_VARS, **extra})
    assert env["wsgi.url_scheme"] == scheme
    check_pep3333(env)


def test_path_info_is_latin1_decoded_raw_bytes() -> None:
    raw_path = "/café/naïve path".encode()  # nginx's $document_uri of /caf%C3%A9/na%C3%AFve%20path
    vars = [(k, v) for k, v in BASE_VARS.items() if k != "PATH_INFO"]
    with wire([*vars, ("PATH_INFO", raw_path)]) as w:
        env = w.environ()
    assert env["PATH_INFO"] == "/cafÃ©/naÃ¯ve path"
    assert env["PATH_INFO"].encode("latin-1").decode("utf-8") == "/café/naïve path"
    header = bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
    with wire([*vars, ("HTTP_X_BYTES", header)]) as w:
        assert w.environ()["HTTP_X_BYTES"].encode("latin-1") == header


def test_wsgi_keys() -> None:
    with wire(BASE_VARS) as w:
        env = w.environ(multiprocess=True)
        assert env["wsgi.version"] == (1, 0) and type(env["wsgi.version"]) is tuple
        assert env["wsgi.multiprocess"] is True
        assert env["wsgi.multithread"] is False
        assert env["wsgi.run_once"] is False
        assert env["wsgi.input_terminated"] is True
        assert env["wsgi.input"] is w.input
        errors = env["wsgi.errors"]
        errors.write("")
        errors.writelines([])
        errors.flush()
        assert callable(env["wsgi.file_wrapper"])
        check_pep3333(env)
        assert w.environ(multiprocess=False)["wsgi.multiprocess"] is False


def test_build_environ_leaves_the_shared_base_alone() -> None:
    base = make_base_environ(multiprocess=True)
    snapshot = dict(base)
    with wire({**BASE_VARS, "HTTPS": "on", "wsgi.version": "spoofed"}) as w:
        env = build_environ(w.head, base, w.input)
    assert base == snapshot
    assert env["wsgi.version"] == (1, 0)  # a var cannot override the server's wsgi.* keys
    assert env["wsgi.url_scheme"] == "https"


@pytest.mark.parametrize(
    ("server_name", "host", "want"),
    [
        ("example.org", "other:1", "example.org"),
        ("", "127.0.0.1", "127.0.0.1"),
        ("", "127.0.0.1:8080", "127.0.0.1"),
        ("", "[::1]:8080", "[::1]"),
        ("", "[::1]", "[::1]"),
        ("", None, "localhost"),
    ],
)
def test_server_name_never_empty(server_name: str, host: str | None, want: str) -> None:
    vars = {**BASE_VARS, "SERVER_NAME": server_name}
    del vars["HTTP_HOST"]
    if host is not None:
        vars["HTTP_HOST"] = host
    env = environ_of(vars)
    assert env["SERVER_NAME"] == want
    check_pep3333(env)


MAGIC = {
    "UWSGI_SCRIPT": "binserve.demo:application",
    "UWSGI_MODULE": "binserve.demo",
    "UWSGI_CALLABLE": "application",
    "UWSGI_FILE": "/nonexistent/should_not_load.py",
    "UWSGI_APPID": "other",
    "UWSGI_PYHOME": "/nonexistent/venv",
    "UWSGI_CHDIR": "/",
    "UWSGI_SETENV": "BINSERVE_TEST_MAGIC=set-by-a-request",
    "UWSGI_TOUCH_RELOAD": "/nonexistent/touch",
    "UWSGI_CACHE_GET": "key",
}


def test_uwsgi_magic_vars_are_plain_strings(tmp_path: Path) -> None:
    postfile = tmp_path / "postfile"
    postfile.write_bytes(b"from the file")
    body = b"from nginx"
    environ_before = dict(os.environ)
    cwd_before = os.getcwd()
    modules_before = set(sys.modules)
    with wire(post(body, **MAGIC, UWSGI_POSTFILE=str(postfile)), body) as w:
        env = w.environ()
        assert env["wsgi.input"].read() == body  # not the UWSGI_POSTFILE's content
    assert dict(os.environ) == environ_before
    assert "BINSERVE_TEST_MAGIC" not in os.environ
    assert os.getcwd() == cwd_before
    assert set(sys.modules) - modules_before == set()
    for key, value in MAGIC.items():
        assert env[key] == value


# --- the nginx 1.22 captures --------------------------------------------------------------------


def expected(name: str) -> dict[str, Any]:
    return json.loads((EXPECTED_DIR / f"{name}.json").read_text(encoding="utf-8"))


def test_every_capture_has_an_expected_environ() -> None:
    assert len(CAPTURES) == 17
    assert sorted(p.stem for p in EXPECTED_DIR.glob("*.json")) == CAPTURES


@pytest.mark.parametrize("name", CAPTURES)
def test_capture_environ(name: str) -> None:
    want = expected(name)
    raw = (CAPTURES_DIR / f"{name}.uwsgi").read_bytes()
    with wire([], raw=raw) as w:  # all of it in the first recv
        env = w.environ()
        assert w.head.modifier1 == want["modifier1"]
        assert cgi_part(env) == want["environ"]
        check_pep3333(env)
        body = env["wsgi.input"].read()
        assert (len(body), hashlib.sha256(body).hexdigest()) == (
            want["body"]["length"],
            want["body"]["sha256"],
        )
        assert env["wsgi.input"].read() == b""


@pytest.mark.parametrize("name", [n for n in CAPTURES if expected(n)["body"]["length"]])
@pytest.mark.parametrize("split", [0, 1, 17])
def test_capture_body_split_between_header_and_socket(name: str, split: int) -> None:
    want = expected(name)["body"]
    raw = (CAPTURES_DIR / f"{name}.uwsgi").read_bytes()
    for reader in ("read", "chunks", "lines"):
        with wire([], raw=raw, split=split) as w:
            inp = w.input
            if reader == "read":
                body = inp.read()
            elif reader == "chunks":
                body = b"".join(iter(partial(inp.read, 4093), b""))
            else:
                body = b"".join(inp)
            assert (len(body), hashlib.sha256(body).hexdigest()) == (want["length"], want["sha256"]), reader

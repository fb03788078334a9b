"""Every nginx 1.22 capture through a running binserve, two ways, to the environ PEP 3333 asks for.

(a) Raw replay: each capture's exact bytes go to binserve's unix socket, as nginx sent them.
(b) Through real nginx: the request behind each capture (the curl commands of
    packets/nginx-1.22/README.md) is made again with http.client through an nginx whose
    locations mirror the capture's nginx.conf.

The app dumps its environ as JSON (str values, the keys present, the wsgi.* facts, what
wsgiref.validate says, and the length and sha256 of the body it read from wsgi.input). For HEAD,
whose response has no body, the same JSON travels in an X-Environ header.

One binserve (2 processes) and one nginx serve the whole module, to keep it fast.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import json
import socket
import struct
import termios
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from binserve.protocol import Body, Decoder, Head, encode_request
from binserve.testing import Nginx, Server, exchange, location, parse_response, read_all, send, wait_for
from binserve.testing.processes import running

from support import APPS

CAPTURES_DIR = Path(__file__).parent.parent / "packets" / "nginx-1.22"
EXPECTED_DIR = CAPTURES_DIR / "expected"
CAPTURES = sorted(p.stem for p in CAPTURES_DIR.glob("*.uwsgi"))

APP = (APPS / "vectors_server_app.py").read_text()

HIJACK = (APPS / "vectors_server_hijack.py").read_text()


# --- the processes -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vectors")
    (path / "environ_app.py").write_text(APP)
    (path / "hijack_mod.py").write_text(HIJACK)
    (path / "hijack_file.py").write_text(HIJACK)
    (path / "elsewhere").mkdir()
    return path


@pytest.fixture(scope="module")
def server(workdir: Path) -> Iterator[Server]:
    """binserve with the environ-dump app, as ``serve("--wsgi-file", app, "--processes", "2")`` starts it."""
    srv = Server(workdir, ["--wsgi-file", str(workdir / "environ_app.py"), "--processes", "2"])
    yield srv
    srv.stop()
    leftovers = running(f"binserve --socket {workdir}")
    assert not leftovers, "binserve processes left behind:\n" + "\n".join(leftovers)


MAGIC_PARAMS = {
    "UWSGI_SCRIPT": "hijack_mod:application",
    "UWSGI_MODULE": "hijack_mod",
    "UWSGI_CALLABLE": "application",
    "UWSGI_APPID": "hijack",
    "UWSGI_SETENV": "BINSERVE_TEST_MAGIC=set-by-a-request",
    "UWSGI_PYHOME": "/nonexistent/venv",
}


OVERRIDES = {"SERVER_NAME": "example.org", "REMOTE_ADDR": "203.0.113.9", "CONTENT_LENGTH": "$content_length"}


@pytest.fixture(scope="module")
def front(server: Server, workdir: Path) -> Iterator[Nginx]:
    """nginx with the locations of the capture's nginx.conf (and one sending uWSGI's magic vars)."""
    magic = dict(
        MAGIC_PARAMS, UWSGI_FILE=str(workdir / "hijack_file.py"), UWSGI_CHDIR=str(workdir / "elsewhere")
    )
    sock = server.socket
    locations = "\n".join(
        [
            location(sock),
            location(sock, "/app2", "uwsgi_param SCRIPT_NAME /app2; uwsgi_modifier1 30;"),
            location(sock, "/https", "uwsgi_param HTTPS on; uwsgi_param UWSGI_SCHEME https;"),
            location(sock, "/unbuffered", "uwsgi_request_buffering off;"),
            location(sock, "/magic", " ".join(f"uwsgi_param {k} {v};" for k, v in magic.items())),
            # Overriding stock params after `include uwsgi_params`: nginx then sends both values.
            location(sock, "/override", " ".join(f"uwsgi_param {k} {v};" for k, v in OVERRIDES.items())),
        ]
    )
    nginx_dir = workdir / "nginx"
    nginx_dir.mkdir()
    proxy = Nginx.in_front(nginx_dir, locations)
    yield proxy
    proxy.stop()


# --- helpers -------------------------------------------------------------------------------------


def capture(name: str) -> bytes:
    return (CAPTURES_DIR / f"{name}.uwsgi").read_bytes()


def capture_parts(name: str) -> tuple[Head, bytes]:
    """The capture's Head and its body, decoded."""
    decoder = Decoder()
    decoder.receive_data(capture(name))
    head = decoder.next_event()
    assert isinstance(head, Head)
    body = b""
    while isinstance(event := decoder.next_event(), Body):
        body += event.data
    return head, body


def capture_var(name: str, key: str) -> str:
    return dict(capture_parts(name)[0].vars)[key]


def digest(data: bytes) -> dict[str, Any]:
    return {"length": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def expected(name: str) -> dict[str, Any]:
    return json.loads((EXPECTED_DIR / f"{name}.json").read_text(encoding="utf-8"))


class Reply:
    """An HTTP response read to EOF, and the environ document the app put in it."""

    def __init__(self, raw: bytes):
        self.raw = raw
        response = parse_response(raw)
        self.status_line, self.body = response.status_line, response.body
        names = [name.lower() for name, _ in response.headers]
        assert len(names) == len(set(names)), f"duplicate header in {names}"
        self.headers = response.header_map

    @property
    def doc(self) -> dict[str, Any]:
        text = self.headers["x-environ"] if "x-environ" in self.headers else self.body.decode("ascii")
        return json.loads(text)


def uwsgi_exchange(sock_path: Path, data: bytes, timeout: float = 10.0) -> Reply:
    """Send ``data`` like nginx does (no half-close) and read the answer until binserve closes."""
    return Reply(exchange(sock_path, data, timeout))


def assert_pep3333(doc: dict[str, Any]) -> None:
    """What PEP 3333 (and wsgiref.validate) asks of every environ."""
    assert doc["app"] == "environ-dump"
    assert doc["validate"] == [], doc["validate"]
    env, keys = doc["environ"], set(doc["keys"])
    required = {"REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_NAME", "SERVER_PORT"}
    required |= {"SERVER_PROTOCOL", "wsgi.version", "wsgi.url_scheme", "wsgi.input", "wsgi.errors"}
    required |= {"wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once", "wsgi.input_terminated"}
    assert required <= keys, required - keys
    assert not keys & {"HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH", "HTTP_TRANSFER_ENCODING"}
    assert {k for k in keys if "." not in k} <= set(env), "a CGI key whose value is not a str"
    assert env["SERVER_NAME"]
    assert env["SCRIPT_NAME"] == "" or (
        env["SCRIPT_NAME"].startswith("/") and not env["SCRIPT_NAME"].endswith("/")
    )
    assert env["PATH_INFO"] == "" or env["PATH_INFO"].startswith("/")
    if "CONTENT_LENGTH" in env:
        assert env["CONTENT_LENGTH"].isdigit()
    assert doc["body"]["length"] == int(env.get("CONTENT_LENGTH", "0"))
    assert doc["after_end_empty"] is True
    assert env["wsgi.url_scheme"] in ("http", "https")
    assert doc["wsgi"] == {
        "version": [1, 0],
        "version_is_tuple": True,
        "multiprocess": True,
        "multithread": False,
        "run_once": False,
        "input_terminated": True,
        "errors_writable": True,
    }
    assert doc["process"]["magic_env"] is None
    assert doc["process"]["cwd"] == doc["process"]["start_cwd"]


# --- (a) raw replay of the captures --------------------------------------------------------------


def _check_get_query(doc: dict[str, Any], reply: Reply) -> None:
    env = doc["environ"]
    assert env["QUERY_STRING"] == "q=hello+world&lang=en&x=%2F%3F"  # raw, as the client sent it
    assert env["PATH_INFO"] == "/search"
    assert env["REQUEST_URI"] == "/search?q=hello+world&lang=en&x=%2F%3F"


def _check_get_unicode_path(doc: dict[str, Any], reply: Reply) -> None:
    path = doc["environ"]["PATH_INFO"]
    assert path == "/cafÃ©/naÃ¯ve path"  # the UTF-8 bytes, each decoded as latin-1
    assert path.encode("latin-1").decode("utf-8") == "/café/naïve path"
    assert doc["environ"]["REQUEST_URI"] == "/caf%C3%A9/na%C3%AFve%20path"


def _check_get_many_headers(doc: dict[str, Any], reply: Reply) -> None:
    env = doc["environ"]
    head, _ = capture_parts("get_many_headers")
    assert [v for k, v in head.vars if k == "HTTP_X_DUP"] == ["one", "two"]  # twice on the wire
    assert env["HTTP_X_DUP"] == "one, two"
    assert env["HTTP_COOKIE"] == "a=1; b=2"
    assert env["HTTP_X_FORWARDED_FOR"] == "203.0.113.7" and env["HTTP_X_REQUEST_ID"] == "1234"


def _check_post(name: str, content_type: str) -> Callable[[dict[str, Any], Reply], None]:
    def check(doc: dict[str, Any], reply: Reply) -> None:
        _, body = capture_parts(name)
        assert doc["body"] == digest(body)
        assert doc["environ"]["CONTENT_LENGTH"] == str(len(body))
        assert doc["environ"]["CONTENT_TYPE"].startswith(content_type)
        assert doc["environ"]["REQUEST_METHOD"] == "POST"

    return check


def _check_post_chunked(doc: dict[str, Any], reply: Reply) -> None:
    head, body = capture_parts("post_chunked")
    assert ("HTTP_TRANSFER_ENCODING", "chunked") in head.vars
    assert "HTTP_TRANSFER_ENCODING" not in doc["keys"]
    assert doc["body"] == digest(body) == digest(capture_parts("post_binary_300k")[1])  # not de-chunked again
    assert doc["environ"]["CONTENT_LENGTH"] == "300000"


def _check_put_empty(doc: dict[str, Any], reply: Reply) -> None:
    assert doc["environ"]["REQUEST_METHOD"] == "PUT"
    assert capture_var("put_empty", "CONTENT_LENGTH") == ""
    assert "CONTENT_LENGTH" not in doc["keys"]
    assert doc["body"] == digest(b"")


def _check_delete(doc: dict[str, Any], reply: Reply) -> None:
    assert (doc["environ"]["REQUEST_METHOD"], doc["environ"]["PATH_INFO"]) == ("DELETE", "/item/42")


def _check_head(doc: dict[str, Any], reply: Reply) -> None:
    assert doc["environ"]["REQUEST_METHOD"] == "HEAD"
    assert reply.body == b""  # headers only
    assert reply.headers["content-type"] == "application/json"
    assert int(reply.headers["content-length"]) == len(reply.headers["x-environ"])


def _check_script_name_mod30(doc: dict[str, Any], reply: Reply) -> None:
    head, _ = capture_parts("script_name_mod30")
    assert head.modifier1 == 30 and dict(head.vars)["PATH_INFO"] == "/app2/sub/path"
    assert (doc["environ"]["SCRIPT_NAME"], doc["environ"]["PATH_INFO"]) == ("/app2", "/sub/path")


def _check_https_vars(doc: dict[str, Any], reply: Reply) -> None:
    assert doc["environ"]["wsgi.url_scheme"] == "https"


def _check_long_header(doc: dict[str, Any], reply: Reply) -> None:
    assert int.from_bytes(capture("long_header")[1:3], "little") > 4096  # over uWSGI's default buffer
    assert doc["environ"]["HTTP_X_LONG"] == "a" * 6000


def _check_http10(doc: dict[str, Any], reply: Reply) -> None:
    assert reply.status_line.startswith("HTTP/1.0 200")
    assert doc["environ"]["SERVER_PROTOCOL"] == "HTTP/1.0"


def _check_get_root(doc: dict[str, Any], reply: Reply) -> None:
    env = doc["environ"]
    assert (env["PATH_INFO"], env["QUERY_STRING"], env["SCRIPT_NAME"]) == ("/", "", "")
    assert capture_var("get_root", "CONTENT_LENGTH") == "" and "CONTENT_LENGTH" not in doc["keys"]
    assert capture_var("get_root", "SERVER_NAME") == "" and env["SERVER_NAME"] == "127.0.0.1"


SPECIFIC: dict[str, Callable[[dict[str, Any], Reply], None]] = {
    "delete": _check_delete,
    "get_many_headers": _check_get_many_headers,
    "get_query": _check_get_query,
    "get_root": _check_get_root,
    "get_unicode_path": _check_get_unicode_path,
    "head": _check_head,
    "http10": _check_http10,
    "https_vars": _check_https_vars,
    "long_header": _check_long_header,
    "post_binary_300k": _check_post("post_binary_300k", "application/octet-stream"),
    "post_chunked": _check_post_chunked,
    "post_form": _check_post("post_form", "application/x-www-form-urlencoded"),
    "post_json": _check_post("post_json", "application/json"),
    "post_multipart": _check_post("post_multipart", "multipart/form-data; boundary="),
    "put_empty": _check_put_empty,
    "script_name_mod30": _check_script_name_mod30,
    "unbuffered_post": _check_post("unbuffered_post", "application/x-www-form-urlencoded"),
}


def test_every_capture_is_covered() -> None:
    assert sorted(SPECIFIC) == CAPTURES and len(CAPTURES) == 17


@pytest.mark.process
@pytest.mark.parametrize("name", CAPTURES)
def test_raw_replay(server: Server, name: str) -> None:
    reply = uwsgi_exchange(server.socket, capture(name))
    doc = reply.doc
    want = expected(name)
    protocol = want["environ"]["SERVER_PROTOCOL"]
    assert reply.status_line == f"{protocol} 200 OK"
    assert reply.headers["content-type"] == "application/json"
    assert "transfer-encoding" not in reply.headers
    if name != "head":
        assert int(reply.headers["content-length"]) == len(reply.body)
    assert doc["environ"] == want["environ"]
    assert doc["body"] == want["body"]
    assert_pep3333(doc)
    SPECIFIC[name](doc, reply)


def unread_by_peer(sock: socket.socket) -> int:
    """Bytes sent on a unix socket that the other end has not read yet (SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]


@pytest.mark.process
def test_raw_two_processes_serve(server: Server) -> None:
    """wsgi.multiprocess is true: with one worker held by a half-sent body, the other one answers."""
    head, body = capture_parts("post_form")
    with send(server.socket, encode_request(head.vars)) as held:  # CONTENT_LENGTH 23, body not sent yet
        # A worker that accepted before the head arrived parks the connection and stays free:
        # wait until the head has been read, so that worker is in the app, waiting for the body.
        wait_for(lambda: unread_by_peer(held) == 0, 5, "a worker to read the held request's head")
        other = uwsgi_exchange(server.socket, capture("get_root")).doc
        held.sendall(body)
        first = Reply(read_all(held)).doc
    assert first["body"] == digest(body)
    assert first["process"]["pid"] != other["process"]["pid"]
    assert {first["process"]["pid"], other["process"]["pid"]} <= server.worker_pids()
    assert first["wsgi"]["multiprocess"] is other["wsgi"]["multiprocess"] is True


@pytest.mark.process
def test_raw_magic_vars_never_honoured(server: Server, workdir: Path) -> None:
    magic = dict(
        MAGIC_PARAMS, UWSGI_FILE=str(workdir / "hijack_file.py"), UWSGI_CHDIR=str(workdir / "elsewhere")
    )
    base = dict(capture_parts("get_root")[0].vars)
    packet = encode_request({**base, **magic})
    for _ in range(4):  # with 2 workers, most likely both see it; none may change
        doc = uwsgi_exchange(server.socket, packet).doc
        assert_pep3333(doc)  # the environ-dump app answered, in the start cwd, without the env var
        assert {k: doc["environ"][k] for k in magic} == magic
    for _ in range(4):
        assert_pep3333(uwsgi_exchange(server.socket, capture("get_root")).doc)
    assert not list(workdir.glob("HIJACKED-*"))


# --- (b) the same requests through real nginx -----------------------------------------------------


def through(
    front: Nginx, method: str, path: str, body: bytes | None = None, headers: Any = None
) -> dict[str, Any]:
    """One request through nginx; the environ document, checked against PEP 3333 and nginx's vars."""
    status, resp_headers, data = front.request(method, path, body, headers)
    assert status == 200, (status, data[:300], front.error_log()[-2000:])
    text = resp_headers["x-environ"] if method == "HEAD" else data.decode("ascii")
    if method == "HEAD":
        assert data == b""
    doc = json.loads(text)
    assert_pep3333(doc)
    env = doc["environ"]
    assert env["HTTP_HOST"] == f"127.0.0.1:{front.port}"  # the client's Host header
    assert env["SERVER_NAME"] == "127.0.0.1"  # nginx sends "" for a catch-all server
    assert (env["SERVER_PORT"], env["REMOTE_ADDR"], env["REQUEST_METHOD"]) == (
        str(front.port),
        "127.0.0.1",
        method,
    )
    assert env["REQUEST_URI"] == path
    return doc


@pytest.mark.nginx
def test_nginx_get_root(front: Nginx) -> None:
    doc = through(front, "GET", "/")
    env = doc["environ"]
    assert (env["SCRIPT_NAME"], env["PATH_INFO"], env["QUERY_STRING"], env["wsgi.url_scheme"]) == (
        "",
        "/",
        "",
        "http",
    )
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert "CONTENT_LENGTH" not in doc["keys"] and doc["body"] == digest(b"")


@pytest.mark.nginx
def test_nginx_get_query(front: Nginx) -> None:
    env = through(front, "GET", "/search?q=hello+world&lang=en&x=%2F%3F")["environ"]
    assert env["QUERY_STRING"] == "q=hello+world&lang=en&x=%2F%3F"
    assert env["PATH_INFO"] == "/search"


@pytest.mark.nginx
def test_nginx_unicode_path(front: Nginx) -> None:
    env = through(front, "GET", "/caf%C3%A9/na%C3%AFve%20path")["environ"]
    assert env["PATH_INFO"] == "/cafÃ©/naÃ¯ve path"


@pytest.mark.nginx
def test_nginx_repeated_headers_merged(front: Nginx) -> None:
    headers = [
        ("X-Forwarded-For", "203.0.113.7"),
        ("Cookie", "c1=1"),
        ("Accept-Language", "en-US,en;q=0.9"),
        ("X-Request-Id", "1234"),
        ("X-Dup", "one"),
        ("X-Dup", "two"),
        ("Cookie", "c2=2"),
    ]
    env = through(front, "GET", "/headers", headers=headers)["environ"]
    assert env["HTTP_X_DUP"] == "one, two"
    assert env["HTTP_COOKIE"] == "c1=1; c2=2"
    assert env["HTTP_ACCEPT_LANGUAGE"] == "en-US,en;q=0.9"
    assert env["HTTP_X_FORWARDED_FOR"] == "203.0.113.7" and env["HTTP_X_REQUEST_ID"] == "1234"


@pytest.mark.nginx
@pytest.mark.parametrize("name", ["post_form", "post_json", "post_multipart", "post_binary_300k"])
def test_nginx_post(front: Nginx, name: str) -> None:
    head, body = capture_parts(name)
    vars = dict(head.vars)
    doc = through(front, "POST", vars["REQUEST_URI"], body, {"Content-Type": vars["CONTENT_TYPE"]})
    env = doc["environ"]
    assert doc["body"] == digest(body)
    assert (env["CONTENT_TYPE"], env["CONTENT_LENGTH"]) == (vars["CONTENT_TYPE"], str(len(body)))


@pytest.mark.nginx
@pytest.mark.parametrize("path", ["/upload", "/unbuffered"])
@pytest.mark.parametrize("mode", ["read", "chunks", "lines", "iter", "readlines"])
def test_nginx_300k_body_every_reader(front: Nginx, path: str, mode: str) -> None:
    _, body = capture_parts("unbuffered_post")
    doc = through(front, "POST", path, body, {"X-Read": mode, "Content-Type": "application/octet-stream"})
    assert doc["body"] == digest(body)
    assert doc["environ"]["CONTENT_LENGTH"] == "300000"


@pytest.mark.nginx
def test_nginx_chunked_upload(front: Nginx) -> None:
    _, body = capture_parts("post_chunked")
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=30)
    try:
        pieces = (body[i : i + 65536] for i in range(0, len(body), 65536))
        conn.request(
            "POST",
            "/chunked",
            body=pieces,
            headers={"Content-Type": "application/x-www-form-urlencoded", "Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    assert resp.status == 200, data[:300]
    doc = json.loads(data)
    assert_pep3333(doc)
    assert "HTTP_TRANSFER_ENCODING" not in doc["keys"]
    assert doc["environ"]["CONTENT_LENGTH"] == "300000"  # nginx de-chunked and counted
    assert doc["body"] == digest(body)  # intact, not de-chunked a second time


@pytest.mark.nginx
def test_nginx_put_empty_and_delete(front: Nginx) -> None:
    doc = through(front, "PUT", "/empty")
    assert "CONTENT_LENGTH" not in doc["keys"] and doc["body"] == digest(b"")
    doc = through(front, "DELETE", "/item/42")
    assert doc["environ"]["PATH_INFO"] == "/item/42"


@pytest.mark.nginx
def test_nginx_head(front: Nginx) -> None:
    doc = through(front, "HEAD", "/head")
    assert doc["environ"]["PATH_INFO"] == "/head"


@pytest.mark.nginx
@pytest.mark.parametrize(
    ("path", "path_info"),
    [("/app2/sub/path", "/sub/path"), ("/app2", ""), ("/app2/", "/"), ("/app20/x", "/app20/x")],
)
def test_nginx_modifier1_30(front: Nginx, path: str, path_info: str) -> None:
    env = through(front, "GET", path)["environ"]
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/app2", path_info)


@pytest.mark.nginx
def test_nginx_https(front: Nginx) -> None:
    env = through(front, "GET", "/https/x")["environ"]
    assert (env["wsgi.url_scheme"], env["HTTPS"], env["UWSGI_SCHEME"]) == ("https", "on", "https")
    assert env["PATH_INFO"] == "/https/x"


@pytest.mark.nginx
def test_nginx_long_header(front: Nginx) -> None:
    env = through(front, "GET", "/long", headers={"X-Long": "a" * 6000})["environ"]
    assert env["HTTP_X_LONG"] == "a" * 6000


@pytest.mark.nginx
def test_nginx_http10(front: Nginx) -> None:
    request = f"GET /old HTTP/1.0\r\nHost: 127.0.0.1:{front.port}\r\n\r\n".encode()
    reply = Reply(
        exchange(f"127.0.0.1:{front.port}", request)
    )  # an HTTP/1.0 exchange ends with nginx closing
    assert reply.status_line.split(" ", 2)[1] == "200", reply.status_line
    doc = reply.doc
    assert_pep3333(doc)
    assert doc["environ"]["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert doc["environ"]["PATH_INFO"] == "/old"


@pytest.mark.nginx
def test_nginx_magic_vars_never_honoured(front: Nginx, workdir: Path) -> None:
    for _ in range(4):
        env = through(front, "GET", "/magic/x")["environ"]  # through() checks the app, cwd and env var
        assert env["UWSGI_SETENV"] == "BINSERVE_TEST_MAGIC=set-by-a-request"
    for _ in range(4):
        through(front, "GET", "/after-magic")
    assert not list(workdir.glob("HIJACKED-*"))


@pytest.mark.nginx
def test_nginx_overridden_params_are_not_joined(front: Nginx) -> None:
    """A uwsgi_param set again after the include reaches binserve twice; only HTTP_* headers are joined.

    nginx sends both values, in config order. Joining them as for a repeated header gives
    CONTENT_LENGTH "5, 5" (not an integer, against PEP 3333) and "x, y" addresses; uWSGI keeps
    the last value, the one the operator wrote last.
    """
    status, _, data = front.request("POST", "/override", b"hello", {"Content-Type": "text/plain"})
    assert status == 200, data[:300]
    doc = json.loads(data)
    env = doc["environ"]
    assert env["CONTENT_LENGTH"] == "5"
    assert doc["body"] == digest(b"hello")
    assert (env["SERVER_NAME"], env["REMOTE_ADDR"]) == ("example.org", "203.0.113.9")
    assert_pep3333(doc)

"""Flask, Django and Bottle apps run unchanged on binserve behind real nginx.

Each app (tests/apps/{flask,django,bottle}_app.py) gets its own binserve with two workers
and its own nginx, all started once for the module; each test ends by checking that the
server logged no traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from binserve.testing import Nginx, Server, location
from binserve.testing.processes import running

from support import APPS

pytestmark = pytest.mark.nginx  # the sites behind nginx are module fixtures, started before any test

FRAMEWORKS = ("flask", "django", "bottle")


@dataclass
class Site:
    server: Server
    front: Nginx

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One request through nginx; the server must not have logged a traceback."""
        response = self.front.request(method, path, body=body, headers=headers)
        log = self.server.log()
        assert "Traceback" not in log, log
        return response


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Site]]:
    tmp = tmp_path_factory.mktemp("frameworks")
    started: list[Server | Nginx] = []
    try:
        servers = {}
        for name in FRAMEWORKS:
            # Started together, waited for together: the three imports overlap.
            servers[name] = Server(
                tmp,
                ["--wsgi-file", str(APPS / f"{name}_app.py"), "--processes", "2"],
                socket_path=tmp / f"{name}.sock",
                ready=False,
            )
            started.append(servers[name])
        result = {}
        for name, server in servers.items():
            server.wait_ready()
            result[name] = Site(server, Nginx.in_front(tmp, location(server.socket)))
            started.append(result[name].front)
        yield result
    finally:
        for proc in reversed(started):
            proc.stop()
    leftovers = running(f"binserve --socket {tmp}")
    assert not leftovers, "binserve processes left behind:\n" + "\n".join(leftovers)


def form_body(fields: list[tuple[str, str]]) -> tuple[bytes, dict[str, str]]:
    """An application/x-www-form-urlencoded body and its Content-Type."""
    body = urllib.parse.urlencode(fields).encode()
    return body, {"Content-Type": "application/x-www-form-urlencoded"}


def multipart_body(
    fields: list[tuple[str, str]], file_field: str, filename: str, data: bytes
) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body with text fields and one file, and its Content-Type."""
    boundary = "binserve-" + os.urandom(8).hex()
    parts = []
    for name, value in fields:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    parts.append(
        f"--{boundary}\r\nContent-Disposition: form-data; "
        f'name="{file_field}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


FORM_FIELDS = [("name", "Ada Lövelace & co"), ("tag", "a"), ("tag", "b=c")]


# --- Flask ----------------------------------------------------------------------------------------


def test_flask_get(sites: dict[str, Site]) -> None:
    status, _, body = sites["flask"].request("GET", "/?who=nginx")
    assert (status, body) == (200, b"flask says hi to nginx")


def test_flask_form_post(sites: dict[str, Site]) -> None:
    body, headers = form_body(FORM_FIELDS)
    status, _, answer = sites["flask"].request("POST", "/form", body=body, headers=headers)
    assert status == 200
    assert json.loads(answer) == {"name": "Ada Lövelace & co", "tags": ["a", "b=c"]}


def test_flask_file_upload(sites: dict[str, Site]) -> None:
    data = os.urandom(700_000) + b"\r\n--not-a-boundary\r\n" + os.urandom(1000)
    body, headers = multipart_body([("note", "quarterly")], "document", "report.bin", data)
    status, _, answer = sites["flask"].request("POST", "/upload", body=body, headers=headers)
    assert status == 200
    assert json.loads(answer) == {
        "filename": "report.bin",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "note": "quarterly",
    }


def test_flask_404(sites: dict[str, Site]) -> None:
    status, _, _ = sites["flask"].request("GET", "/no/such/page")
    assert status == 404


# --- Django ---------------------------------------------------------------------------------------


def test_django_get(sites: dict[str, Site]) -> None:
    status, headers, body = sites["django"].request("GET", "/?who=nginx")
    assert (status, body) == (200, b"django says hi to nginx")
    assert headers["content-type"].startswith("text/plain")


def test_django_form_post(sites: dict[str, Site]) -> None:
    body, headers = form_body(FORM_FIELDS)
    status, _, answer = sites["django"].request("POST", "/form", body=body, headers=headers)
    assert status == 200
    assert json.loads(answer) == {"name": "Ada Lövelace & co", "tags": ["a", "b=c"], "file_sha256": None}


def test_django_multipart_post(sites: dict[str, Site]) -> None:
    data = os.urandom(300_000)
    body, headers = multipart_body([("name", "Grace"), ("tag", "x")], "document", "a.bin", data)
    status, _, answer = sites["django"].request("POST", "/form", body=body, headers=headers)
    assert status == 200
    assert json.loads(answer) == {
        "name": "Grace",
        "tags": ["x"],
        "file_sha256": hashlib.sha256(data).hexdigest(),
    }


def test_django_csrf_still_guards_other_views(sites: dict[str, Site]) -> None:
    # The middleware is on: only the csrf_exempt view takes a token-less POST.
    body, headers = form_body([("x", "1")])
    status, _, _ = sites["django"].request("POST", "/guarded", body=body, headers=headers)
    assert status == 403


def test_django_404(sites: dict[str, Site]) -> None:
    status, _, _ = sites["django"].request("GET", "/no/such/page")
    assert status == 404


# --- Bottle ---------------------------------------------------------------------------------------


def test_bottle_static_route(sites: dict[str, Site]) -> None:
    status, _, body = sites["bottle"].request("GET", "/")
    assert (status, body) == (200, b"bottle index")


@pytest.mark.parametrize(
    ("path", "expected"),
    [("/hello/World", "Hello, World!"), ("/hello/J%C3%BCrgen", "Hello, Jürgen!")],
    ids=["ascii", "percent-encoded-utf8"],
)
def test_bottle_dynamic_route(sites: dict[str, Site], path: str, expected: str) -> None:
    status, _, body = sites["bottle"].request("GET", path)
    assert (status, body.decode()) == (200, expected)


def test_bottle_typed_route_and_query(sites: dict[str, Site]) -> None:
    status, headers, body = sites["bottle"].request("GET", "/items/21?q=x%20y")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"id": 21, "double": 42, "q": "x y"}


def test_bottle_form_post(sites: dict[str, Site]) -> None:
    body, headers = form_body([("text", "grüße")])
    status, _, answer = sites["bottle"].request("POST", "/echo", body=body, headers=headers)
    assert (status, answer.decode()) == (200, "got grüße")


@pytest.mark.parametrize("path", ["/nothing-here", "/items/not-a-number", "/hello/a/b"])
def test_bottle_404(sites: dict[str, Site], path: str) -> None:
    status, _, body = sites["bottle"].request("GET", path)
    assert status == 404
    assert b"Not Found" in body

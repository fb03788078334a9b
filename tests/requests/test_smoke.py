"""The shortest path through everything: nginx -> binserve -> demo app -> back."""

from __future__ import annotations

from binserve.testing import Serve, StartNginx

from support import logged


def test_demo_app_through_nginx(serve: Serve, nginx: StartNginx) -> None:
    server = serve("--module", "binserve.demo", "--processes", "2")
    front = nginx(server)
    status, headers, body = front.request("GET", "/hello?x=1")
    assert status == 200
    assert body.startswith(b"Hello from binserve!")
    assert b"path: /hello" in body and b"query: x=1" in body
    assert headers["content-length"] == str(len(body))
    status, _, body = front.request("POST", "/echo", body=b"payload")
    assert (status, body) == (200, b"payload")
    assert logged(server.log(), "GET", "/hello?x=1", 200)

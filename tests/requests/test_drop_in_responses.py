"""Responses real apps send, answered as RFC 9110/9112 want and as nginx in front expects."""

from __future__ import annotations

from binserve.testing import Serve, StartNginx

from support import APPS, AppFile

APP = (APPS / "drop_in_app.py").read_text()


def test_head_of_a_streamed_response_gets_no_content_length(
    serve: Serve, nginx: StartNginx, app_file: AppFile
) -> None:
    server = serve("--wsgi-file", str(app_file(APP)))
    head = server.request("/stream", "HEAD")
    assert head.status == 200 and head.body == b""
    assert "content-length" not in {name.lower() for name, _ in head.headers}, head.headers
    get = server.request("/stream")
    assert get.body == b"chunk 1\nchunk 2\n"
    front = nginx(server)
    status, headers, body = front.request("HEAD", "/stream")
    assert status == 200 and body == b"" and headers.get("Content-Length") != "0"


def test_a_status_without_a_reason_phrase_keeps_the_space_of_the_status_line(
    serve: Serve, app_file: AppFile
) -> None:
    server = serve("--wsgi-file", str(app_file(APP)))
    answer = server.request("/noreason")
    assert answer.status_line == "HTTP/1.1 200 " and answer.body == b"ok"


def test_hop_by_hop_headers_from_the_app_are_dropped_with_one_warning(
    serve: Serve, app_file: AppFile
) -> None:
    server = serve("--wsgi-file", str(app_file(APP)))
    for _ in range(3):
        answer = server.request("/hop")
        assert answer.status == 200 and answer.body == b"hop"
        names = {name.lower() for name, _ in answer.headers}
        assert "connection" not in names and "keep-alive" not in names and "content-type" in names
    log = server.log()
    assert log.count("hop-by-hop header 'Connection'") == 1, log
    assert log.count("hop-by-hop header 'Keep-Alive'") == 1, log


def test_a_header_value_beyond_latin_1_is_named_as_such(serve: Serve, app_file: AppFile) -> None:
    server = serve("--wsgi-file", str(app_file(APP)))
    assert server.request("/emoji").status == 500
    log = server.log()
    assert "has characters beyond latin-1, which a header cannot carry" in log, log
    assert "control characters" not in log

"""The request log: uWSGI's default line field by field (and beside real uWSGI's), every
log-format variable, JSON lines, the conditional log-4xx/5xx/slow/big/zero, X-Forwarded-For,
and peer text (non-ASCII, invalid UTF-8, control characters) written as it should be.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from binserve.requestlog import VARIABLES
from binserve.testing import Serve, Server, StartNginx, exchange, executable, request_packet, wait_for
from binserve.testing.client import request_vars
from binserve.testing.processes import location

from support import REPO, REQUEST_LINE, AppFile

APP = """
import time

def application(environ, start_response):
    path, query = environ["PATH_INFO"], environ["QUERY_STRING"]
    status, body = "200 OK", b"hello"
    if path.startswith("/status/"):
        status = path[8:] + " Whatever"
    elif path == "/big":
        body = b"b" * int(query)
    elif path == "/sleep":
        time.sleep(float(query))
    elif path == "/hold":  # says it is in the app (a file named by the query), then sleeps
        open(query, "w").close()
        time.sleep(1)
    elif path == "/empty":
        body = b""
    elif path == "/pieces":
        start_response(status, [("Content-Type", "text/plain")])
        return iter([b"a", b"bb", b"ccc"])
    elif path == "/file":
        start_response(status, [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](open(__file__, "rb"))
    start_response(status, [("Content-Type", "text/plain"), ("X-Test", "1")])
    return [body]
"""


def request_lines(server: Server, count: int) -> list[re.Match[str]]:
    """The first ``count`` default request lines of ``server``'s log, waiting for them."""
    wait_for(lambda: len(REQUEST_LINE.findall(server.log())) >= count, 10, f"{count} request lines")
    return list(REQUEST_LINE.finditer(server.log()))


def lines_after(server: Server, marker: str, count: int) -> list[str]:
    """``count`` log lines starting with ``marker``, waiting for them."""

    def found() -> list[str]:
        return [line for line in server.log().splitlines() if line.startswith(marker)]

    wait_for(lambda: len(found()) >= count, 10, f"{count} lines starting with {marker!r}")
    return found()


def json_lines(server: Server, count: int) -> list[str]:
    """The log's lines that hold a JSON object, once there are ``count``."""

    def found() -> list[str]:
        return [line for line in server.log().splitlines() if line.startswith("{")]

    wait_for(lambda: len(found()) >= count, 10, f"{count} JSON lines")
    return found()


def split_answer(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", body


def test_default_line_is_uwsgis_field_by_field(serve: Serve, app_file: AppFile) -> None:
    server = serve("--wsgi-file", str(app_file(APP)))
    extra = {"REMOTE_USER": "bob"}
    headers = {"User-Agent": "probe/1"}
    packet = request_packet("/hello?x=1", "GET", headers, **extra)
    answers = [exchange(server.socket, packet) for _ in range(2)]
    pieces = exchange(server.socket, request_packet("/pieces"))
    exchange(server.socket, request_packet("/file"))
    first, second, third, fourth = request_lines(server, 4)
    head, body = split_answer(answers[0])
    assert answers[0] == answers[1]
    assert first.groupdict() == {
        "pid": str(server.worker_pids().pop()),
        "app": "0",
        "app_req": "1",
        "req": "1",
        "addr": "127.0.0.1",
        "user": "bob",
        "vars": str(2 * len(request_vars("/hello?x=1", "GET", headers, **extra))),
        "pktsize": str(len(packet) - 4),
        "ctime": first["ctime"],
        "method": "GET",
        "uri": "/hello?x=1",
        "rsize": str(len(body)),
        "time": first["time"],
        "unit": "msecs",
        "proto": "HTTP/1.1",
        "status": "200",
        "headers": "3",  # Content-Type, X-Test and the Content-Length binserve adds
        "hsize": str(len(head)),
        "switches": "1",
        "core": "0",
    }
    assert abs(time.mktime(time.strptime(first["ctime"])) - time.time()) < 60
    assert (second["app_req"], second["req"]) == ("2", "2")
    assert (third["uri"], third["rsize"], third["switches"]) == ("/pieces", "6", "3")
    assert split_answer(pieces)[1] == b"abbccc"
    assert (fourth["uri"], fourth["rsize"]) == ("/file", str(len(APP)))
    assert " via sendfile() (HTTP/1.1 200)" in fourth.group()


def test_instance_total_comes_from_the_scoreboard(serve: Serve, app_file: AppFile, tmp_path: Path) -> None:
    server = serve(
        "--wsgi-file", str(app_file(APP)), "--processes", "2", "--stats", str(tmp_path / "stats.sock")
    )
    server.wait_workers(2)
    for _ in range(8):
        exchange(server.socket, request_packet("/"))
    lines = request_lines(server, 8)
    # One request at a time: the instance's count goes up by one per line, whichever worker served it.
    assert [int(m["req"]) for m in lines] == list(range(1, 9))
    per_worker = {m["pid"]: int(m["app_req"]) for m in lines}
    assert sum(per_worker.values()) == 8
    # Without the scoreboard (no stats, no harakiri) the second number is the worker's own count.
    alone = serve("--wsgi-file", str(app_file(APP)), "--processes", "2", socket_path=tmp_path / "alone.sock")
    alone.wait_workers(2)
    for _ in range(8):
        exchange(alone.socket, request_packet("/"))
    assert all(m["app_req"] == m["req"] for m in request_lines(alone, 8))


def test_same_request_through_nginx_logs_like_uwsgi(
    serve: Serve, nginx: StartNginx, app_file: AppFile, tmp_path: Path
) -> None:
    """The same request through nginx to real uWSGI and to binserve: both lines read the same."""
    app = app_file(APP)
    server = serve("--wsgi-file", str(app))
    uwsgi_sock = tmp_path / "uwsgi.sock"
    uwsgi_log = tmp_path / "uwsgi.log"
    args = [executable("uwsgi"), "--socket", str(uwsgi_sock), "--wsgi-file", str(app), "--master"]
    with open(uwsgi_log, "wb") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path
        )
    try:
        front = nginx(location(server.socket, "/b/") + location(uwsgi_sock, "/u/"))
        wait_for(lambda: uwsgi_sock.exists(), 20, "uWSGI's socket")
        for prefix in ("/b/", "/u/"):
            status, _, body = front.request("GET", f"{prefix}x?q=1", headers={"User-Agent": "probe/1"})
            assert (status, body) == (200, b"hello")
        ours = request_lines(server, 1)[0].groupdict()
        wait_for(lambda: REQUEST_LINE.search(uwsgi_log.read_text()), 10, "uWSGI's request line")
        match = REQUEST_LINE.search(uwsgi_log.read_text())
        assert match is not None
        theirs = match.groupdict()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # Everything but who served it, when, how fast, and the URI's prefix; binserve adds a
    # Content-Length header that uWSGI leaves to nginx.
    for key in ("pid", "ctime", "time", "uri", "headers", "hsize"):
        del ours[key], theirs[key]
    assert ours == theirs


def test_every_log_format_variable(serve: Serve, app_file: AppFile) -> None:
    names = [name for name in VARIABLES if name != "var.NAME"] + ["var.HTTP_X_ID", "var.MISSING"]
    fmt = "LF " + "\t".join(f"{name}=%({name})" for name in names)
    server = serve("--wsgi-file", str(app_file(APP)), "--logformat", fmt)
    headers = {"User-Agent": "probe/1", "Referer": "http://ref/", "X-Id": "abc-123"}
    packet = request_packet("/status/404?x=1", "POST", headers, b"abc", REMOTE_USER="bob")
    before = time.time()
    answer = exchange(server.socket, packet)
    after = time.time()
    head, body = split_answer(answer)
    (line,) = lines_after(server, "LF ", 1)
    got = dict(field.split("=", 1) for field in line[3:].split("\t"))
    assert list(got) == names
    started = int(got["time"])
    assert int(before) <= started <= after
    memory = {name: int(got.pop(name)) for name in ("rss", "vsz", "rssM", "vszM")}
    assert 0 < memory["rss"] <= memory["vsz"]
    assert (memory["rssM"], memory["vszM"]) == (memory["rss"] >> 20, memory["vsz"] >> 20)
    timings = {name: got.pop(name) for name in ("msecs", "micros", "secs")}
    assert int(timings["msecs"]) == int(timings["micros"]) // 1000
    assert abs(float(timings["secs"]) - int(timings["micros"]) / 1e6) < 2e-6
    assert int(got.pop("epoch")) in (started, started + 1)
    assert got == {
        "addr": "127.0.0.1",
        "user": "bob",
        "method": "POST",
        "uri": "/status/404?x=1",
        "proto": "HTTP/1.1",
        "host": "localhost",
        "uagent": "probe/1",
        "referer": "http://ref/",
        "status": "404",
        "size": str(len(answer)),
        "rsize": str(len(body)),
        "hsize": str(len(head)),
        "headers": "3",
        "switches": "1",
        "cl": "3",
        "vars": str(2 * len(request_vars("/status/404?x=1", "POST", headers, b"abc", REMOTE_USER="bob"))),
        "pktsize": str(len(packet) - 4 - 3),
        "modifier1": "0",
        "modifier2": "0",
        "time": str(started),
        "tmsecs": got["tmsecs"],
        "tmicros": got["tmicros"],
        "ctime": time.ctime(started),
        "ltime": time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(started)),
        "ftime": time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(started)),
        "pid": str(server.worker_pids().pop()),
        "wid": "1",
        "core": "0",
        "var.HTTP_X_ID": "abc-123",
        "var.MISSING": "-",  # as uWSGI: an empty value is written "-"
    }
    assert int(got["tmsecs"]) // 1000 == started and int(got["tmicros"]) // 1_000_000 == started


@pytest.mark.process
def test_unknown_variable_is_a_startup_error_naming_it(tmp_path: Path) -> None:
    ini = tmp_path / "app.ini"
    ini.write_text("[uwsgi]\nmodule = binserve.demo\nlog-format = %(addr) %(adr) %(uri)\n")
    run = [executable("binserve"), "--socket", str(tmp_path / "s.sock")]
    from_ini = subprocess.run([*run, "--ini", str(ini)], capture_output=True, text=True, timeout=60)
    assert from_ini.returncode != 0
    assert (
        f"{ini}:3: option 'log-format': unknown request-log variable %(adr) (known: addr, " in from_ini.stderr
    )
    from_cli = subprocess.run(
        [*run, "--module", "binserve.demo", "--logformat", "%(metric.x)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert from_cli.returncode != 0
    assert "--log-format: option 'log-format': unknown request-log variable %(metric.x)" in from_cli.stderr


def test_json_lines(serve: Serve, app_file: AppFile) -> None:
    app = str(app_file(APP))
    chosen = serve(
        "--wsgi-file", app, "--log-req-encoder", "json", "--log-format", "%(uri) %(status) %(var.HTTP_X_ID)"
    )
    default = serve(
        "--wsgi-file", app, "--log-req-encoder", "json", socket_path=chosen.socket.parent / "d.sock"
    )
    # Bytes a peer may send: a quote, a backslash, UTF-8, an invalid byte, a newline, an escape.
    uri = '/q"u\\o\xc3\xa9\xff\n\x1b'
    for server in (chosen, default):
        exchange(server.socket, request_packet(uri, headers={"X-Id": "7"}))
        exchange(server.socket, request_packet("/status/503"))
    wait_for(
        lambda: len([line for line in chosen.log().splitlines() if line.startswith("{")]) >= 2, 10, "2 lines"
    )
    text = [line for line in chosen.log().splitlines() if line.startswith("{")]
    assert [json.loads(line) for line in text] == [
        {"uri": '/q"u\\oé\\xff\n\x1b', "status": 200, "var.HTTP_X_ID": "7"},
        {"uri": "/status/503", "status": 503, "var.HTTP_X_ID": ""},
    ]
    wait_for(
        lambda: len([line for line in default.log().splitlines() if line.startswith("{")]) >= 2, 10, "2 lines"
    )
    records = [json.loads(line) for line in default.log().splitlines() if line.startswith("{")]
    assert (
        list(records[0])
        == (
            "time addr user method uri proto status size rsize hsize micros host uagent referer pid wid core"
        ).split()
    )
    assert records[0]["uri"] == '/q"u\\oé\\xff\n\x1b' and records[0]["status"] == 200
    assert records[1]["status"] == 503 and records[1]["rsize"] == 5 and records[1]["addr"] == "127.0.0.1"
    assert records[1]["pid"] in default.worker_pids()


def test_notable_requests_are_logged_even_with_logging_disabled(serve: Serve, app_file: AppFile) -> None:
    server = serve(
        "--wsgi-file",
        str(app_file(APP)),
        "--disable-logging",
        "--log-4xx",
        "--log-5xx",
        "--log-slow",
        "300",
        "--log-big",
        "1k",
        "--log-zero",
    )
    quiet = ["/ok", "/big?1023", "/status/302", "/sleep?0"]
    loud = ["/status/404", "/status/500", "/sleep?0.4", "/big?1024", "/empty"]
    for path in quiet + loud:
        exchange(server.socket, request_packet(path))
    # A line is written before its connection closes, and the requests went one after another:
    # a quiet one logged by mistake would be in the log already.
    lines = request_lines(server, len(loud))
    assert [m["uri"] for m in REQUEST_LINE.finditer(server.log())] == loud
    assert [m["status"] for m in lines] == ["404", "500", "200", "200", "200"]


def test_x_forwarded_for_and_micros(serve: Serve, nginx: StartNginx, app_file: AppFile) -> None:
    server = serve("--wsgi-file", str(app_file(APP)), "--log-x-forwarded-for", "--log-micros")
    front = nginx(server)
    assert front.request("GET", "/a", headers={"X-Forwarded-For": "203.0.113.9"})[0] == 200
    assert front.request("GET", "/b")[0] == 200
    first, second = request_lines(server, 2)
    assert (first["addr"], first["unit"]) == ("203.0.113.9", "micros")
    assert (second["addr"], second["uri"]) == ("127.0.0.1", "/b")


def test_each_thread_logs_its_core_id(serve: Serve, app_file: AppFile, tmp_path: Path) -> None:
    server = serve("--wsgi-file", str(app_file(APP)), "--threads", "2")
    marker = tmp_path / "holding"
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(exchange, server.socket, request_packet(f"/hold?{marker}"))
        wait_for(marker.exists, 10, "the first request to be in the app")
        # One core is in the app: the other one serves this request.
        assert exchange(server.socket, request_packet("/")).startswith(b"HTTP/1.1 200")
        assert held.result(10).startswith(b"HTTP/1.1 200")
    cores = {m["uri"].split("?")[0]: m["core"] for m in request_lines(server, 2)}
    assert sorted(cores) == ["/", "/hold"] and sorted(cores.values()) == ["0", "1"]


def test_a_format_from_ini_keeps_its_variables(serve: Serve, nginx: StartNginx, app_file: AppFile) -> None:
    readme = (REPO / "README.md").read_text()
    (setting,) = re.findall(r"^log-format = .*$", readme, re.M)
    ini = app_file(f"[uwsgi]\nwsgi-file = {app_file(APP)}\n{setting}\n", "app.ini")
    server = serve("--ini", str(ini))
    front = nginx(server)
    assert front.request("GET", "/x?y=1", headers={"User-Agent": "probe/1", "Referer": "http://r/"})[0] == 200
    (line,) = lines_after(server, "127.0.0.1 - - [", 1)
    stamp = r"\[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\]"
    expected = rf'127\.0\.0\.1 - - {stamp} "GET /x\?y=1 HTTP/1\.1" 200 \d+ "http://r/" "probe/1" \d+'
    assert re.fullmatch(expected, line), line


def test_readme_lists_every_request_log_variable() -> None:
    readme = (REPO / "README.md").read_text()
    start = readme.index("<!-- request-log-variables:start -->\n") + len(
        "<!-- request-log-variables:start -->\n"
    )
    table = readme[start : readme.index("<!-- request-log-variables:end -->")]
    rows = ["| variable | value |", "| --- | --- |"] + [f"| `%({n})` | {d} |" for n, d in VARIABLES.items()]
    assert table.strip() == "\n".join(rows)


def raw_get(port: int, target: bytes) -> bytes:
    """A GET whose request target is sent byte for byte (http.client would refuse non-ASCII)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_peer_text_is_logged_as_sent_and_cannot_forge_lines(
    serve: Serve, nginx: StartNginx, app_file: AppFile
) -> None:
    server = serve("--wsgi-file", str(app_file(APP)))
    front = nginx(server)
    assert raw_get(front.port, "/café".encode()).startswith(b"HTTP/1.1 200")
    assert raw_get(front.port, b"/caf%C3%A9").startswith(b"HTTP/1.1 200")
    assert raw_get(front.port, b"/bad\xff").startswith(b"HTTP/1.1 200")
    # nginx refuses control characters in a request line; a uwsgi peer can send anything.
    exchange(server.socket, request_packet("/x\n[pid: 1|app: 0|req: 1/1] forged\x1b[2J"))
    lines = request_lines(server, 3)
    assert [m["uri"] for m in lines[:3]] == ["/café", "/caf%C3%A9", "/bad\\xff"]
    wait_for(lambda: "forged" in server.log(), 10, "the fourth request line")
    (forged,) = [line for line in server.log().splitlines() if "forged" in line]
    assert forged.startswith("[pid: ") and " GET /x\\x0a[pid: 1|app: 0|req: 1/1] forged\\x1b[2J => " in forged

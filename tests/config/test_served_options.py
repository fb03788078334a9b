"""Options seen working in a running binserve: sockets, chmod-socket, env, chdir, pythonpath
and logging (logto, disable-logging, the request lines).
"""

from __future__ import annotations

import os
import re
import signal
import stat
from pathlib import Path

from binserve.testing import Serve, free_port, ping

from support import get_bytes as get
from support import logged


def test_chmod_socket(serve: Serve, process_app: Path) -> None:
    server = serve("--wsgi-file", str(process_app), "--chmod-socket", "660")
    assert stat.S_IMODE(os.stat(server.socket).st_mode) == 0o660


def test_logto_collects_master_worker_and_app_output(serve: Serve, process_app: Path, tmp_path: Path) -> None:
    logfile = tmp_path / "logto.log"
    server = serve("--wsgi-file", str(process_app), "--logto", str(logfile))
    assert get(server.socket, "/print") == (200, b"printed")
    text = logfile.read_text()
    assert "master ready: 1 workers" in text
    assert "spawned worker 1" in text
    assert logged(text, "GET", "/print", 200)
    assert "printed by the app" in text
    assert server.log() == ""


def test_disable_logging_keeps_errors(serve: Serve, process_app: Path) -> None:
    server = serve("--wsgi-file", str(process_app), "--disable-logging")
    assert get(server.socket, "/quiet")[0] == 200
    assert get(server.socket, "/boom")[0] == 500
    log = server.log()
    assert "/quiet" not in log
    assert "500)" not in log
    assert "the app raised during GET /boom" in log
    assert "RuntimeError: the app blew up on purpose" in log


def test_request_lines_logged_by_default(serve: Serve, process_app: Path) -> None:
    server = serve("--wsgi-file", str(process_app))
    assert get(server.socket, "/loud")[0] == 200
    line = r"^\[pid: \d+\|app: 0\|req: 1/1\] 127\.0\.0\.1 \(\) .* GET /loud => generated "
    assert re.search(line, server.log(), re.M)


def test_env_option_is_visible_to_the_app(serve: Serve, process_app: Path) -> None:
    server = serve("--wsgi-file", str(process_app), "--env", "GREETING=hello world=1")
    assert get(server.socket, "/env") == (200, b"hello world=1")


def test_chdir_and_pythonpath(serve: Serve, tmp_path: Path) -> None:
    appdir = tmp_path / "site"
    libdir = tmp_path / "lib"
    appdir.mkdir()
    libdir.mkdir()
    (libdir / "helperlib.py").write_text("VALUE = 'from the pythonpath'\n")
    (appdir / "siteapp.py").write_text(
        "import os\nimport helperlib\n\n"
        "def application(environ, start_response):\n"
        "    body = f'{os.getcwd()}|{helperlib.VALUE}'.encode()\n"
        "    start_response('200 OK', [('Content-Length', str(len(body)))])\n"
        "    return [body]\n"
    )
    # The module is found only through chdir (the current directory is importable), the helper
    # only through pythonpath.
    server = serve("--chdir", str(appdir), "--pythonpath", str(libdir), "--module", "siteapp")
    assert get(server.socket, "/") == (200, f"{appdir}|from the pythonpath".encode())


def test_tcp_socket(serve: Serve, process_app: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    server = serve("--wsgi-file", str(process_app), socket_path=address)
    assert get(address, "/tcp") == (200, b"ok")
    assert f"on {address}" in server.log()


def test_two_sockets_both_serve(serve: Serve, process_app: Path, tmp_path: Path) -> None:
    second = tmp_path / "second.sock"
    server = serve("--wsgi-file", str(process_app), "--socket", str(second))
    assert ping(second)
    assert get(server.socket, "/one") == (200, b"ok")
    assert get(second, "/two") == (200, b"ok")
    assert f"on {server.socket}, {second}" in server.log()
    os.kill(server.pid, signal.SIGTERM)
    assert server.proc.wait(timeout=10) == 0
    assert not server.socket.exists() and not second.exists()

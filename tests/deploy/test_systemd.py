"""systemd: the notify protocol, socket activation, and the units in nginx_conf/.

systemd's side is played by the test: a datagram socket in tmp_path is ``NOTIFY_SOCKET`` (with
SO_PASSCRED, so each message names the process that sent it), and sockets are passed either by
Debian's ``systemd-socket-activate`` or by a launcher that binds them, sets ``LISTEN_*`` as
systemd does and executes binserve in its own process.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import signal
import socket
import string
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from binserve.config import load
from binserve.notify import STATUS_INTERVAL, Notifier
from binserve.testing import (
    Nginx,
    Process,
    Serve,
    StartEmperor,
    cmdline,
    free_port,
    nginx_conf,
    read_stats,
    wait_for,
)
from binserve.testing.client import request as uwsgi_request

from support import APPS, REPO

CONF_DIR = REPO / "nginx_conf"
APP = APPS / "systemd_app.py"
ACTIVATE = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"
ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
BINSERVE = str(Path(sys.executable).with_name("binserve"))


class Systemd:
    """The receiving end of NOTIFY_SOCKET: each datagram as (sender pid, {key: value})."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    def receive(self, timeout: float = 20.0) -> tuple[int, dict[str, str]]:
        """The next message; fails after ``timeout`` seconds without one."""
        self.sock.settimeout(timeout)
        try:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except TimeoutError:
            raise AssertionError(f"no message on NOTIFY_SOCKET within {timeout} s") from None
        pid = next(
            struct.unpack("3i", cdata)[0]
            for level, kind, cdata in ancillary
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
        )
        lines = data.decode().split("\n")
        return pid, dict(line.split("=", 1) for line in lines)

    def next_state(self, timeout: float = 20.0) -> tuple[int, dict[str, str]]:
        """The next message that is more than a STATUS= update (those may come at any time)."""
        deadline = time.monotonic() + timeout
        while True:
            pid, fields = self.receive(max(0.1, deadline - time.monotonic()))
            if set(fields) != {"STATUS"}:
                return pid, fields

    def status_until(self, pattern: str, timeout: float = 20.0) -> str:
        """Read STATUS= updates until one matches ``pattern``; that one."""
        deadline = time.monotonic() + timeout
        while True:
            _, fields = self.receive(max(0.1, deadline - time.monotonic()))
            if re.search(pattern, fields.get("STATUS", "")):
                return fields["STATUS"]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[Systemd]:
    listener = Systemd(tmp_path / "notify.sock")
    yield listener
    listener.close()


def seen(address: str | Path) -> dict[str, object]:
    """What systemd_app reports: the variables at import, in the worker, in its child; its pid."""
    response = uwsgi_request(address, "/")
    assert response.status == 200, response
    answer: dict[str, object] = json.loads(response.body)
    return answer


def old_workers_gone(process: Process, count: int) -> None:
    """Wait until the ``count`` workers of the image before a reload have exited.

    A connection that arrives while one of them is between an epoll wakeup for it and closing
    its listeners (EPOLLEXCLUSIVE woke that one alone) waits for the next connection or a signal
    to wake a new worker: the requests below must not depend on that.
    """
    wait_for(lambda: process.log().count("old worker (pid") == count, 20, f"{count} old workers to exit")


NO_VARIABLES = dict.fromkeys(("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"))


# -- Type=notify ---------------------------------------------------------------------------------
def test_status_updates_are_rate_limited_and_only_sent_when_changed(systemd: Systemd) -> None:
    notifier = Notifier(str(systemd.path))
    notifier.ready("1 workers, 0 requests served")
    assert systemd.receive()[1]["READY"] == "1"
    notifier.status("1 workers, 5 requests served")  # within STATUS_INTERVAL of the READY=1
    notifier.status_at -= STATUS_INTERVAL
    notifier.status("1 workers, 5 requests served")
    notifier.status("1 workers, 6 requests served")  # within STATUS_INTERVAL of the one before
    notifier.status_at -= STATUS_INTERVAL
    notifier.status("1 workers, 6 requests served")
    notifier.status_at -= STATUS_INTERVAL
    notifier.status("1 workers, 6 requests served")  # unchanged
    assert systemd.receive()[1] == {"STATUS": "1 workers, 5 requests served"}
    assert systemd.receive()[1] == {"STATUS": "1 workers, 6 requests served"}
    with pytest.raises(AssertionError, match="no message"):
        systemd.receive(0.2)


def test_an_abstract_notify_socket_is_reached(tmp_path: Path) -> None:
    name = f"binserve-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        receiver.settimeout(10)
        Notifier("@" + name).stopping("stopping (SIGTERM)")
        assert receiver.recv(4096) == b"STOPPING=1\nSTATUS=stopping (SIGTERM)"


@pytest.mark.process
def test_master_notifies_ready_reloading_ready_stopping_in_order(
    serve: Serve, systemd: Systemd, tmp_path: Path
) -> None:
    server = serve(
        "--wsgi-file", str(APP), "--processes", "2", env={"NOTIFY_SOCKET": str(systemd.path)}, ready=False
    )
    pid, ready = systemd.next_state()
    assert pid == server.pid and ready["READY"] == "1" and ready["MAINPID"] == str(server.pid), ready
    assert re.fullmatch(r"\d workers, 0 requests served", ready["STATUS"]), ready
    # Ready means served: the first request after READY=1 is answered.
    before = seen(server.socket)
    assert before["import"] == before["worker"] == before["child"] == NO_VARIABLES, before
    assert systemd.status_until(r"^2 workers, [1-9]\d* requests served$")

    server.proc.send_signal(signal.SIGHUP)
    pid, reloading = systemd.next_state()
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert pid == server.pid and reloading["RELOADING"] == "1", reloading
    assert 0 <= now - int(reloading["MONOTONIC_USEC"]) < 20_000_000, reloading
    pid, ready = systemd.next_state()
    assert pid == server.pid and ready["READY"] == "1" and ready["MAINPID"] == str(server.pid), ready
    old_workers_gone(server, 2)
    after = seen(server.socket)
    assert after["pid"] != before["pid"], "the reload did not start new workers"
    assert after["import"] == after["worker"] == after["child"] == NO_VARIABLES, after

    server.proc.send_signal(signal.SIGTERM)
    pid, stopping = systemd.next_state()
    assert pid == server.pid and stopping["STOPPING"] == "1", stopping
    assert server.proc.wait(20) == 0


@pytest.mark.process
def test_a_refused_reload_is_ready_again(serve: Serve, systemd: Systemd, tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP.read_text())
    server = serve("--wsgi-file", str(app), env={"NOTIFY_SOCKET": str(systemd.path)}, ready=False)
    assert "READY" in systemd.next_state()[1]
    app.write_text("raise RuntimeError('broken deploy')\n")
    server.proc.send_signal(signal.SIGHUP)
    assert "RELOADING" in systemd.next_state()[1]
    _, ready = systemd.next_state()
    assert ready["READY"] == "1" and ready["STATUS"].startswith("reload refused"), ready
    assert uwsgi_request(server.socket, "/").status == 200


@pytest.mark.process
def test_a_failed_notification_is_logged_once_and_serving_goes_on(serve: Serve, tmp_path: Path) -> None:
    server = serve("--wsgi-file", str(APP), env={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    server.wait_log("cannot notify systemd")
    assert uwsgi_request(server.socket, "/").status == 200
    assert server.stop() == 0  # STOPPING=1 fails too: not logged again
    assert server.log().count("cannot notify systemd") == 1, server.log()


@pytest.mark.process
def test_a_notify_socket_nobody_reads_does_not_hang_the_master(serve: Serve, tmp_path: Path) -> None:
    """Its queue full before binserve starts: READY=1 cannot be queued, and waiting would be forever."""
    path = tmp_path / "deaf.sock"
    deaf = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    deaf.bind(str(path))
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    try:
        with pytest.raises(BlockingIOError):
            for _ in range(100_000):
                filler.sendto(b"STATUS=filler", str(path))
        server = serve("--wsgi-file", str(APP), env={"NOTIFY_SOCKET": str(path)})
        server.wait_log(f"cannot notify systemd on {path}: its queue is full")
        assert uwsgi_request(server.socket, "/").status == 200
        server.proc.send_signal(signal.SIGHUP)  # RELOADING=1 and READY=1 again are dropped too
        server.wait_log(r"master ready(?s:.*)master ready")
        assert uwsgi_request(server.socket, "/").status == 200
        assert server.stop() == 0
    finally:
        filler.close()
        deaf.close()


@pytest.mark.process
def test_emperor_is_the_service_and_its_vassals_do_not_notify(
    emperor: StartEmperor, systemd: Systemd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vassals = tmp_path / "vassals"
    vassals.mkdir()
    sock = tmp_path / "one.sock"
    (vassals / "one.ini").write_text(f"[uwsgi]\nsocket = {sock}\nwsgi-file = {APP}\nprocesses = 1\n")
    monkeypatch.setenv("NOTIFY_SOCKET", str(systemd.path))
    process = emperor(vassals)
    pid, ready = systemd.next_state()
    assert pid == process.pid and ready["READY"] == "1", ready
    assert ready["STATUS"] == "1 vassals, 1 running", ready
    assert seen(sock)["worker"] == NO_VARIABLES
    process.proc.send_signal(signal.SIGTERM)
    pid, stopping = systemd.next_state()
    assert pid == process.pid and stopping["STOPPING"] == "1", stopping
    assert process.proc.wait(20) == 0


# -- socket activation -----------------------------------------------------------------------------
LAUNCHER = """
import os, socket, sys
# argv: NAME=ADDRESS ... -- COMMAND...; ADDRESS: a unix path, HOST:PORT, dgram:PATH, file:PATH
# or pair: (one end of a connected pair, as Accept=yes would pass a connection)
split = sys.argv.index("--")
fds, names = [], []
for item in sys.argv[1:split]:
    name, _, address = item.partition("=")
    if address.startswith("file:"):
        fd = os.open(address[5:], os.O_RDONLY | os.O_CREAT)
    elif address == "pair:":
        fd = socket.socketpair()[0].detach()
    elif address.startswith("dgram:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(address[6:])
        fd = sock.detach()
    else:
        host, _, port = address.rpartition(":")
        if host:
            sock = socket.socket(socket.AF_INET)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, int(port)))
        else:
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(address)
        sock.listen(16)
        fd = sock.detach()
    fds.append(fd)
    names.append(name)
# As systemd: descriptors 3, 4, ... in order, LISTEN_PID the pid that executes the service.
for number, fd in enumerate(fds, 3):
    os.dup2(fd, number + 100)
for number in range(len(fds)):
    os.dup2(number + 103, number + 3)
    os.close(number + 103)
os.environ.update(LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=":".join(names), LISTEN_PID=str(os.getpid()))
os.execv(sys.argv[split + 1], sys.argv[split + 1:])
"""


def launch(tmp_path: Path, passed: list[str], *args: str, pid: str = "") -> Process:
    """binserve executed by the launcher, which passes ``passed`` (NAME=ADDRESS each)."""
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER if not pid else LAUNCHER.replace("str(os.getpid())", repr(pid)))
    argv = [sys.executable, str(launcher), *passed, "--", sys.executable, "-m", "binserve", *args]
    return Process(argv, tmp_path / f"launched-{time.monotonic_ns()}.log", cwd=tmp_path)


def failure(process: Process) -> str:
    """The log of a binserve that must refuse to start (exit code 2)."""
    assert process.proc.wait(30) == 2, process.log()
    return process.log()


@pytest.mark.process
def test_passed_sockets_without_socket_options_are_all_served(tmp_path: Path) -> None:
    port = free_port()
    unix = tmp_path / "passed.sock"
    stats = tmp_path / "stats.sock"
    options = ["--wsgi-file", str(APP), "--chmod-socket", "666", "--listen", "5", "--stats", str(stats)]
    process = launch(tmp_path, [f"app={unix}", f"tcp=127.0.0.1:{port}"], *options)
    try:
        wait_for(lambda: process.check_running() or unix.exists(), 20, "the passed socket")
        answer = seen(unix)
        assert answer["import"] == answer["worker"] == answer["child"] == NO_VARIABLES, answer
        assert seen(f"127.0.0.1:{port}")["worker"] == NO_VARIABLES
        # The launcher's (systemd's) mode and backlog stand: chmod-socket and listen are for sockets
        # binserve binds.
        assert unix.stat().st_mode & 0o777 != 0o666
        process.wait_log("chmod-socket and chown-socket ignored for the sockets systemd passed")
        limits = {entry["name"]: entry["max_queue"] for entry in read_stats(stats)["sockets"]}
        assert limits == {str(unix): 16, f"127.0.0.1:{port}": 16}, limits
    finally:
        assert process.stop() == 0
    assert unix.exists(), "binserve removed the socket file systemd owns"


@pytest.mark.process
def test_socket_options_take_their_passed_socket_and_bind_the_rest(tmp_path: Path) -> None:
    passed, bound, port = tmp_path / "passed.sock", tmp_path / "bound.sock", free_port()
    options = ["--wsgi-file", str(APP), "--socket", str(bound), "--socket", "passed.sock"]
    options += ["--socket", f"127.0.0.1:{port}"]
    process = launch(tmp_path, [f"app={passed}", f"tcp=127.0.0.1:{port}"], *options)
    try:
        wait_for(lambda: process.check_running() or bound.exists(), 20, "the bound socket")
        assert uwsgi_request(passed, "/").status == 200
        assert uwsgi_request(bound, "/").status == 200
        assert uwsgi_request(f"127.0.0.1:{port}", "/").status == 200
        first = seen(passed)["pid"]
        process.proc.send_signal(signal.SIGHUP)  # the new image finds each socket under its option
        wait_for(lambda: process.log().count("master ready") == 2, 20, "the reload")
        old_workers_gone(process, 1)
        assert seen(passed)["pid"] != first
        assert uwsgi_request(f"127.0.0.1:{port}", "/").status == 200
        assert "cannot bind" not in process.log(), process.log()
    finally:
        assert process.stop() == 0
    assert passed.exists() and not bound.exists(), "vacuum is for the socket binserve bound, not systemd's"


@pytest.mark.process
def test_a_passed_socket_no_option_names_is_refused(tmp_path: Path) -> None:
    port = free_port()
    process = launch(
        tmp_path, [f"app={tmp_path / 'a.sock'}", f"extra=127.0.0.1:{port}"], "--wsgi-file", str(APP),
        "--socket", "a.sock",
    )  # fmt: skip
    said = failure(process)
    assert f"systemd passed 127.0.0.1:{port}, which no socket option names" in said, said


@pytest.mark.process
@pytest.mark.parametrize(
    ("address", "complaint"),
    [
        ("file:notes.txt", "descriptor 3 (bad) is a regular file, not a socket"),
        ("dgram:dgram.sock", "descriptor 3 (bad) is a SOCK_DGRAM socket: uwsgi needs a stream socket"),
        ("pair:", "descriptor 3 (bad) is not a listening socket (a connection, as Accept=yes passes"),
    ],
)
def test_a_passed_descriptor_binserve_cannot_serve_is_a_startup_error(
    tmp_path: Path, address: str, complaint: str
) -> None:
    said = failure(launch(tmp_path, [f"bad={address}"], "--wsgi-file", str(APP)))
    assert complaint in said, said


@pytest.mark.process
@pytest.mark.parametrize(
    ("variables", "complaint"),
    [
        (
            "LISTEN_FDS=\u00b2 LISTEN_PID=$$",
            "socket activation: LISTEN_FDS='\u00b2' is not a number of sockets",
        ),
        ("LISTEN_FDS=1 LISTEN_PID=\u00b2", "no socket given"),  # not this process's: ignored
        ("LISTEN_FDS=0 LISTEN_PID=$$ LISTEN_FDNAMES=", "no socket given"),
        (
            "LISTEN_FDS=1 LISTEN_PID=$$ LISTEN_FDNAMES='a\nb'",
            r"descriptor 3 (a\x0ab) is a device, not a socket",
        ),
    ],
)
def test_odd_activation_variables_are_a_clear_startup_error(
    tmp_path: Path, variables: str, complaint: str
) -> None:
    """Written by hand or by a launcher with bugs: one line that says what is wrong, no traceback."""
    shell = f'export {variables}; exec "$@" 3</dev/null'
    argv = ["sh", "-c", shell, "sh", sys.executable, "-m", "binserve", "--wsgi-file", str(APP)]
    said = failure(Process(argv, tmp_path / "launched.log", cwd=tmp_path))
    assert complaint in said and "Traceback" not in said, said


@pytest.mark.process
def test_sockets_passed_to_another_pid_are_not_taken(tmp_path: Path) -> None:
    said = failure(launch(tmp_path, [f"app={tmp_path / 'a.sock'}"], "--wsgi-file", str(APP), pid="1"))
    assert "no socket given" in said, said


@pytest.mark.process
def test_a_passed_tcp_socket_answers_only_the_allowed_peers(tmp_path: Path) -> None:
    port = free_port()
    process = launch(
        tmp_path, [f"tcp=127.0.0.1:{port}"], "--wsgi-file", str(APP), "--uwsgi-allow-from", "10.0.0.0/8"
    )
    try:
        process.wait_log(r"master ready")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            assert conn.recv(1) == b"", "a peer outside uwsgi-allow-from was answered"
        refusal = rf"refused a connection from 127\.0\.0\.1 on 127\.0\.0\.1:{port}: not in uwsgi-allow-from"
        process.wait_log(refusal)
    finally:
        assert process.stop() == 0


# -- the units in nginx_conf/ ------------------------------------------------------------------------
def unit(path: Path) -> configparser.ConfigParser:
    """A unit file's sections (systemd's syntax is ini enough for the keys read here)."""
    parsed = configparser.ConfigParser(interpolation=None, strict=False)
    parsed.optionxform = str  # type: ignore[assignment,method-assign]
    parsed.read(path)
    return parsed


def test_service_is_type_notify_running_binserve_on_the_ini() -> None:
    service = unit(CONF_DIR / "binserve.service")
    assert service["Service"]["Type"] == "notify"
    assert service["Unit"]["Requires"] == "binserve.socket"
    assert service["Service"]["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Service"]["KillSignal"] == "SIGTERM"
    argv = shlex.split(service["Service"]["ExecStart"])
    assert argv[0].endswith("/binserve") and argv[1:] == ["--ini", "/etc/binserve/app.ini"], argv
    config = load(["--worker-reload-mercy", "60"], {})  # the default mercy, which the unit relies on
    assert int(service["Service"]["TimeoutStopSec"]) > config.worker_reload_mercy


def test_socket_listens_where_the_nginx_site_passes_requests() -> None:
    listen = unit(CONF_DIR / "binserve.socket")["Socket"]["ListenStream"]
    readme = (CONF_DIR / "README.md").read_text()
    assert f"APP_SOCKET={listen} " in readme, "nginx_conf/README.md fills APP_SOCKET with another path"
    assert "uwsgi_pass unix:${APP_SOCKET};" in (CONF_DIR / "site.conf.template").read_text()


def installed_units(directory: Path, socket_path: Path, ini: Path) -> tuple[Path, Path]:
    """The shipped units as they would run here: this binserve, ``ini``, ``socket_path``."""
    directory.mkdir()
    service = (CONF_DIR / "binserve.service").read_text()
    service = service.replace("/usr/local/bin/binserve", BINSERVE).replace("/etc/binserve/app.ini", str(ini))
    socket_unit = (CONF_DIR / "binserve.socket").read_text()
    socket_unit = socket_unit.replace("/run/binserve/app.sock", str(socket_path))
    (directory / "binserve.service").write_text(service)
    (directory / "binserve.socket").write_text(socket_unit)
    return directory / "binserve.service", directory / "binserve.socket"


@pytest.mark.process
def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    units = installed_units(tmp_path / "units", tmp_path / "app.sock", tmp_path / "app.ini")
    emperor = tmp_path / "units" / "binserve-emperor.service"
    emperor.write_text((CONF_DIR / emperor.name).read_text().replace("/usr/local/bin/binserve", BINSERVE))
    checked = [*map(str, units), str(emperor)]
    done = subprocess.run([ANALYZE, "verify", *checked], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stdout + done.stderr
    broken = units[0].read_text().replace("Type=notify", "Type=notfy")
    units[0].write_text(broken)
    done = subprocess.run([ANALYZE, "verify", *checked], capture_output=True, text=True, timeout=60)
    assert "Failed to parse service type" in done.stderr, "the check above cannot fail"


@pytest.mark.nginx
def test_units_serve_through_the_nginx_site_with_systemd_socket_activate(
    systemd: Systemd, tmp_path: Path
) -> None:
    """The service's command line under systemd's own activation tool, nginx's site in front."""
    app_socket = tmp_path / "app.sock"
    ini = tmp_path / "app.ini"
    ini.write_text(f"[uwsgi]\nwsgi-file = {APP}\nprocesses = 2\n")
    service_path, socket_path = installed_units(tmp_path / "units", app_socket, ini)
    service = unit(service_path)["Service"]
    listen = unit(socket_path)["Socket"]["ListenStream"]
    argv = [ACTIVATE, "--listen", listen, "--fdname=app", "--setenv", f"NOTIFY_SOCKET={systemd.path}"]
    process = Process([*argv, *shlex.split(service["ExecStart"])], tmp_path / "activated.log", cwd=tmp_path)
    front: Nginx | None = None
    try:
        wait_for(lambda: process.check_running() or app_socket.exists(), 20, "systemd-socket-activate")
        port = free_port()
        site = string.Template((CONF_DIR / "site.conf.template").read_text()).safe_substitute(
            LISTEN=f"127.0.0.1:{port}", SERVER_NAME="_", STATIC_ROOT=str(tmp_path), APP_SOCKET=listen,
            UWSGI_PARAMS=str(CONF_DIR / "uwsgi_params"),
        )  # fmt: skip
        (tmp_path / "nginx").mkdir()
        (tmp_path / "nginx" / "site.conf").write_text(site)
        conf = tmp_path / "nginx" / "nginx.conf"
        conf.write_text(nginx_conf(conf.parent, f"include {conf.parent / 'site.conf'};"))
        front = Nginx(conf, port)
        assert Path(cmdline(process.pid)[0]).name == "systemd-socket-activate", "started before a connection"
        # The first connection starts binserve (systemd-socket-activate waits for it), and waits
        # in the backlog meanwhile.
        status, _, body = front.request("GET", "/")
        assert status == 200, (body, process.log())
        first = json.loads(body)
        assert first["worker"] == NO_VARIABLES, first
        pid, ready = systemd.next_state()
        assert ready["READY"] == "1" and pid == process.pid, ready

        process.proc.send_signal(signal.SIGHUP)
        assert "RELOADING" in systemd.next_state()[1]
        assert "READY" in systemd.next_state()[1]
        old_workers_gone(process, 2)
        status, _, body = front.request("GET", "/")
        assert status == 200 and json.loads(body)["pid"] != first["pid"], (body, process.log())
        process.proc.send_signal(signal.SIGTERM)
        assert "STOPPING" in systemd.next_state()[1]
        assert process.proc.wait(20) == 0, process.log()
    finally:
        process.stop()
        if front is not None:
            front.stop()
    assert app_socket.exists(), "binserve removed the socket file of the .socket unit"

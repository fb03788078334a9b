"""Real binserve, nginx and emperor processes for tests, always stopped.

Every process runs in its own session with its output in a log file; readiness is polled (a
uwsgi ping for binserve, a listening port for nginx), and ``stop`` escalates from a signal to
SIGKILL on the whole process group, then checks nothing of the group is left.
"""

from __future__ import annotations

import glob
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import psutil

from binserve.testing.client import Address, Headers, Response, ping, request

# Taken once: a test may point sys.executable at a wrapper, the tools stay next to the interpreter.
BIN_DIR = Path(sys.executable).parent
DEBIAN_NGINX = Path("/usr/sbin/nginx")


def executable(name: str) -> str:
    """The program ``name`` installed next to this interpreter (``binserve``, ``binserve-top``...).

    Never PATH: the tools of this environment are the ones installed with the code under test.
    """
    path = BIN_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"{name} is not installed next to {sys.executable}: pip install it there")
    return str(path)


def nginx_executable() -> str:
    """Debian's nginx, else one installed next to this interpreter."""
    if DEBIAN_NGINX.exists():
        return str(DEBIAN_NGINX)
    if (BIN_DIR / "nginx").exists():
        return str(BIN_DIR / "nginx")
    raise FileNotFoundError(f"this test needs nginx at {DEBIAN_NGINX}: apt-get install nginx")


def uwsgi_params() -> Path:
    """binserve's uwsgi_params (nginx's list, annotated), shipped as package data."""
    return Path(str(resources.files("binserve.nginx_conf") / "uwsgi_params"))


def running(fragment: str) -> list[str]:
    """``PID command line`` of every process whose command line contains ``fragment`` (what
    ``pgrep -af`` prints, read from /proc by psutil so no procps is needed)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        line = " ".join(proc.info["cmdline"] or ())
        if fragment in line and proc.info["pid"] != os.getpid():
            found.append(f"{proc.info['pid']} {line}")
    return found


def wait_for(condition: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    """Poll ``condition`` every 20 ms until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def alive(pid: int | None) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper counts as dead; None never runs)."""
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def children(pid: int | None, zombies: bool = False) -> set[int]:
    """The child pids of ``pid`` (a master's workers, an emperor's vassals); zombies only if asked."""
    if pid is None:
        return set()
    found: set[int] = set()
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(path) as handle:
                found |= {int(p) for p in handle.read().split()}
        except FileNotFoundError:
            pass  # the thread or the process has exited
    return found if zombies else {p for p in found if alive(p)}


def cmdline(pid: int) -> list[str]:
    """The argv of ``pid``."""
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        return handle.read().decode().split("\0")[:-1]


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is left."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def touch_ahead(path: Path, ahead: float = 5.0) -> None:
    """Set ``path``'s mtime ``ahead`` seconds in the future: a change whatever the timestamp granularity."""
    later = time.time() + ahead
    os.utime(path, (later, later))


def run_binserve(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """``python -m binserve *args`` to its end, output captured; no BINSERVE_* variable leaks in."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BINSERVE_")}
    full_env.update(env or {})
    command = [sys.executable, "-m", "binserve", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=full_env)


class Process:
    """``argv`` in a new session (its pid is the group's id), stdout and stderr in ``log_path``."""

    grace = 15.0  # seconds between the stop signal and SIGKILL

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdin: int | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.args = list(argv)
        self.log_path = log_path
        self.stop_signal = stop_signal
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            self.args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=stdin,
            start_new_session=True,
            env=None if env is None else {**os.environ, **env},
            cwd=cwd,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        """Everything the process has written so far."""
        return self.log_path.read_text(errors="replace")

    def check_running(self, what: str = "") -> None:
        """Fail, with the log, if the process has exited."""
        if self.proc.poll() is not None:
            name = what or Path(self.args[0]).name
            raise AssertionError(f"{name} exited with {self.proc.returncode}:\n{self.log()}")

    def wait_log(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """Poll the log until ``pattern`` (a regex) matches; fail with the log at the timeout."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            match = re.search(pattern, self.log(), re.MULTILINE)
            if match:
                found.append(match)
            return bool(match)

        try:
            wait_for(seen, timeout, f"{pattern!r} in {self.log_path.name}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- log ---\n{self.log()}") from None
        return found[0]

    def stop(self, grace: float | None = None) -> int | None:
        """The stop signal, ``grace`` seconds (default ``self.grace``), then SIGKILL to the group; idempotent.

        Returns the exit status the process had before any SIGKILL (None: it had to be killed).
        """
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(self.stop_signal)
                try:
                    self.proc.wait(self.grace if grace is None else grace)
                except subprocess.TimeoutExpired:
                    pass
            code = self.proc.poll()
            if group_alive(self.pid):
                os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait(10)
            wait_for(lambda: not group_alive(self.pid), 10, f"process group {self.pid} to die")
            return code
        finally:
            self._log.close()


class Server(Process):
    """``python -m binserve --socket SOCKET *args`` run in ``tmp_path``; ready once it answers a ping."""

    def __init__(
        self,
        tmp_path: Path,
        args: Sequence[str],
        socket_path: Path | None = None,
        env: dict[str, str] | None = None,
        ready: bool = True,
        cwd: Path | None = None,
    ) -> None:
        self.tmp_path = tmp_path
        self.socket = socket_path or tmp_path / "app.sock"
        argv = [sys.executable, "-m", "binserve", "--socket", str(self.socket), *args]
        super().__init__(argv, tmp_path / f"binserve-{time.monotonic_ns()}.log", env, cwd or tmp_path)
        if ready:
            self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Poll until the socket answers a ping (fail with the log if the process died)."""

        def up() -> bool:
            self.check_running("binserve")
            return ping(self.socket)

        wait_for(up, timeout, f"binserve on {self.socket}")

    def wait_workers(self, count: int, timeout: float = 10.0) -> set[int]:
        """The worker pids once all ``count`` are forked (a ping answers as soon as the first one is)."""
        wait_for(lambda: len(self.worker_pids()) == count, timeout, f"{count} workers")
        return self.worker_pids()

    def worker_pids(self) -> set[int]:
        """Pids of the master's current children (exited ones not yet reaped included)."""
        return children(self.pid, zombies=True)

    def request(
        self, path: str = "/", method: str = "GET", headers: Headers = (), body: bytes = b""
    ) -> Response:
        """One request straight to the uwsgi socket (no nginx), as nginx would pass it."""
        return request(self.socket, path, method, headers, body)


NGINX_MAIN = """
worker_processes 1;
daemon off;
{user}
pid {dir}/nginx.pid;
error_log {dir}/nginx_error.log info;
events {{ worker_connections 1024; }}
http {{
  access_log {dir}/nginx_access.log;
  client_body_temp_path {dir}/client_body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  {http}
}}
"""


def nginx_conf(directory: Path, http: str) -> str:
    """A whole nginx.conf around the ``http`` block's directives; nginx writes only in ``directory``."""
    user = "user root;" if os.geteuid() == 0 else ""  # else the workers, as nobody, cannot reach the socket
    return NGINX_MAIN.format(user=user, dir=directory, http=http)


def location(socket_path: Address, prefix: str = "/", extra: str = "") -> str:
    """An nginx location passing ``prefix`` to binserve with binserve's uwsgi_params."""
    return f"location {prefix} {{ include {uwsgi_params()}; {extra} uwsgi_pass unix:{socket_path}; }}"


class Nginx(Process):
    """A real nginx running config file ``conf`` that listens on 127.0.0.1:``port``."""

    grace = 10.0

    def __init__(self, conf: Path, port: int) -> None:
        self.dir = conf.parent
        self.conf = conf
        self.port = port
        super().__init__([nginx_executable(), "-c", str(conf), "-p", str(self.dir)], self.dir / "stderr.log")

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited: {self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            except OSError:
                return False
            return True

        wait_for(up, 15, "nginx to listen")

    @classmethod
    def in_front(cls, tmp_path: Path, locations: str | Server) -> Nginx:
        """nginx on a free port with these ``location`` blocks (or one passing / to a Server)."""
        if isinstance(locations, Server):
            locations = location(locations.socket)
        directory = tmp_path / f"nginx-{time.monotonic_ns()}"
        directory.mkdir()
        port = free_port()
        conf = directory / "nginx.conf"
        server = f"server {{ listen 127.0.0.1:{port}; {locations} }}"
        conf.write_text(nginx_conf(directory, f"client_max_body_size 64m;\n  {server}"))
        return cls(conf, port)

    def error_log(self) -> str:
        """nginx's error log so far."""
        path = self.dir / "nginx_error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Headers | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP/1.1 request through nginx; returns status, headers (lower-case names) and body."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            items = list(headers.items() if isinstance(headers, Mapping) else (headers or []))
            # A Host given by the test replaces http.client's own: nginx refuses two.
            own_host = any(name.lower() == "host" for name, _ in items)
            conn.putrequest(method, path, skip_host=own_host, skip_accept_encoding=True)
            for name, value in items:
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def burst(
        self, count: int, path: str = "/", concurrency: int = 4
    ) -> list[tuple[int, dict[str, str], bytes]]:
        """``count`` GETs of ``path`` from ``concurrency`` client threads at once; the answers in order."""
        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(lambda _: self.request("GET", path), range(count)))


@contextmanager
def answers_in_background(front: Nginx, path: str = "/") -> Iterator[list[tuple[int, bytes]]]:
    """A client thread sending GETs through nginx in a loop; yields the (status, body) it got so far."""
    answers: list[tuple[int, bytes]] = []
    done = threading.Event()

    def loop() -> None:
        while not done.is_set():
            try:
                status, _, body = front.request("GET", path, timeout=10)
            except OSError as exc:
                status, body = -1, repr(exc).encode()  # a connection failure counts as a failed request
            answers.append((status, body))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield answers
    finally:
        done.set()
        thread.join(15)

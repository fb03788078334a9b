"""Starting real binserve and nginx processes for tests, and always stopping them.

Every process logs to a file in the test's tmp_path, readiness is polled (a uwsgi ping for
binserve, an HTTP answer for nginx), and teardown escalates SIGTERM -> SIGKILL on the
whole process group, then checks nothing of the group is left.
"""

from __future__ import annotations

import http.client
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack

from binserve.protocol import PING, PONG

REPO = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
UWSGI_PARAMS = REPO / "nginx_conf" / "uwsgi_params"


def wait_for(condition: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    """Poll ``condition`` every 20 ms until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def ping(address: str | Path, timeout: float = 1.0) -> bool:
    """Whether a uwsgi server answers a ping at a unix path or HOST:PORT."""
    try:
        if isinstance(address, Path) or "/" in address:
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(timeout)
            sock.connect(str(address))
        else:
            host, port = str(address).rsplit(":", 1)
            sock = socket.create_connection((host, int(port)), timeout=timeout)
        with sock:
            sock.sendall(PING)
            return sock.recv(4) == PONG
    except OSError:
        return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    if _group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    wait_for(lambda: not _group_alive(proc.pid), 10, f"process group {proc.pid} to die")


class Server:
    """A binserve process started with ``args``; its log is ``log_path``."""

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
        self.log_path = tmp_path / f"binserve-{time.monotonic_ns()}.log"
        self.args = [sys.executable, "-m", "binserve", "--socket", str(self.socket), *args]
        full_env = dict(os.environ)
        full_env.update(env or {})
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=full_env,
            cwd=cwd or tmp_path,
        )
        if ready:
            self.wait_ready()

    @property
    def pid(self) -> int:
        """The master's pid."""
        return self.proc.pid

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Poll until the socket answers a ping (fail with the log if the process died)."""

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"binserve exited with {self.proc.returncode}:\n{self.log()}")
            return ping(self.socket)

        wait_for(up, timeout, f"binserve on {self.socket}")

    def log(self) -> str:
        """Everything the server has logged so far."""
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> set[int]:
        """Pids of the master's current children."""
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as children:
                return {int(p) for p in children.read().split()}
        except FileNotFoundError:
            return set()  # the master has exited

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM, then SIGKILL of the whole group; idempotent."""
        try:
            _stop_group(self.proc, grace)
        finally:
            self._log.close()


NGINX_CONF = """
worker_processes 1;
daemon off;
{user}
pid {tmp}/nginx.pid;
error_log {tmp}/nginx_error.log info;
events {{ worker_connections 1024; }}
http {{
  access_log {tmp}/nginx_access.log;
  client_body_temp_path {tmp}/client_body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  client_max_body_size 64m;
  server {{
    listen 127.0.0.1:{port};
    {locations}
  }}
}}
"""


def location(socket_path: Path, prefix: str = "/", extra: str = "") -> str:
    """An nginx location passing ``prefix`` to binserve with binserve's uwsgi_params."""
    return f"location {prefix} {{ include {UWSGI_PARAMS}; {extra} uwsgi_pass unix:{socket_path}; }}"


class Nginx:
    """A real nginx in front of one or more uwsgi sockets, on a free 127.0.0.1 port."""

    def __init__(self, tmp_path: Path, locations: str) -> None:
        self.dir = tmp_path / f"nginx-{time.monotonic_ns()}"
        self.dir.mkdir()
        self.port = free_port()
        user = "user root;" if os.geteuid() == 0 else ""
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(NGINX_CONF.format(user=user, tmp=self.dir, port=self.port, locations=locations))
        self._log = open(self.dir / "stderr.log", "ab")
        self.proc = subprocess.Popen(
            [NGINX, "-c", str(self.conf), "-p", str(self.dir)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited: {self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                return False
            return True

        wait_for(up, 15, "nginx to listen")

    def error_log(self) -> str:
        """nginx's error log so far."""
        path = self.dir / "nginx_error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | list[tuple[str, str]] | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP/1.1 request through nginx; returns status, headers (lower-case names) and body."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            items = headers.items() if isinstance(headers, dict) else (headers or [])
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

    def stop(self) -> None:
        """Stop nginx and its workers."""
        try:
            _stop_group(self.proc, 10)
        finally:
            self._log.close()


def touch_ahead(path: Path, ahead: float = 5.0) -> None:
    """Set ``path``'s mtime ``ahead`` seconds in the future: a change whatever the timestamp granularity."""
    later = time.time() + ahead
    os.utime(path, (later, later))


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


# Runs a command in a private mount namespace where the test's interpreter is reachable by
# other users: a 0755 tmpfs over each directory they may not traverse (/root is 0700, and
# pyenv or a clone with its .venv may live below it), with just the needed subtrees bound back
# into it. Nothing outside the namespace changes.
REACHABLE_NS = """
set -e
stage=$1 keeps=$2
shift 2
IFS='
'
n=0
for keep in $keeps; do n=$((n + 1)); mkdir "$stage/$n"; mount --bind "$keep" "$stage/$n"; done
n=0 covered=
for keep in $keeps; do
    n=$((n + 1)) blocked=$(dirname "$keep")
    case "$covered" in *"|$blocked|"*) ;; *)
        mount -t tmpfs -o mode=755 binserve-test "$blocked"; covered="$covered|$blocked|";;
    esac
    mkdir "$keep"
    mount --bind "$stage/$n" "$keep"
done
exec "$@"
"""


def unreachable_ancestor(path: str) -> Path | None:
    """The first directory on the way to ``path`` that others may not traverse."""
    real = Path(os.path.realpath(path))
    for parent in reversed(real.parents):
        if not parent.stat().st_mode & stat.S_IXOTH:
            return parent
    return None


def reachable_prefix(tmp_path: Path) -> list[str]:
    """A command prefix under which an unprivileged user can run ``sys.executable`` ([] if it already can).

    Reachable means the virtualenv, the interpreter it was made from and this checkout (the
    editable install imports binserve from it).
    """
    keeps: set[Path] = set()
    for needed in (sys.prefix, sys.base_prefix, sys.executable, str(REPO)):
        real = Path(os.path.realpath(needed))
        blocked = unreachable_ancestor(str(real))
        if blocked is not None:
            keeps.add(blocked / real.relative_to(blocked).parts[0])
    if not keeps:
        return []
    stage = tmp_path / "stage"
    stage.mkdir(exist_ok=True)
    shell = ["sh", "-c", REACHABLE_NS, "sh", str(stage), "\n".join(sorted(map(str, keeps)))]
    return ["unshare", "--mount", "--propagation", "private", *shell]


def read_stats(path: Path) -> dict[str, Any]:
    """One msgpack stats document, read as any client would: connect, read to EOF, decode."""
    chunks = []
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    document: dict[str, Any] = msgpack.unpackb(b"".join(chunks))
    return document


def as_user(user: pwd.struct_passwd, action: Callable[[], object]) -> str:
    """Run ``action`` in a forked child that became ``user`` with its groups (as nginx's workers do).

    Returns what ``action`` returned as text ("ok" for None), or the exception it raised.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        message = "the child did not finish"
        try:
            os.close(read_end)
            os.initgroups(user.pw_name, user.pw_gid)
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            result = action()
            message = "ok" if result is None else str(result)
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
        finally:
            os.write(write_end, message.encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    os.waitpid(pid, 0)
    return answer


@contextmanager
def system_users(*names: str) -> Iterator[list[pwd.struct_passwd]]:
    """System users without a home, created for a test and removed afterwards (tests run as root)."""
    assert os.geteuid() == 0, "users are created and switched to as root (as CI runs)"

    def remove() -> None:
        for name in names:
            subprocess.run(["userdel", name], capture_output=True)

    remove()  # left by an interrupted run
    try:
        for name in names:
            subprocess.run(["useradd", "-M", "-r", name], check=True, capture_output=True)
        yield [pwd.getpwnam(name) for name in names]
    finally:
        remove()

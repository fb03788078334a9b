"""Test helpers of this repository only: system users, an interpreter they can reach, and what
several test files share (the vassal and process apps' helpers).

Processes, the uwsgi client and the fixtures are binserve.testing's.
"""

from __future__ import annotations

import os
import pwd
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from binserve.config import ConfigError, load
from binserve.testing import Nginx, Serve, Server, exchange, parse_response, request_packet, wait_for

REPO = Path(__file__).resolve().parent.parent
APPS = REPO / "tests" / "apps"  # the WSGI apps the tests serve

# uWSGI's default request line, field by field as uWSGI writes it:
# [pid: %d|app: %d|req: %d/%llu] %s (%s) {%d vars in %llu bytes} [%.24s] %s %s => generated %llu
# bytes in %llu %s%s(%s %d) %d headers in %llu bytes (%d switches on core %d)
REQUEST_LINE = re.compile(
    r"^\[pid: (?P<pid>\d+)\|app: (?P<app>-?\d+)\|req: (?P<app_req>-?\d+)/(?P<req>\d+)\] "
    r"(?P<addr>\S*) \((?P<user>[^)]*)\) \{(?P<vars>\d+) vars in (?P<pktsize>\d+) bytes\} "
    r"\[(?P<ctime>\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4})\] (?P<method>\S*) (?P<uri>.*?) "
    r"=> generated (?P<rsize>\d+) bytes in (?P<time>\d+) (?P<unit>msecs|micros)"
    r"(?: | via sendfile\(\) )\((?P<proto>\S*) (?P<status>\d+)\) "
    r"(?P<headers>\d+) headers in (?P<hsize>\d+) bytes \((?P<switches>\d+) switches on core (?P<core>\d+)\)$",
    re.M,
)


def logged(log: str, method: str, uri: str, status: int) -> bool:
    """Whether ``log`` holds a default request line for ``method uri`` answered ``status``."""
    return any(
        (m["method"], m["uri"], m["status"]) == (method, uri, str(status)) for m in REQUEST_LINE.finditer(log)
    )


AppFile = Callable[..., Path]  # the app_file fixture
BehindNginx = Callable[..., tuple[Server, Nginx]]  # the behind_nginx fixture

# The account the privilege tests drop to, and the app it serves (the reload tests use them too).
USER, EXTRA_GROUP = "binserve-p1", "binserve-p1x"
PRIVILEGES_APP = (APPS / "privileges_app.py").read_text()


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


def config_error(argv: list[str], environ: dict[str, str] | None = None) -> str:
    """The ConfigError message ``load`` raises for these inputs."""
    with pytest.raises(ConfigError) as caught:
        load(argv, environ or {})
    return str(caught.value)


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


def write_vassal(
    directory: Path, name: str, sock: Path, app: Path, processes: int | str = 2, extra: str = ""
) -> Path:
    """A vassal file ``name.ini`` serving ``app`` on ``sock``; the app reports ``VASSAL=name``."""
    path = directory / f"{name}.ini"
    path.write_text(
        "[uwsgi]\n"
        f"socket = {sock}\n"
        f"wsgi-file = {app}\n"
        f"processes = {processes}\n"
        f"env = VASSAL={name}\n"
        "disable-logging = true\n"
        f"{extra}"
    )
    return path


def good_vassal(vassal_dir: Path, app: Path) -> Path:
    """A well-formed vassal ``good`` beside the bad files a test writes; its socket, beside vassal_dir."""
    sock = vassal_dir.parent / "good.sock"
    write_vassal(vassal_dir, "good", sock, app)
    return sock


def get(sock: Path, path: str = "/", query: str = "", timeout: float = 10.0) -> tuple[int, str]:
    """One GET straight to a vassal's socket over the uwsgi protocol: (status, body); (0, "") on error."""
    try:
        status, body = get_bytes(sock, path, query, timeout)
    except (OSError, AssertionError):
        return 0, ""
    return status, body.decode()


# -- the process app (tests/apps/process_app.py): it records each call in ``calls`` next to it --
PROCESS_APP = (APPS / "process_app.py").read_text()
SLOW_BODY = b"".join(b"%05d" % i for i in range(20000))


def get_bytes(address: str | Path, path: str, query: str = "", timeout: float = 10.0) -> tuple[int, bytes]:
    """A GET straight over the uwsgi protocol: (status, body); (0, b"") when closed unanswered
    (a worker killed in the request, a refused peer: the close may come as a reset)."""
    packet = request_packet(f"{path}?{query}" if query else path)
    return status_body(exchange(address, packet, timeout, reset_ends=True))


def status_body(raw: bytes) -> tuple[int, bytes]:
    """Status and body of a raw HTTP/1.x response (status 0 when nothing came back)."""
    if not raw:
        return 0, b""
    reply = parse_response(raw)
    return reply.status, reply.body


def calls(tmp_path: Path) -> list[str]:
    """The paths the app has been called with, in order."""
    path = tmp_path / "calls"
    return [line.split(" ", 1)[1] for line in path.read_text().splitlines()] if path.exists() else []


def group_processes(pgid: int) -> str:
    """pgrep's listing of the processes still in a process group ("" when none)."""
    return subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.strip()


def start_slow(pool: ThreadPoolExecutor, tmp_path: Path, fetch: Callable[[], tuple[int, bytes]]) -> Future:
    """Start a slow request in a thread and wait until the app is running it."""
    before = calls(tmp_path).count("/slow")
    future = pool.submit(fetch)
    wait_for(lambda: calls(tmp_path).count("/slow") > before, 10, "the slow request to reach the app")
    return future


def serve_busy(
    serve: Serve, app: Path, tmp_path: Path, pool: ThreadPoolExecutor, *args: str
) -> tuple[Server, int, Future]:
    """binserve serving the process app with one worker, that worker 30 seconds into a request."""
    server = serve("--wsgi-file", str(app), *args)
    (worker,) = server.wait_workers(1)
    slow = start_slow(pool, tmp_path, lambda: get_bytes(server.socket, "/slow", "30", timeout=40))
    return server, worker, slow


def stop_cleanly(server: Server) -> None:
    """SIGTERM the master: it must exit 0 (the log says why not)."""
    os.kill(server.pid, signal.SIGTERM)
    assert server.proc.wait(10) == 0, server.log()


def log_lines(server: Server, text: str) -> list[str]:
    """The lines of the server's log that contain ``text``."""
    return [line for line in server.log().splitlines() if text in line]


# The app lowers its own process limit: the next fork fails (the reload and replacement tests).
LIMITED = (APPS / "attack_runtime_limited.py").read_text()


def serve_limited(serve: Serve, where: Path) -> tuple[Server, set[int]]:
    """binserve as USER (whose process limit the app lowers) from ``where``; its one worker once forked."""
    (where / "app.py").write_text(LIMITED)
    server = serve(
        "--wsgi-file", str(where / "app.py"), "--uid", USER, socket_path=where / "app.sock", cwd=where
    )
    return server, server.wait_workers(1)


TMUX = "/usr/bin/tmux"  # Debian's


class Tmux:
    """A private tmux server (its socket under the test's tmp_path) running one command detached."""

    def __init__(self, socket_path: Path, name: str) -> None:
        self.socket_path = socket_path
        self.name = name

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a tmux command against the private server."""
        # An explicit environment: GNU readline, once loaded in this process, puts LINES=24 and
        # COLUMNS=80 into the C-level environment (not os.environ); inherited by the tmux server,
        # they would make curses in the pane believe it is 80 columns wide.
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        command = [TMUX, "-S", str(self.socket_path), "-f", "/dev/null", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=10, env=env)

    def start(self, command: str, width: int, height: int) -> None:
        """Run ``command`` (a shell line) in a new session of ``width`` x ``height``."""
        result = self.run("new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height), command)
        assert result.returncode == 0, result.stderr

    def alive(self) -> bool:
        """Whether the session's command is still running."""
        return self.run("has-session", "-t", self.name).returncode == 0

    def screen(self) -> str:
        """The visible pane."""
        return self.run("capture-pane", "-p", "-t", self.name).stdout

    def keys(self, *keys: str) -> None:
        """Send keys (tmux key names such as Enter, Escape, Down)."""
        self.run("send-keys", "-t", self.name, *keys)

    def kill(self) -> None:
        """End the session and the private server."""
        self.run("kill-session", "-t", self.name)
        self.run("kill-server")

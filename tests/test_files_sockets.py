"""Files the master writes (pidfile, log, sockets) in directories a less privileged user controls.

Run as root with a created user owning the directory, as a deployment with the pidfile or the
log in the app user's directory would. The user plants links at the names binserve writes;
whatever binserve does, the root-owned file the link points at must stay as it was.
"""

from __future__ import annotations

import os
import pwd
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support import Server

USER = "binserve-fs1"
ROOTS = "root's file\n"
APP = """
def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"served"]
"""


# -- fixtures and helpers -----------------------------------------------------------------------------
@pytest.fixture
def account() -> Iterator[pwd.struct_passwd]:
    """A system user, removed afterwards."""
    assert os.geteuid() == 0, "file safety is tested as root (as CI runs)"
    subprocess.run(["userdel", USER], capture_output=True)
    subprocess.run(["useradd", "-M", "-r", USER], check=True, capture_output=True)
    try:
        yield pwd.getpwnam(USER)
    finally:
        subprocess.run(["userdel", USER], capture_output=True)


@pytest.fixture
def user_dir(account: pwd.struct_passwd) -> Iterator[Path]:
    """A directory the user owns and can reach (tmp_path's parents are closed to other users)."""
    base = Path(tempfile.mkdtemp(prefix="binserve-fs-"))
    base.chmod(0o755)
    os.chown(base, account.pw_uid, account.pw_gid)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """The WSGI app, in root's tmp_path."""
    path = tmp_path / "app.py"
    path.write_text(APP)
    return path


@pytest.fixture
def roots_file(tmp_path: Path) -> Path:
    """A file only root may write: what a planted link points at."""
    path = tmp_path / "roots-file"
    path.write_text(ROOTS)
    path.chmod(0o644)
    return path


def as_user(user: pwd.struct_passwd, action: Callable[[], object]) -> str:
    """Run ``action`` in a forked child that became ``user``; returns "ok" or the exception as text."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        message = "the child did not finish"
        try:
            os.close(read_end)
            os.setgid(user.pw_gid)
            os.setgroups([])
            os.setuid(user.pw_uid)
            action()
            message = "ok"
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


def plant(user: pwd.struct_passwd, kind: str, target: Path, name: Path) -> None:
    """The user puts a ``kind`` link at ``name`` pointing to root's ``target``.

    fs.protected_hardlinks (on by default) forbids a user to hard-link a file it cannot write:
    root makes that link then, standing for a user on a system without that protection.
    """
    if kind == "symlink":
        assert as_user(user, lambda: os.symlink(target, name)) == "ok"
        return
    if as_user(user, lambda: os.link(target, name)) != "ok":
        os.link(target, name)
    assert os.stat(name).st_nlink == 2


def lines(server: Server) -> list[str]:
    """The non-empty lines the server logged."""
    return [line for line in server.log().splitlines() if line.strip()]


# -- pidfile ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_a_link_planted_at_the_pidfile_is_replaced_not_written_through(
    account: pwd.struct_passwd,
    user_dir: Path,
    roots_file: Path,
    app: Path,
    serve: Callable[..., Server],
    kind: str,
) -> None:
    pidfile = user_dir / "app.pid"
    plant(account, kind, roots_file, pidfile)
    server = serve("--wsgi-file", str(app), "--pidfile", str(pidfile))
    assert not pidfile.is_symlink() and os.stat(pidfile).st_nlink == 1
    assert pidfile.read_text() == f"{server.pid}\n"
    assert roots_file.read_text() == ROOTS
    os.kill(server.pid, signal.SIGTERM)
    assert server.proc.wait(10) == 0
    assert not pidfile.exists() and roots_file.read_text() == ROOTS


def test_a_pidfile_that_could_not_be_replaced_is_left_alone(app: Path, tmp_path: Path) -> None:
    """A full disk, simulated by a file size limit of 0: the other server's pidfile stays intact."""
    pidfile = tmp_path / "app.pid"
    pidfile.write_text("4242\n")
    sock = tmp_path / "app.sock"

    def no_room() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))

    done = subprocess.run(
        [sys.executable, "-m", "binserve", "--socket", str(sock), "--wsgi-file", str(app)]
        + ["--pidfile", str(pidfile)],
        capture_output=True,
        text=True,
        timeout=20,
        preexec_fn=no_room,
    )
    assert done.returncode == 2, done.stderr
    assert f"pidfile {pidfile}: File too large" in done.stderr
    assert pidfile.read_text() == "4242\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.pid", "app.py"], "no temporary, no socket"


def test_a_pidfile_another_process_took_over_is_not_removed_at_exit(
    app: Path, tmp_path: Path, serve: Callable[..., Server]
) -> None:
    pidfile = tmp_path / "app.pid"
    server = serve("--wsgi-file", str(app), "--pidfile", str(pidfile))
    assert pidfile.read_text() == f"{server.pid}\n"
    pidfile.write_text("4242\n")
    os.kill(server.pid, signal.SIGTERM)
    assert server.proc.wait(10) == 0
    assert pidfile.read_text() == "4242\n"
    assert f"pidfile {pidfile} no longer holds pid {server.pid}: left alone" in server.log()


# -- logto ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind, why",
    [
        ("symlink", "is a symbolic link: refused"),
        ("hardlink", "has 2 hard links: refused"),
        ("fifo", "is a FIFO, not a regular file"),
    ],
)
def test_a_link_or_fifo_planted_at_the_log_is_refused_in_one_line(
    account: pwd.struct_passwd,
    user_dir: Path,
    roots_file: Path,
    app: Path,
    serve: Callable[..., Server],
    kind: str,
    why: str,
) -> None:
    logto = user_dir / "app.log"
    if kind == "fifo":
        assert as_user(account, lambda: os.mkfifo(logto)) == "ok"
    else:
        plant(account, kind, roots_file, logto)
    server = serve("--wsgi-file", str(app), "--logto", str(logto), ready=False)
    assert server.proc.wait(10) == 2
    assert len(lines(server)) == 1, server.log()
    assert lines(server)[0].startswith(f"binserve: logto {logto}: {why}"), server.log()
    assert roots_file.read_text() == ROOTS
    assert not server.socket.exists()

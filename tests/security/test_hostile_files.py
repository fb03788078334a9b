"""Files the master writes (pidfile, log, sockets) in directories a less privileged user controls.

Run as root with a created user owning the directory, as a deployment with the pidfile or the
log in the app user's directory would. The user plants links at the names binserve writes;
whatever binserve does, the root-owned file the link points at must stay as it was.
"""

from __future__ import annotations

import os
import pwd
import resource
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from binserve.privileges import Privileges
from binserve.testing import (
    Serve,
    Server,
    StartNginx,
    exchange,
    free_port,
    location,
    ping,
    read_stats,
    request_packet,
    wait_for,
)

from support import APPS, AppFile, as_user, stop_cleanly, system_users

USER = "binserve-fs1"
ROOTS = "root's file\n"
APP = (APPS / "files_sockets_app.py").read_text()


# -- fixtures and helpers -----------------------------------------------------------------------------
@pytest.fixture
def account() -> Iterator[pwd.struct_passwd]:
    """A system user, removed afterwards."""
    with system_users(USER) as (user,):
        yield user


@pytest.fixture
def user_dir(account: pwd.struct_passwd, open_dir: Path) -> Path:
    """A directory the user owns and can reach (tmp_path's parents are closed to other users)."""
    os.chown(open_dir, account.pw_uid, account.pw_gid)
    return open_dir


@pytest.fixture
def app(app_file: AppFile) -> Path:
    """The WSGI app, in root's tmp_path."""
    return app_file(APP, "app.py")


@pytest.fixture
def roots_file(tmp_path: Path) -> Path:
    """A file only root may write: what a planted link points at."""
    path = tmp_path / "roots-file"
    path.write_text(ROOTS)
    path.chmod(0o644)
    return path


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
    account: pwd.struct_passwd, user_dir: Path, roots_file: Path, app: Path, serve: Serve, kind: str
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


@pytest.mark.process
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
    app: Path, tmp_path: Path, serve: Serve
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
    account: pwd.struct_passwd, user_dir: Path, roots_file: Path, app: Path, serve: Serve, kind: str, why: str
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


# -- the stats socket -----------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["tcp", "unix"])
def test_a_stats_address_in_use_is_one_line_and_leaves_no_socket_or_pidfile(
    app: Path, tmp_path: Path, serve: Serve, where: str
) -> None:
    pidfile = tmp_path / "app.pid"
    holder = socket.socket(socket.AF_INET if where == "tcp" else socket.AF_UNIX)
    address = f"127.0.0.1:{free_port()}" if where == "tcp" else str(tmp_path / "stats.sock")
    with holder:
        holder.bind(("127.0.0.1", int(address.rsplit(":", 1)[1])) if where == "tcp" else address)
        holder.listen()
        server = serve("--wsgi-file", str(app), "--stats", address, "--pidfile", str(pidfile), ready=False)
        assert server.proc.wait(10) == 2
    why = "Address already in use" if where == "tcp" else "another server is already listening there"
    assert len(lines(server)) == 1, server.log()
    assert f"option 'stats': socket {address}: " in lines(server)[0] and why in lines(server)[0]
    assert not server.socket.exists() and not pidfile.exists()


def test_stats_in_a_root_only_directory_answer_after_a_reload_as_the_uid_user(
    account: pwd.struct_passwd, user_dir: Path, venv_interpreter: None, serve: Serve, tmp_path: Path
) -> None:
    """Bound as root before the drop, handed over on SIGHUP: the unprivileged image never binds it."""
    (user_dir / "app.py").write_text(APP)
    stats = tmp_path / "stats.sock"  # tmp_path is root's, closed to the user
    server = serve(
        "--wsgi-file",
        str(user_dir / "app.py"),
        "--uid",
        USER,
        "--stats",
        str(stats),
        socket_path=user_dir / "app.sock",
        cwd=user_dir,
    )
    before = read_stats(stats)
    assert (before["pid"], before["uid"]) == (server.pid, account.pw_uid)
    assert os.stat(stats).st_uid == 0, "bound by root, before the drop"
    inode = os.stat(stats).st_ino
    old = server.worker_pids()
    os.kill(server.pid, signal.SIGHUP)

    def replaced() -> bool:
        assert server.proc.poll() is None, server.log()
        return bool(server.worker_pids()) and not server.worker_pids() & old

    wait_for(replaced, 20, "the new image's worker")
    wait_for(lambda: server.log().count("master ready") == 2, 10, "the new image to be ready")
    after = read_stats(stats)
    assert (after["pid"], after["uid"]) == (server.pid, account.pw_uid)
    assert after["uptime"] < before["uptime"] + 20 and os.stat(stats).st_ino == inode
    assert "Traceback" not in server.log() and "the reload failed" not in server.log()
    stop_cleanly(server)


@pytest.mark.process
def test_an_emperor_stats_address_in_use_is_one_line(tmp_path: Path) -> None:
    vassals = tmp_path / "vassals"
    vassals.mkdir()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        address = f"127.0.0.1:{holder.getsockname()[1]}"
        done = subprocess.run(
            [sys.executable, "-m", "binserve", "--emperor", str(vassals), "--emperor-stats", address],
            capture_output=True,
            text=True,
            timeout=20,
        )
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert f"option 'emperor-stats': socket {address}: cannot bind: Address already in use" in done.stderr


# -- abstract sockets --------------------------------------------------------------------------------
def abstract_name(tmp_path: Path) -> str:
    """An abstract socket name no other test uses: the namespace is shared by the whole machine."""
    return f"@binserve-test-{os.getpid()}-{tmp_path.name}"


def test_an_abstract_socket_serves_and_makes_no_file_but_nginx_cannot_reach_it(
    account: pwd.struct_passwd, app: Path, tmp_path: Path, serve: Serve, nginx: StartNginx
) -> None:
    """nginx (1.22, and its source to date) takes ``unix:@name`` for a file name: no abstract sockets."""
    name = abstract_name(tmp_path)
    server = serve("--wsgi-file", str(app), "--chmod-socket", "666", socket_path=Path(name), ready=False)
    wait_for(lambda: ping(name), 10, f"binserve on {name}")
    answer = exchange(name, request_packet())
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"served"), answer
    assert not list(tmp_path.glob("@*")) and not Path(name).exists()
    warning = f"socket {name}: chmod-socket ignored: an abstract socket has no file and no permissions"
    assert warning in server.log()
    assert f"master ready: 1 workers on {name}" in server.log()
    # No permissions: anyone may connect.
    assert as_user(account, lambda: exchange(name, request_packet()).decode()).endswith("served")
    front = nginx(location(Path(name)))
    assert front.request("GET", "/")[0] == 502
    assert f"connect() to unix:{name} failed (2: No such file or directory)" in front.error_log()
    os.kill(server.pid, signal.SIGHUP)  # handed over to the new image like any listener
    wait_for(lambda: server.log().count("master ready") == 2, 10, "the reloaded image")
    assert exchange(name, request_packet()).endswith(b"served") and "cannot bind" not in server.log()
    os.kill(server.pid, signal.SIGTERM)
    assert server.proc.wait(10) == 0
    assert "vacuum" not in server.log() and not ping(name)


def test_an_abstract_name_in_use_is_refused_and_the_first_server_keeps_it(
    app: Path, tmp_path: Path, serve: Serve
) -> None:
    name = abstract_name(tmp_path)
    first = serve("--wsgi-file", str(app), socket_path=Path(name), ready=False)
    wait_for(lambda: ping(name), 10, f"binserve on {name}")
    second = serve("--wsgi-file", str(app), socket_path=Path(name), ready=False)
    assert second.proc.wait(10) == 2
    assert f"socket {name}: cannot bind: Address already in use (another server" in second.log()
    assert ping(name) and first.proc.poll() is None
    assert not list(tmp_path.glob("@*"))


# -- misleading socket errors -------------------------------------------------------------------------
@pytest.mark.parametrize("second", ["same", "relative", "tcp"])
def test_a_socket_given_twice_is_named_as_such(app: Path, tmp_path: Path, serve: Serve, second: str) -> None:
    if second == "tcp":
        address = f"127.0.0.1:{free_port()}"
        args = ["--socket", address, "--socket", address]
    else:
        address = str(tmp_path / "app.sock")
        args = ["--socket", address if second == "same" else "./app.sock"]
    server = serve("--wsgi-file", str(app), *args, ready=False)
    assert server.proc.wait(10) == 2
    twice = f"{tmp_path}/./app.sock" if second == "relative" else address  # as written, made absolute
    assert f"socket {twice} is given twice" in server.log(), server.log()
    assert "already listening" not in server.log() and not server.socket.exists()


@pytest.mark.parametrize("kind", ["regular file", "FIFO", "symlink to a stale socket"])
def test_something_other_than_a_socket_at_the_path_is_named_and_left_alone(
    app: Path, tmp_path: Path, serve: Serve, kind: str
) -> None:
    path = tmp_path / "app.sock"
    if kind == "regular file":
        path.write_text("data\n")
        what = "a regular file"
    elif kind == "FIFO":
        os.mkfifo(path)
        what = "a FIFO"
    else:
        stale = tmp_path / "stale.sock"
        socket.socket(socket.AF_UNIX).bind(str(stale))  # closed at once: a socket file nobody listens on
        path.symlink_to(stale)
        what = "a symbolic link"
    server = serve("--wsgi-file", str(app), ready=False)
    assert server.proc.wait(10) == 2
    assert f"socket {path}: {what} is there, not a socket: remove it or choose another path" in server.log()
    if kind == "regular file":
        assert path.read_text() == "data\n"
    elif kind == "FIFO":
        assert stat.S_ISFIFO(path.lstat().st_mode)
    else:
        assert path.is_symlink() and (tmp_path / "stale.sock").exists()


def test_a_link_planted_at_the_log_before_a_reload_leaves_logging_as_it_was(
    account: pwd.struct_passwd, user_dir: Path, roots_file: Path, venv_interpreter: None, serve: Serve
) -> None:
    """The re-executed image, unprivileged, keeps the log root opened; the reload goes on."""
    (user_dir / "app.py").write_text(APP)
    logto = user_dir / "app.log"
    args = ["--wsgi-file", str(user_dir / "app.py"), "--uid", USER, "--logto", str(logto)]
    server = serve(*args, socket_path=user_dir / "app.sock", cwd=user_dir)
    assert as_user(account, lambda: os.rename(logto, user_dir / "moved.log")) == "ok"
    assert as_user(account, lambda: os.symlink(roots_file, logto)) == "ok"
    os.kill(server.pid, signal.SIGHUP)
    moved = user_dir / "moved.log"
    wait_for(lambda: moved.read_text().count("master ready") == 2, 20, "the reloaded image")
    assert f"logto {logto}: is a symbolic link: refused" in moved.read_text()
    assert "logging on as before the reload" in moved.read_text()
    assert roots_file.read_text() == ROOTS and ping(user_dir / "app.sock")
    os.kill(server.pid, signal.SIGTERM)
    assert server.proc.wait(10) == 0


@pytest.mark.process
def test_chown_socket_never_gives_away_the_file_a_link_at_the_socket_path_points_to(
    account: pwd.struct_passwd, roots_file: Path, tmp_path: Path
) -> None:
    """A link swapped in for the socket between bind and chown (planted at once here): root's file stays."""
    link = tmp_path / "app.sock"
    link.symlink_to(roots_file)
    Privileges(socket_owner=(account.pw_uid, account.pw_gid)).chown([str(link)])
    assert (roots_file.stat().st_uid, roots_file.stat().st_gid) == (0, 0)
    assert os.lstat(link).st_uid == account.pw_uid


@pytest.mark.parametrize("stats", ["app.sock", "./app.sock"])
def test_a_stats_address_that_is_also_a_socket_is_one_line(
    app: Path, tmp_path: Path, serve: Serve, stats: str
) -> None:
    server = serve("--wsgi-file", str(app), "--stats", stats, ready=False)
    assert server.proc.wait(10) == 2
    assert lines(server)[-1].endswith(f"option 'stats': {stats} is also given as a socket"), server.log()
    assert len(lines(server)) == 1 and not server.socket.exists()

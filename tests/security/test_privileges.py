"""uid/gid, chown-socket, the nginx-access warning and uwsgi-allow-from, with real processes as root.

A server that drops to another user must still reach the interpreter after the drop (lazy
imports, and the re-execution on SIGHUP). Where it lives under a directory that user cannot
traverse (pyenv under /root is 0700), binserve runs in a private mount namespace in which that
directory is a 0755 tmpfs with the interpreter's tree bound back, as in test_emperor's tyrant test.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import signal
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from binserve.config import load
from binserve.privileges import (
    Account,
    PrivilegeError,
    Privileges,
    access_warning,
    nginx_access_warnings,
    permits,
)
from binserve.sockets import LOOPBACK, MAX_CACHED_PEERS, PeerFilter, SocketError, bind, permitted
from binserve.testing import Serve, StartNginx, exchange, free_port, location, ping, request_packet, wait_for

from support import EXTRA_GROUP, USER, as_user
from support import PRIVILEGES_APP as APP

NGINX_USER = "www-data"


# -- fixtures and helpers -----------------------------------------------------------------------------
@pytest.fixture
def nginx_user() -> Iterator[pwd.struct_passwd]:
    """www-data, as nginx's Debian package creates it; created for the test where it is missing."""
    assert os.geteuid() == 0, "privileges are tested as root (as CI runs)"
    created = False
    try:
        pwd.getpwnam(NGINX_USER)
    except KeyError:
        subprocess.run(["useradd", "-M", "-r", NGINX_USER], check=True, capture_output=True)
        created = True
    try:
        yield pwd.getpwnam(NGINX_USER)
    finally:
        if created:
            subprocess.run(["userdel", NGINX_USER], capture_output=True)


def connects(path: Path) -> str:
    """``ok`` when a unix socket at ``path`` accepts this process's connection."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
    return "ok"


def uwsgi_get(address: str | Path, path: str = "/") -> bytes:
    """The raw answer to a GET sent straight over the uwsgi protocol (b"" when closed unanswered:
    a close with the request unread may come as a reset)."""
    return exchange(address, request_packet(path), reset_ends=True)


def ids_of(pid: int) -> tuple[set[int], set[int]]:
    """The real, effective and saved uids and gids of a process, as two sets."""
    proc = psutil.Process(pid)
    return set(proc.uids()), set(proc.gids())


def stat_result(mode: int, uid: int, gid: int) -> os.stat_result:
    """A synthetic stat: mode, owner and group, the rest zero."""
    return os.stat_result((mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


# -- uid and gid -----------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["names", "numbers"])
def test_master_and_workers_run_as_uid_and_gid_after_binding(
    account: pwd.struct_passwd, home: Path, venv_interpreter: None, serve: Serve, nginx: StartNginx, how: str
) -> None:
    uid, extra = account.pw_uid, grp.getgrnam(EXTRA_GROUP).gr_gid
    if how == "names":  # no gid: the user's own group, and its supplementary groups
        args, gid = ["--uid", USER], account.pw_gid
    else:
        args, gid = ["--uid", str(uid), "--gid", str(extra)], extra
    groups = set(os.getgrouplist(USER, gid))
    sock = home / "app.sock"
    server = serve("--wsgi-file", str(home / "app.py"), "--processes", "2", *args, socket_path=sock, cwd=home)
    assert os.stat(sock).st_uid == 0, "the socket is bound as root, before the drop"
    wait_for(lambda: len(server.worker_pids()) == 2, 10, "two workers")
    for pid in (server.pid, *server.worker_pids()):
        assert ids_of(pid) == ({uid}, {gid}), pid

    front = nginx(location(sock))
    status, _, body = front.request("GET", "/")
    assert status == 200, (body, front.error_log()[-2000:])
    got_uid, got_gid, got_groups = body.decode().split()
    assert (int(got_uid), int(got_gid)) == (uid, gid)
    assert {int(g) for g in got_groups.split(",")} == groups and 0 not in groups
    if how == "names":
        assert extra in groups, "initgroups gave the user its supplementary group"
    assert f"dropped privileges: running as uid {uid} ({USER})" in server.log()

    os.kill(server.pid, signal.SIGTERM)
    assert server.proc.wait(10) == 0
    assert not sock.exists(), "vacuum removes the socket from the user's directory"


def test_sighup_reload_after_the_drop_serves_as_the_same_user(
    account: pwd.struct_passwd, home: Path, venv_interpreter: None, serve: Serve, tmp_path: Path
) -> None:
    """The new image starts unprivileged: it keeps the sockets, the log file and the pidfile root made."""
    logto = tmp_path / "binserve.log"
    pidfile = tmp_path / "app.pid"  # in root's directory: written before the drop, as uWSGI does
    sock = home / "app.sock"
    server = serve(
        "--wsgi-file",
        str(home / "app.py"),
        "--uid",
        USER,
        "--processes",
        "2",
        "--logto",
        str(logto),
        "--pidfile",
        str(pidfile),
        socket_path=sock,
        cwd=home,
    )
    wait_for(lambda: len(server.worker_pids()) == 2, 10, "two workers")
    assert pidfile.read_text() == f"{server.pid}\n"
    old = server.worker_pids()
    os.kill(server.pid, signal.SIGHUP)

    def replaced() -> bool:
        assert server.proc.poll() is None, logto.read_text()
        pids = server.worker_pids()
        return len(pids) == 2 and not pids & old

    wait_for(replaced, 20, "two new workers")
    assert logto.read_text().count("master ready") == 2, logto.read_text()
    assert ping(sock)
    uid, gid = account.pw_uid, account.pw_gid
    assert uwsgi_get(sock).split(b"\r\n\r\n", 1)[1].split()[:2] == [b"%d" % uid, b"%d" % gid]
    for pid in (server.pid, *server.worker_pids()):
        assert ids_of(pid) == ({uid}, {gid}), pid
    text = logto.read_text()
    assert "the reload failed" not in text
    assert f"logto {logto}: Permission denied as uid {uid}; logging on as before the reload" in text
    assert pidfile.read_text() == f"{server.pid}\n"
    os.kill(server.pid, signal.SIGTERM)
    assert server.proc.wait(10) == 0, logto.read_text()
    assert not sock.exists()


def test_drop_is_a_no_op_for_the_current_user_and_an_error_for_another(account: pwd.struct_passwd) -> None:
    same = Privileges(uid=account.pw_uid, gid=account.pw_gid, user=USER)
    assert as_user(account, same.drop) == "ok"  # drop returned None
    answer = as_user(account, Privileges(uid=0, gid=0, user="root").drop)
    assert answer.startswith("PrivilegeError: cannot switch to uid 0 (root) and gid 0 (root): "), answer
    assert f"runs as uid {account.pw_uid} ({USER})" in answer and "only root may change user" in answer
    answer = as_user(account, Privileges(gid=0).drop)
    assert answer.startswith("PrivilegeError: cannot switch to gid 0 (root): "), answer


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--uid", "no-such-user-x"],
            "option 'uid': there is no user named 'no-such-user-x' on this machine",
        ),
        (["--gid", "no-such-group-x"], "option 'gid': there is no group named 'no-such-group-x'"),
        (["--uid", ""], "option 'uid': expected a user name or number, got an empty value"),
        (
            ["--uid", "4000000000"],
            "uid 4000000000 has no entry in the user database, so its group is unknown",
        ),
        (["--gid", "99999999999"], "option 'gid': 99999999999 is out of range"),
        (["--chown-socket", ":"], "option 'chown-socket': expected USER, USER:GROUP or :GROUP, got ':'"),
        (["--chown-socket", "root:nope-x"], "option 'chown-socket': there is no group named 'nope-x'"),
        (["--chown-socket", "4000000000:"], "'4000000000:': uid 4000000000 has no entry"),
    ],
)
def test_unknown_users_and_groups_are_named(args: list[str], message: str) -> None:
    with pytest.raises(PrivilegeError) as caught:
        Privileges.from_config(load(args, environ={}))
    assert message in str(caught.value)


def test_names_and_numbers_resolve_alike(account: pwd.struct_passwd) -> None:
    extra = grp.getgrnam(EXTRA_GROUP).gr_gid
    by_name = Privileges.from_config(load(["--uid", USER, "--chown-socket", f"{USER}:{EXTRA_GROUP}"], {}))
    by_number = Privileges.from_config(
        load(["--uid", str(account.pw_uid), "--chown-socket", f"{account.pw_uid}:{extra}"], {})
    )
    assert by_name == by_number == Privileges(account.pw_uid, account.pw_gid, USER, (account.pw_uid, extra))
    assert Privileges.from_config(load(["--chown-socket", f"{USER}:"], {})).socket_owner == (
        account.pw_uid,
        account.pw_gid,
    )
    assert Privileges.from_config(load(["--chown-socket", f":{EXTRA_GROUP}"], {})).socket_owner == (-1, extra)


def test_an_unknown_uid_is_a_usage_error_before_anything_is_bound(serve: Serve, tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    server = serve("--wsgi-file", str(tmp_path / "app.py"), "--uid", "no-such-user-x", ready=False)
    assert server.proc.wait(10) == 2
    assert "option 'uid': there is no user named 'no-such-user-x' on this machine" in server.log()
    assert not server.socket.exists()


# -- chown-socket ----------------------------------------------------------------------------------
@pytest.mark.parametrize("owner", ["user:group", ":group", "user"])
def test_chown_socket_gives_the_socket_file_its_owner(
    account: pwd.struct_passwd, serve: Serve, tmp_path: Path, owner: str
) -> None:
    extra = grp.getgrnam(EXTRA_GROUP).gr_gid
    value = owner.replace("user", USER).replace("group", EXTRA_GROUP)
    expected = (account.pw_uid if "user" in owner else 0, extra if "group" in owner else 0)
    (tmp_path / "app.py").write_text(APP)
    server = serve("--wsgi-file", str(tmp_path / "app.py"), "--chown-socket", value, "--chmod-socket", "660")
    info = os.stat(server.socket)
    assert (info.st_uid, info.st_gid) == expected
    assert stat.S_IMODE(info.st_mode) == 0o660
    # Still root: only the socket changed hands.
    assert ids_of(server.pid) == ({0}, {0})


# -- can nginx connect? -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "case, dir_mode, args, problem",
    [
        ("closed directory", 0o700, [], "is not searchable by www-data"),
        ("socket 600", 0o755, ["--chmod-socket", "600"], "is not writable by www-data"),
        ("socket 666", 0o755, ["--chmod-socket", "666"], None),
        (
            "socket 660 to nginx's group",
            0o755,
            ["--chmod-socket", "660", "--chown-socket", ":www-data"],
            None,
        ),
    ],
)
def test_a_warning_when_nginx_s_user_could_not_connect(
    nginx_user: pwd.struct_passwd,
    open_dir: Path,
    serve: Serve,
    case: str,
    dir_mode: int,
    args: list[str],
    problem: str | None,
) -> None:
    where = open_dir / "run"
    where.mkdir(mode=dir_mode)
    where.chmod(dir_mode)
    (open_dir / "app.py").write_text(APP)
    sock = where / "app.sock"
    server = serve("--wsgi-file", str(open_dir / "app.py"), *args, socket_path=sock)
    lines = [line for line in server.log().splitlines() if "if nginx runs as www-data" in line]
    # What the warning predicts is what a process running as www-data finds.
    reached = as_user(nginx_user, lambda: connects(sock))
    if problem is None:
        assert lines == [] and reached == "ok", (lines, reached)
        return
    assert reached == "PermissionError: [Errno 13] Permission denied", reached
    assert len(lines) == 1, server.log()
    line = lines[0]
    assert f"it cannot connect to {sock}" in line and problem in line
    assert f'"connect() to unix:{sock} failed (13: Permission denied)" and answer 502' in line
    if dir_mode == 0o700:
        assert f"the directory {where} (drwx------ root:root)" in line
    else:
        assert "the socket (srw------- root:root)" in line
        assert "set chmod-socket = 660 with chown-socket = :www-data, or chmod-socket = 666" in line


WWW = Account("www-data", 33, 33, frozenset({33, 500}))
SOCKET, DIRECTORY = stat.S_IFSOCK, stat.S_IFDIR


@pytest.mark.parametrize(
    "mode, uid, gid, bit, allowed",
    [
        (SOCKET | 0o755, 0, 0, stat.S_IWOTH, False),
        (SOCKET | 0o757, 0, 0, stat.S_IWOTH, True),
        (SOCKET | 0o660, 0, 33, stat.S_IWOTH, True),
        (SOCKET | 0o660, 0, 500, stat.S_IWOTH, True),  # a supplementary group counts
        (SOCKET | 0o606, 0, 33, stat.S_IWOTH, False),  # the group class applies, not "other"
        (SOCKET | 0o066, 33, 0, stat.S_IWOTH, False),  # the owner class applies, not group or other
        (SOCKET | 0o200, 33, 0, stat.S_IWOTH, True),
        (DIRECTORY | 0o700, 0, 0, stat.S_IXOTH, False),
        (DIRECTORY | 0o711, 0, 0, stat.S_IXOTH, True),
        (DIRECTORY | 0o750, 0, 500, stat.S_IXOTH, True),
        (DIRECTORY | 0o754, 0, 0, stat.S_IXOTH, False),  # read is not search
    ],
)
def test_permission_classes(mode: int, uid: int, gid: int, bit: int, allowed: bool) -> None:
    assert permits(WWW, stat_result(mode, uid, gid), bit) is allowed


def test_access_warning_names_the_first_closed_directory_and_the_socket() -> None:
    dirs = [
        ("/", stat_result(DIRECTORY | 0o755, 0, 0)),
        ("/srv", stat_result(DIRECTORY | 0o700, 0, 0)),
        ("/srv/app", stat_result(DIRECTORY | 0o700, 0, 0)),
    ]
    sock = ("/srv/app/app.sock", stat_result(SOCKET | 0o755, 0, 0))
    text = access_warning(WWW, dirs, sock)
    assert text is not None
    assert text.startswith("warning: if nginx runs as www-data, it cannot connect to /srv/app/app.sock: ")
    assert "the directory /srv (drwx------ root:root) is not searchable by www-data" in text
    assert "/srv/app (" not in text
    assert "the socket (srwxr-xr-x root:root) is not writable by www-data" in text
    open_dirs = [(path, stat_result(DIRECTORY | 0o755, 0, 0)) for path, _ in dirs]
    assert access_warning(WWW, open_dirs, ("/srv/app/app.sock", stat_result(SOCKET | 0o666, 0, 0))) is None


def test_no_warning_for_users_that_do_not_exist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("binserve.privileges.NGINX_USERS", ("no-such-nginx-user-x", "root"))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "a.sock"))
    os.chmod(tmp_path / "a.sock", 0o600)
    with sock:
        assert nginx_access_warnings(str(tmp_path / "a.sock")) == []


# -- uwsgi-allow-from ------------------------------------------------------------------------------
def test_a_tcp_socket_answers_loopback_by_default(serve: Serve, tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    address = f"127.0.0.1:{free_port()}"
    server = serve("--wsgi-file", str(tmp_path / "app.py"), socket_path=address)
    assert uwsgi_get(address).startswith(b"HTTP/1.1 200 OK")
    assert "refused a connection" not in server.log()


def test_a_peer_outside_uwsgi_allow_from_is_closed_unanswered(serve: Serve, tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    address = f"127.0.0.1:{free_port()}"
    # Ready once the unix socket answers; the TCP one refuses even a ping.
    server = serve(
        "--wsgi-file", str(tmp_path / "app.py"), "--socket", address, "--uwsgi-allow-from", "10.0.0.0/8"
    )
    assert uwsgi_get(address) == b""
    refused = f"refused a connection from 127.0.0.1 on {address}: not in uwsgi-allow-from"
    wait_for(lambda: refused in server.log(), 10, "the refusal in the log")
    assert uwsgi_get(server.socket).startswith(b"HTTP/1.1 200 OK"), "a unix socket is not filtered"


def test_a_wildcard_address_serves_the_peers_in_uwsgi_allow_from(serve: Serve, tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    port = free_port()
    server = serve(
        "--wsgi-file",
        str(tmp_path / "app.py"),
        "--socket",
        f"0.0.0.0:{port}",
        "--uwsgi-allow-from",
        "10.0.0.0/8",
        "--uwsgi-allow-from",
        "127.0.0.1",
    )
    assert uwsgi_get(f"127.0.0.1:{port}").startswith(b"HTTP/1.1 200 OK")
    assert "refused a connection" not in server.log()


@pytest.mark.parametrize(("host", "loopback"), [("0.0.0.0", "127.0.0.1"), ("[::]", "[::1]")])
def test_a_non_loopback_socket_without_uwsgi_allow_from_serves_and_says_who_may_connect(
    serve: Serve, tmp_path: Path, host: str, loopback: str
) -> None:
    (tmp_path / "app.py").write_text(APP)
    port = free_port()
    server = serve("--wsgi-file", str(tmp_path / "app.py"), "--socket", f"{host}:{port}")
    assert uwsgi_get(f"{loopback}:{port}").startswith(b"HTTP/1.1 200 OK")
    assert (
        f"socket {host}:{port} listens on {host.strip('[]')}, beyond loopback, and answers only loopback "
        in (server.log())
    )


@pytest.mark.parametrize("entry", ["10.0.0.300", "10.0.0.0/33", "nginx.local", ""])
def test_a_bad_uwsgi_allow_from_entry_is_a_usage_error(serve: Serve, tmp_path: Path, entry: str) -> None:
    (tmp_path / "app.py").write_text(APP)
    server = serve("--wsgi-file", str(tmp_path / "app.py"), "--uwsgi-allow-from", entry, ready=False)
    assert server.proc.wait(10) == 2
    assert "option 'uwsgi-allow-from': expected an IP address or a network in CIDR form" in server.log()
    assert f"got {entry!r}" in server.log()
    assert not server.socket.exists()


def test_a_bad_uwsgi_allow_from_line_names_the_file_and_line(serve: Serve, tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "app.ini").write_text("[uwsgi]\nwsgi-file = app.py\nuwsgi-allow-from = nginx.local\n")
    server = serve("--ini", str(tmp_path / "app.ini"), ready=False)
    assert server.proc.wait(10) == 2
    assert "app.ini:3: option 'uwsgi-allow-from': expected an IP address" in server.log()


def test_an_explicit_list_replaces_loopback() -> None:
    allows = PeerFilter(["10.0.0.0/8", " 192.168.1.5 ", "fd00::/8", "::ffff:172.16.0.0/108"]).allows
    for peer in (
        "10.1.2.3",
        "::ffff:10.1.2.3",
        "192.168.1.5",
        "fd12:3456::1",
        "172.16.0.9",
        "::ffff:172.16.0.9",
    ):
        assert allows(peer), peer
    for peer in ("127.0.0.1", "::1", "192.168.1.6", "fe80::1", "11.0.0.1"):
        assert not allows(peer), peer


def test_verdicts_are_cached_and_the_cache_is_bounded() -> None:
    peers = PeerFilter(["10.0.0.0/8"])
    assert peers.allows("10.0.0.1") and peers.verdicts == {"10.0.0.1": True}
    for i in range(MAX_CACHED_PEERS + 10):
        peers.allows(f"2001:db8::{i:x}")
    assert len(peers.verdicts) <= MAX_CACHED_PEERS
    assert peers.allows("10.0.0.1") and not peers.allows("2001:db8::1")


def test_a_bad_entry_and_a_link_local_peer() -> None:
    with pytest.raises(SocketError, match=r"option 'uwsgi-allow-from': '10\.0\.0\.300' is not an IP address"):
        PeerFilter(["10.0.0.300"])
    # A link-local peer comes with its interface.
    assert permitted("fe80::1%eth0", [ipaddress.ip_network("fe80::/10")])
    assert not permitted("fe80::1%eth0", LOOPBACK)


def test_bind_without_peers_is_unfiltered_as_the_stats_server_needs() -> None:
    listener = bind("0.0.0.0:0", 16, None, 1.0)
    with listener.sock:
        assert listener.allow is None
    filtered = bind("127.0.0.1:0", 16, None, 1.0, PeerFilter([]))
    with filtered.sock:
        assert filtered.allow is not None and filtered.allow("127.0.0.1") and not filtered.allow("8.8.8.8")

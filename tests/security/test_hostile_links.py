"""Attacks on the promises in the README's "Security notes", run on real processes as root.

Each test plays a hostile tenant (the unprivileged user a server drops to), a careless
operator or a hostile peer, and asserts that the promise holds.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from binserve.emperor.watch import scan
from binserve.privileges import PrivilegeError, Privileges
from binserve.safefile import open_append, write_replace
from binserve.sockets import Listener, remove_files

from support import APPS

USER = "binserve-a1"
RENAME_EXCHANGE = 2  # renameat2(2)

APP = (APPS / "attack_hardening_app.py").read_text()


@pytest.fixture
def tenant() -> Iterator[pwd.struct_passwd]:
    """An unprivileged system user, removed afterwards."""
    assert os.geteuid() == 0, "these attacks need root to be the victim"
    subprocess.run(["userdel", USER], capture_output=True)
    subprocess.run(["useradd", "-M", "-r", USER], check=True, capture_output=True)
    try:
        yield pwd.getpwnam(USER)
    finally:
        subprocess.run(["userdel", USER], capture_output=True)


def _plant_link(account: pwd.struct_passwd, target: Path, at: Path) -> None:
    """A symbolic link owned by the tenant, as if the tenant had made it."""
    at.symlink_to(target)
    os.chown(at, account.pw_uid, account.pw_gid, follow_symlinks=False)


def _binserve(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """binserve run to its exit: each run here is expected to stop at startup."""
    return subprocess.run(
        [sys.executable, "-m", "binserve", *args], cwd=cwd, capture_output=True, text=True, timeout=20
    )


def _sticky_directory() -> Path:
    """A root-owned mode 1777 directory, as the README advises for a tyrant's vassals."""
    directory = Path(tempfile.mkdtemp(prefix="binserve-a1-"))
    directory.chmod(0o1777)
    return directory


def _tenant_home(tmp_path: Path, account: pwd.struct_passwd) -> tuple[Path, Path]:
    """A directory the tenant owns, and one only root may write, both reachable by the tenant."""
    os.chmod(tmp_path, 0o755)
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, account.pw_uid, account.pw_gid)
    guarded = tmp_path / "guarded"
    guarded.mkdir(mode=0o755)
    return home, guarded


def _run_linked_to_their_socket(tmp_path: Path, account: pwd.struct_passwd) -> tuple[Path, Path]:
    """The tenant's run directory, a link to a guarded one holding another service's ``app.sock``:
    the socket's path through the link, and that other service's file."""
    home, guarded = _tenant_home(tmp_path, account)
    theirs = guarded / "app.sock"
    theirs.write_text("")
    _plant_link(account, guarded, home / "run")
    return home / "run" / "app.sock", theirs


@pytest.mark.process
def test_logto_and_pidfile_refuse_a_tenant_link_in_a_directory_above_them(
    tmp_path: Path, tenant: pwd.struct_passwd
) -> None:
    # The operator logs under the app user's home; the user swaps the logs directory for a link
    # to a directory only root may write: root must not create (or append to) files there.
    home, guarded = _tenant_home(tmp_path, tenant)
    _plant_link(tenant, guarded, home / "logs")
    (tmp_path / "app.py").write_text(APP)
    for option, name in (("--logto", "app.log"), ("--pidfile", "app.pid")):
        result = _binserve(
            "--socket", str(tmp_path / "app.sock"), "--wsgi-file", str(tmp_path / "app.py"),
            option, str(home / "logs" / name), "--uid", USER, "--gid", USER, cwd=tmp_path,
        )  # fmt: skip
        assert list(guarded.iterdir()) == [], f"{option}: root wrote through the tenant's link"
        assert result.returncode == 2, result.stderr
        assert f"{home / 'logs'}: is a symbolic link owned by uid {tenant.pw_uid}" in result.stderr


def test_links_owned_by_root_on_the_way_are_still_followed(tmp_path: Path) -> None:
    # /var/run -> /run is root's: a pidfile under it must keep working.
    real = tmp_path / "run"
    real.mkdir()
    (tmp_path / "var-run").symlink_to(real)
    write_replace(str(tmp_path / "var-run" / "app.pid"), b"1\n")
    os.close(open_append(str(tmp_path / "var-run" / "app.log")))
    assert sorted(p.name for p in real.iterdir()) == ["app.log", "app.pid"]
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(OSError, match="Too many levels"):
        write_replace(str(tmp_path / "loop" / "app.pid"), b"1\n")


@pytest.mark.process
def test_a_tyrant_scan_never_takes_a_flipping_file_for_another_users(
    tmp_path: Path, tenant: pwd.struct_passwd
) -> None:
    # In a sticky vassal directory the tenant may still swap its own two names, a regular file
    # and a link to the victim's file, as fast as it likes (renameat2 RENAME_EXCHANGE).
    victim_uid = pwd.getpwnam("nobody").pw_uid
    vassals = _sticky_directory()
    victim = vassals / "victim.ini"
    victim.write_text("[uwsgi]\n")
    os.chown(victim, victim_uid, victim_uid)
    mine, other = vassals / "mine.ini", vassals / "other.ini"
    mine.write_text("[uwsgi]\n")
    os.chown(mine, tenant.pw_uid, tenant.pw_gid)
    _plant_link(tenant, victim, other)
    flipper = os.fork()
    if flipper == 0:  # pragma: no cover - the attacker
        os.setgid(tenant.pw_gid)
        os.setuid(tenant.pw_uid)
        libc = ctypes.CDLL(None, use_errno=True)
        while True:
            libc.renameat2(-100, bytes(mine), -100, bytes(other), RENAME_EXCHANGE)
    try:
        owners, deadline = set(), time.monotonic() + 1.0
        while time.monotonic() < deadline:
            found, _ = scan([str(vassals)], True, {})
            owners |= {found[str(name)].uid for name in (mine, other) if str(name) in found}
    finally:
        os.kill(flipper, signal.SIGKILL)
        os.waitpid(flipper, 0)
        shutil.rmtree(vassals)
    assert owners == {tenant.pw_uid}


@pytest.mark.process
@pytest.mark.parametrize(
    "planted",
    ['{"pid": "x"}', "[]", '{"pid": 1, "emperor": ["d"], "vassals": [{"id": 1}]}', '{"pid": 1e400}'],
)
def test_emperor_status_names_a_planted_state_file_in_one_line(tmp_path: Path, planted: str) -> None:
    # The default state file sits in the vassal directory: whoever may write it may write this.
    (tmp_path / ".binserve-emperor.json").write_text(planted)
    result = _binserve("--emperor-status", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "is not an emperor state" in result.stderr, result.stderr


@pytest.mark.process
def test_chown_socket_never_follows_a_tenant_link_above_the_socket(
    tmp_path: Path, tenant: pwd.struct_passwd
) -> None:
    # Between bind and chown the tenant swaps its run directory for a link to a directory holding
    # another service's socket of the same name (done at once here): that file must stay root's.
    ours, theirs = _run_linked_to_their_socket(tmp_path, tenant)
    with pytest.raises(PrivilegeError, match="symbolic link owned by uid"):
        Privileges(socket_owner=(tenant.pw_uid, tenant.pw_gid)).chown([str(ours)])
    assert (theirs.stat().st_uid, theirs.stat().st_gid) == (0, 0)


@pytest.mark.process
def test_vacuum_as_root_never_follows_a_tenant_link_above_the_socket(
    tmp_path: Path, tenant: pwd.struct_passwd
) -> None:
    # A start that fails after bind vacuums as root: a run directory swapped for a link must
    # not make root delete another file of the socket's name.
    ours, theirs = _run_linked_to_their_socket(tmp_path, tenant)
    remove_files([Listener(str(ours), socket.socket(socket.AF_UNIX))], None, vacuum=True)
    assert theirs.exists()


@pytest.mark.process
def test_a_socket_path_through_a_tenant_link_is_refused_before_bind(
    tmp_path: Path, tenant: pwd.struct_passwd
) -> None:
    home, guarded = _tenant_home(tmp_path, tenant)
    _plant_link(tenant, guarded, home / "run")
    (tmp_path / "app.py").write_text(APP)
    result = _binserve("--socket", str(home / "run" / "app.sock"), "--wsgi-file", "app.py", cwd=tmp_path)
    assert result.returncode == 2
    assert f"{home / 'run'}: is a symbolic link owned by uid {tenant.pw_uid}" in result.stderr
    assert list(guarded.iterdir()) == []

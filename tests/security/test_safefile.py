"""The one way to open user-influenced files: links refused or replaced, FIFOs and huge files refused."""

from __future__ import annotations

import os
import pwd
import tempfile
from pathlib import Path

import pytest

from binserve.safefile import UnsafeFile, open_append, read_bounded, write_replace


def test_write_replace_replaces_a_planted_symlink_and_leaves_its_target_alone(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    target = tmp_path / "app.pid"
    target.symlink_to(victim)
    write_replace(str(target), b"123\n")
    assert victim.read_text() == "precious\n"
    assert not target.is_symlink() and target.read_text() == "123\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_write_replace_never_reuses_a_planted_temporary_name(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    target = tmp_path / "state.json"
    (tmp_path / f".state.json.{os.getpid()}.0.tmp").symlink_to(victim)
    write_replace(str(target), b"{}")
    assert victim.read_text() == "precious\n" and target.read_text() == "{}"


def test_write_replace_replaces_a_hard_link_without_writing_through_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    target = tmp_path / "app.pid"
    os.link(victim, target)
    write_replace(str(target), b"1\n")
    assert victim.read_text() == "precious\n" and target.read_text() == "1\n"


def test_open_append_refuses_symlinks_hard_links_and_fifos(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "sym.log").symlink_to(victim)
    os.link(victim, tmp_path / "hard.log")
    os.mkfifo(tmp_path / "fifo.log")
    for name, why in (("sym.log", "symbolic link"), ("hard.log", "hard links"), ("fifo.log", "FIFO")):
        with pytest.raises(UnsafeFile, match=why):
            open_append(str(tmp_path / name))
    assert victim.read_text() == "precious\n"


def test_open_append_creates_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    for text in (b"one\n", b"two\n"):
        fd = open_append(str(path))
        os.write(fd, text)
        os.close(fd)
    assert path.read_bytes() == b"one\ntwo\n"


def test_read_bounded_refuses_fifos_devices_directories_and_large_files(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    big = tmp_path / "big"
    with open(big, "wb") as handle:
        handle.truncate(2 << 20)  # sparse: costs no disk
    for path, why in ((tmp_path / "fifo", "FIFO"), ("/dev/zero", "device"), (tmp_path, "directory")):
        with pytest.raises(UnsafeFile, match=why):
            read_bounded(str(path))
    with pytest.raises(UnsafeFile, match="over the limit"):
        read_bounded(str(big), limit=1 << 20)
    small = tmp_path / "small"
    small.write_bytes(b"x" * 10)
    assert read_bounded(str(small), limit=10) == b"x" * 10


def test_read_bounded_without_follow_refuses_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real.ini"
    real.write_text("[uwsgi]\n")
    (tmp_path / "link.ini").symlink_to(real)
    assert read_bounded(str(tmp_path / "link.ini")) == b"[uwsgi]\n"
    with pytest.raises(UnsafeFile, match="symbolic link"):
        read_bounded(str(tmp_path / "link.ini"), follow=False)


@pytest.mark.process
def test_write_replace_rewrites_our_own_file_in_a_directory_we_cannot_write() -> None:
    """An unprivileged server whose pidfile an admin created for it in a root-only directory."""
    nobody = pwd.getpwnam("nobody")
    with tempfile.TemporaryDirectory() as name:  # under /tmp: tmp_path's parent is root's alone
        os.chmod(name, 0o755)
        _rewrite_as(nobody, Path(name))


def _rewrite_as(nobody: pwd.struct_passwd, locked: Path) -> None:
    own, theirs = locked / "own.pid", locked / "theirs.pid"
    own.write_text("old\n")
    theirs.write_text("root's\n")
    os.chown(own, nobody.pw_uid, nobody.pw_gid)
    pid = os.fork()
    if pid == 0:  # the child becomes nobody and reports through its exit code
        code = 1
        try:
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            write_replace(str(own), b"42\n")
            try:
                write_replace(str(theirs), b"42\n")
                code = 3
            except PermissionError:
                code = 0
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert own.read_text() == "42\n" and theirs.read_text() == "root's\n"

"""The emperor against hostile vassal directories: what a user who can write there can do.

Vassal files that crash, block or exhaust whatever parses them, a sparse file of gigabytes,
links planted at the state file's names, links to another user's vassal file, secrets in the
emperor's environment. The emperor and the other vassals must carry on, root must not write
through a link, and a tyrant's vassal must not run another user's file nor see root's
environment, nor forge the emperor's log lines with its name. Processes are real; the tyrant tests create two
system users and remove them, and remove the state file they leave under /run.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import selectors
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from test_emperor import status_row, status_text

from binserve import safefile
from binserve.config import load
from binserve.emperor import Emperor
from binserve.emperor.plan import Vassal
from binserve.emperor.probe import Probe
from binserve.emperor.spawn import warn_if_replaceable
from binserve.emperor.status import RUN_DIR, STATE_NAME, tyrant_state_path
from binserve.testing import StartEmperor, ping, read_stats, wait_for

from support import APPS, AppFile, get, good_vassal, reachable_prefix, system_users, write_vassal

# Hostile files would otherwise make the unfixed emperor (and each hostile vassal) take the
# host's memory: under this bound they fail with MemoryError instead.
ADDRESS_SPACE = ["prlimit", f"--as={512 << 20}", "--"]
VICTIM, ATTACKER = "binserve-h1", "binserve-h2"
SECRET = "EMPEROR_TEST_SECRET"

APP = (APPS / "emperor_hostile_app.py").read_text()


# -- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture
def app(app_file: AppFile) -> Path:
    return app_file(APP, "app.py")


@pytest.fixture
def users() -> Iterator[tuple[pwd.struct_passwd, pwd.struct_passwd]]:
    """Two system users, the victim and the attacker; removed afterwards."""
    with system_users(VICTIM, ATTACKER) as (victim, attacker):
        yield victim, attacker


def owned(path: Path, user: pwd.struct_passwd) -> Path:
    os.lchown(path, user.pw_uid, user.pw_gid)
    return path


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


# -- vassal files the emperor must not execute in its own process ----------------------------------------
def hostile_files(vassals: Path, tmp_path: Path) -> list[str]:
    """Vassal files that crash, exhaust or block a reader in the same process; their names."""
    sock = tmp_path / "hostile.sock"
    head = f"[uwsgi]\nsocket = {sock}\n"
    (vassals / "nul.ini").write_text(head + "env = A=@(/etc/hostname\x00x)\n")
    (vassals / "bigint.ini").write_text(head + f"big = {'9' * 3000}\nenv = A=%(big * big)\n")
    chain = tmp_path / "chain"
    chain.mkdir()
    for i in range(1200):
        (chain / f"{i}.conf").write_text(f"[uwsgi]\ninclude = {i + 1}.conf\n")
    (chain / "1200.conf").write_text("[uwsgi]\nprocesses = 1\n")
    (vassals / "deep.ini").write_text(head + f"include = {chain / '0.conf'}\n")
    (vassals / "zero.ini").write_text(head + "include = /dev/zero\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (vassals / "fifo.ini").write_text(head + f"include = {fifo}\n")
    return ["nul", "bigint", "deep", "zero", "fifo"]


def test_hostile_vassal_files_leave_the_emperor_and_the_good_vassal_running(
    tmp_path: Path, vassal_dir: Path, app: Path, emperor: StartEmperor
) -> None:
    """A NUL in @(), a number past int-to-str, 1,200 nested includes, /dev/zero and a FIFO.

    The bounded loader refuses each in one line, in the vassal (which exits 2) and in the
    emperor's reader of its stats address alike: that reader neither fails nor hangs.
    """
    sock = tmp_path / "good.sock"
    write_vassal(vassal_dir, "a-good", sock, app)
    names = hostile_files(vassal_dir, tmp_path)
    emp = emperor(vassal_dir, "--worker-reload-mercy", "1", wrap=ADDRESS_SPACE)
    emp.wait_serving("a-good", sock)
    master = emp.master("a-good")
    for name in names:
        emp.wait_log(rf"vassal {name}\.ini died \(exited with code 2\)", timeout=10)
    # Respawned twice (1 s, then 2 s later), its file read again each time, and past the deadline
    # of the first readers: one that failed or hung would have said so by now.
    wait_for(lambda: "vassal nul.ini died 3 time(s)" in emp.log(), 15, "nul.ini's third failure")
    emp.check_running()
    assert ping(sock) and emp.master("a-good") == master, emp.log()
    assert "no stats address" not in emp.log() and "Traceback" not in emp.log(), emp.log()
    started = time.monotonic()
    emp.proc.send_signal(signal.SIGTERM)
    assert emp.proc.wait(15) == 0, emp.log()
    assert time.monotonic() - started < 12
    assert "emperor stopped: every vassal has exited" in emp.log()


def test_a_huge_vassal_file_is_refused_once_and_costs_no_cpu(
    tmp_path: Path, vassal_dir: Path, app: Path, emperor: StartEmperor
) -> None:
    sock = good_vassal(vassal_dir, app)
    huge = vassal_dir / "huge.ini"
    with open(huge, "wb") as handle:
        handle.truncate(4 << 30)  # sparse: no disk, but 4 GB to whoever reads it whole
    emp = emperor(vassal_dir, "--emperor-freq", "0.1", wrap=ADDRESS_SPACE)
    emp.wait_serving("good", sock)
    emp.wait_log(rf"{re.escape(str(huge))}: cannot read vassal file: is {4 << 30} bytes, over the limit")
    before = cpu_seconds(emp.pid)
    time.sleep(2)  # twenty scans
    assert cpu_seconds(emp.pid) - before < 0.5
    emp.check_running()
    assert ping(sock)
    assert emp.log().count(f"{huge}: cannot read vassal file") == 1, emp.log()


def test_vassal_files_are_read_again_only_when_they_change(
    tmp_path: Path, vassal_dir: Path, emperor: StartEmperor
) -> None:
    """Forty files just under the size bound, scanned ten times a second, cost (almost) nothing.

    Root owns them, so a tyrant refuses each (once): they are read, never run.
    """
    padding = "; padding\n" * (safefile.MAX_CONFIG_BYTES // 10 - 1)
    for i in range(40):
        (vassal_dir / f"big{i}.ini").write_text(f"[uwsgi]\n{padding}")
    emp = emperor(vassal_dir, "--emperor-tyrant", "--emperor-freq", "0.1")
    emp.wait_log(r"invalid permissions for vassal .*big39\.ini")
    before = cpu_seconds(emp.pid)
    time.sleep(2)  # twenty scans
    assert cpu_seconds(emp.pid) - before < 0.5
    emp.check_running()
    (vassal_dir / "big0.ini").unlink()
    (vassal_dir / "late.ini").write_text("[uwsgi]\n")  # a new file is still read, and refused
    emp.wait_log(r"invalid permissions for vassal .*late\.ini")
    assert emp.log().count("big1.ini: owned by root") == 1


def test_a_linked_vassals_relative_stats_address_is_taken_from_where_it_runs(
    tmp_path: Path, vassal_dir: Path, app: Path, emperor: StartEmperor
) -> None:
    """The vassal runs in its file's real directory: the emperor reports the stats socket there."""
    home = tmp_path / "home"
    home.mkdir()
    conf = write_vassal(home, "a", tmp_path / "a.sock", app, extra="stats = a.stats\n")
    (vassal_dir / "a.ini").symlink_to(conf)
    emperor_stats = tmp_path / "emperor.stats"
    emp = emperor(vassal_dir, "--emperor-stats", str(emperor_stats))
    emp.wait_serving("a", tmp_path / "a.sock")
    wait_for((home / "a.stats").exists, 10, "the vassal's stats socket beside its real file")
    addresses: list[str | None] = []

    def probed() -> bool:
        addresses[:] = [v["stats"] for v in read_stats(emperor_stats)["vassals"] if v["id"] == "a.ini"]
        return addresses != [None]

    wait_for(probed, 10, "a.ini's stats address in the emperor's stats")
    assert addresses == [str(home / "a.stats")]


@pytest.mark.process
def test_a_stats_reader_that_dies_without_answering_is_logged(
    tmp_path: Path, vassal_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A reader killed before it wrote (by a signal, its alarm) is a failure, not "no address"."""
    config = load(["--emperor", str(vassal_dir), "--emperor-state", str(tmp_path / "state.json")])
    emp = Emperor(config)
    vassal = Vassal(str(vassal_dir / "a.ini"), digest="d")
    read_end, write_end = os.pipe2(os.O_NONBLOCK)
    pid = os.fork()
    if pid == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    os.close(write_end)
    probe = Probe(vassal, "d", pid, read_end, time.monotonic() + 10)
    emp.probes[read_end] = probe
    emp.selector.register(read_end, selectors.EVENT_READ, probe)
    wait_for(lambda: emp._on_probe(probe) or read_end not in emp.probes, 5, "the reader's end of file")
    assert "vassal a.ini: no stats address: reading its file failed (it exited without answering)" in (
        capfd.readouterr().err
    )
    assert vassal.stats is None
    wait_for(lambda: emp._reap() or not emp.unreaped, 5, "the reader reaped")


# -- the state file ------------------------------------------------------------------------------------
def test_a_link_planted_at_the_state_file_or_its_temporary_is_never_written_through(
    tmp_path: Path, vassal_dir: Path, app: Path, emperor: StartEmperor
) -> None:
    precious = {name: tmp_path / name for name in ("at-state", "at-temporary")}
    for path in precious.values():
        path.write_text("precious\n")
    (vassal_dir / STATE_NAME).symlink_to(precious["at-state"])
    write_vassal(vassal_dir, "a", tmp_path / "a.sock", app)
    emp = emperor(vassal_dir)
    # The name the emperor used to open as root with a plain open(), its pid in it.
    (vassal_dir / f"{STATE_NAME}.{emp.pid}.tmp").symlink_to(precious["at-temporary"])
    emp.wait_serving("a", tmp_path / "a.sock")
    write_vassal(vassal_dir, "b", tmp_path / "b.sock", app)  # one more state write, at least
    emp.wait_serving("b", tmp_path / "b.sock")
    wait_for(lambda: emp.state_of("b") == "running", 10, "b running in the state file")
    assert all(path.read_text() == "precious\n" for path in precious.values())
    assert not (vassal_dir / STATE_NAME).is_symlink()


@pytest.mark.process
def test_an_explicit_state_file_is_kept_where_it_is_named_even_by_a_tyrant(
    tmp_path: Path, vassal_dir: Path
) -> None:
    state = tmp_path / "state.json"
    config = load(["--emperor", str(vassal_dir), "--emperor-tyrant", "--emperor-state", str(state)])
    Emperor(config).step()
    assert json.loads(state.read_text())["vassals"] == []
    assert not os.path.exists(tyrant_state_path(str(vassal_dir)))
    assert status_text(state).startswith(f"emperor pid {os.getpid()} watching {vassal_dir}")


def test_a_state_directory_that_is_a_link_or_others_may_write_is_refused(tmp_path: Path) -> None:
    private = safefile.private_directory
    fresh = tmp_path / "fresh"
    private(str(fresh))
    assert fresh.is_dir() and fresh.stat().st_mode & 0o777 == 0o755
    private(str(fresh))  # an existing, sound directory is fine
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(OSError, match="writable by others"):
        private(str(shared))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    os.chown(foreign, 65534, 65534)
    with pytest.raises(OSError, match="owned by uid 65534"):
        private(str(foreign))
    link = tmp_path / "link"
    link.symlink_to(fresh)
    with pytest.raises(OSError, match="not a directory"):
        private(str(link))


# -- emperor-tyrant -----------------------------------------------------------------------------------
def test_a_tyrant_warns_about_a_vassal_directory_where_users_may_replace_files(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    shared, sticky = tmp_path / "shared", tmp_path / "sticky"
    for directory, mode in ((shared, 0o777), (sticky, 0o1777)):
        directory.mkdir()
        directory.chmod(mode)
    warn_if_replaceable(str(shared))
    warn_if_replaceable(str(sticky))
    warnings = [line for line in capfd.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and f"{shared} is writable by others without the sticky bit" in warnings[0]


def tyrant_layout(base: Path, victim: pwd.struct_passwd, attacker: pwd.struct_passwd) -> tuple[Path, Path]:
    """A vassal directory the attacker may write (with the attacker's app.py in it), and the
    victim's directory with the victim's app.py."""
    vassals, home = base / "vassals", base / "victim"
    for directory, user in ((vassals, attacker), (home, victim)):
        directory.mkdir()
        (directory / "app.py").write_text(APP)
        owned(directory, user)
        owned(directory / "app.py", user)
    return vassals, home


def test_tyrant_state_stays_out_of_the_vassal_directory_and_status_finds_it(
    users: tuple[pwd.struct_passwd, pwd.struct_passwd], open_dir: Path, tmp_path: Path, emperor: StartEmperor
) -> None:
    victim, attacker = users
    vassals, home = tyrant_layout(open_dir, victim, attacker)
    sock = home / "v.sock"
    owned(write_vassal(vassals, "v", sock, home / "app.py"), victim)
    emp = emperor(vassals, "--emperor-tyrant", wrap=reachable_prefix(tmp_path))
    emp.wait_serving("v", sock)
    wait_for(lambda: emp.state_of("v") == "running", 10, "v running in the state file")
    assert sorted(p.name for p in vassals.iterdir()) == ["app.py", "v.ini"]
    run = os.lstat(RUN_DIR)
    assert run.st_uid == 0 and run.st_mode & 0o7777 == 0o755
    assert emp.state_path.stat().st_uid == 0 and emp.state_path.stat().st_mode & 0o022 == 0
    assert "running" in status_row(status_text(vassals), "v.ini")


def test_tyrant_refuses_a_link_to_another_users_file_and_runs_vassals_in_their_files_directory(
    users: tuple[pwd.struct_passwd, pwd.struct_passwd], open_dir: Path, tmp_path: Path, emperor: StartEmperor
) -> None:
    victim, attacker = users
    vassals, home = tyrant_layout(open_dir, victim, attacker)
    # Relative wsgi-file: found from the vassal's cwd. The attacker's app.py is in the vassal
    # directory, the victim's beside the victim's files.
    for name in ("own", "other"):
        conf = home / f"{name}.conf"
        conf.write_text(f"[uwsgi]\nsocket = {home / name}.sock\nwsgi-file = app.py\nprocesses = 1\n")
        owned(conf, victim)
    (vassals / "own.ini").symlink_to(home / "own.conf")
    owned(vassals / "own.ini", victim)  # the victim's own link to the victim's file
    (vassals / "stolen.ini").symlink_to(home / "other.conf")
    owned(vassals / "stolen.ini", attacker)  # planted by the attacker
    os.link(home / "other.conf", vassals / "hard.ini")  # as the attacker could where hard links are free
    emp = emperor(vassals, "--emperor-tyrant", "--emperor-freq", "0.1", wrap=reachable_prefix(tmp_path))
    emp.wait_serving("own", home / "own.sock")
    status, body = get(home / "own.sock")
    assert status == 200 and body.split()[:2] == ["victim", str(victim.pw_uid)], body
    refusal = emp.wait_log(r"^.*stolen\.ini is a symbolic link owned by uid.*$")
    assert f"uid {attacker.pw_uid} to a file owned by uid {victim.pw_uid}: refused" in refusal.group(0)
    emp.wait_log(rf"^.*{re.escape(str(vassals / 'hard.ini'))} has 2 hard links: refused.*$")
    time.sleep(0.5)  # five more scans
    log = emp.log()
    assert log.count("stolen.ini is a symbolic link") == 1 and log.count("hard.ini has 2 hard links") == 1, (
        log
    )
    assert "spawned vassal stolen.ini" not in log and "spawned vassal hard.ini" not in log
    assert not (home / "other.sock").exists()
    # The attacker owns the directory: the emperor says what that allows, once.
    assert log.count(f"warning: {vassals} is owned by uid {attacker.pw_uid}: a user may replace") == 1, log


def test_tyrant_vassals_get_a_minimal_environment_without_the_emperors_secrets(
    users: tuple[pwd.struct_passwd, pwd.struct_passwd],
    open_dir: Path,
    tmp_path: Path,
    emperor: StartEmperor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    victim, attacker = users
    vassals, home = tyrant_layout(open_dir, victim, attacker)
    monkeypatch.setenv(SECRET, "hunter2")
    monkeypatch.setenv("TZ", "UTC")
    sock = home / "v.sock"
    owned(write_vassal(vassals, "v", sock, home / "app.py"), victim)
    emp = emperor(vassals, "--emperor-tyrant", wrap=reachable_prefix(tmp_path))
    emp.wait_serving("v", sock)
    status, body = get(sock)
    assert status == 200 and body.split() == ["victim", str(victim.pw_uid), "-"], body
    master = emp.master("v")
    assert master is not None
    environ = dict(
        entry.split("=", 1) for entry in Path(f"/proc/{master}/environ").read_text().split("\0") if entry
    )
    assert SECRET not in environ
    assert environ["USER"] == environ["LOGNAME"] == VICTIM and environ["TZ"] == "UTC"
    assert environ["HOME"] == victim.pw_dir and "PATH" in environ and "UWSGI_EMPEROR_FD" in environ
    assert set(environ) <= {"PATH", "LANG", "LC_ALL", "TZ", "HOME", "USER", "LOGNAME", "UWSGI_EMPEROR_FD"}


def test_a_vassal_file_whose_name_could_forge_log_lines_is_refused(
    tmp_path: Path, vassal_dir: Path, app: Path, emperor: StartEmperor
) -> None:
    sock = good_vassal(vassal_dir, app)
    forged = "x\n2026-01-01 00:00:00 [binserve pid 1] vassal y.ini is now loyal\n"
    body = f"[uwsgi]\nsocket = {tmp_path / 'forged.sock'}\nwsgi-file = {app}\n"
    (vassal_dir / f"{forged}.ini").write_text(body)
    emp = emperor(vassal_dir)
    emp.wait_serving("good", sock)
    emp.wait_log(r"refused: a vassal file name with control characters")
    log = emp.log()
    assert "\n2026-01-01 00:00:00 [binserve pid 1]" not in log, log
    assert "spawned vassal x" not in log and not (tmp_path / "forged.sock").exists(), log


HANG_ON_RELOAD = (APPS / "attack_runtime_hang_on_reload.py").read_text()


def test_a_vassal_file_name_cannot_forge_an_emperor_log_line(
    emperor: StartEmperor, vassal_dir: Path, tmp_path: Path, app_file: AppFile
) -> None:
    """Whoever may write the vassal directory chooses the file names the emperor logs."""
    app = app_file(HANG_ON_RELOAD)
    write_vassal(vassal_dir, "x\n2026-01-01 00:00:00 [binserve pid 1] FORGED", tmp_path / "v.sock", app, 1)
    process = emperor(vassal_dir)
    wait_for(lambda: "control characters" in process.log(), 10, "the file to be refused")
    assert "\n2026-01-01" not in process.log(), process.log()
    assert "x\\x0a2026-01-01" in process.log(), process.log()

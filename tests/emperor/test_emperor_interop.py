"""Emperor interop with real uWSGI : the emperor's byte protocol, both ways.

Both directions, each with the life cycle uWSGI users rely on: a new vassal file spawns the
vassal, a touched one (mtime forward) reloads it gracefully, a removed one stops it.

* A binserve vassal under uWSGI's emperor: ``uwsgi --emperor DIR --emperor-wrapper binserve``
  runs ``binserve --ini app.ini`` with cwd = DIR and ``UWSGI_EMPEROR_FD`` set. uWSGI sends
  byte 1 on touch and byte 0 (brutal stop) on removal.
* A uWSGI vassal under binserve's emperor: ``binserve --emperor DIR --emperor-wrapper uwsgi``.
  binserve sends byte 1 on touch and byte 2 (graceful stop) on removal, which a 2.0 vassal
  obeys (``gracefully_kill_them_all``) without needing ``--emperor-graceful-shutdown``, which
  only concerns what uWSGI's own emperor sends.

Every process runs in a new session; teardown signals the emperor, then kills its process
group and every pid the test saw, and checks that none is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from binserve.testing import Process, alive, children, cmdline, exchange, executable, request_packet, wait_for

from support import APPS, AppFile

pytestmark = pytest.mark.process  # uWSGI and binserve emperors and vassals, started by the tests' own fixture

APP = (APPS / "emperor_interop_app.py").read_text()


# -- helpers -------------------------------------------------------------------------------------
def get_pid(sock_path: Path, timeout: float = 5.0) -> int | None:
    """GET / over the uwsgi protocol; the app answers with its worker's pid (None: no answer)."""
    try:
        raw = exchange(sock_path, request_packet("/"), timeout)
    except OSError:
        return None
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        return None
    return int(body)


def vassals_of(pid: int) -> set[int]:
    """The live children of ``pid`` that run a vassal file."""
    found = set()
    for child in children(pid):
        try:
            if "--ini" in cmdline(child):
                found.add(child)
        except OSError:
            pass  # gone meanwhile
    return found


def bump_mtime(path: Path) -> None:
    """``touch``, with the mtime moved two whole seconds forward (uWSGI compares seconds)."""
    mtime = path.stat().st_mtime + 2
    os.utime(path, (mtime, mtime))


def status_row(vassals: Path, name: str) -> list[str]:
    """PID and STATE of vassal ``name`` as ``binserve --emperor-status DIR`` prints them."""
    out = subprocess.run(
        [executable("binserve"), "--emperor-status", str(vassals)], capture_output=True, text=True
    ).stdout
    rows = [line.split() for line in out.splitlines()]
    return next((row[1:3] for row in rows if row and row[0] == name), [])


class Emperor(Process):
    """An emperor process (either implementation) in a new session, its output in a log file."""

    grace = 10.0

    def __init__(self, tmp_path: Path, name: str, args: Sequence[str], stop_signal: int) -> None:
        self.seen: set[int] = set()  # every vassal pid the test saw, killed at teardown too
        super().__init__(
            args, tmp_path / f"{name}.log", cwd=tmp_path, stdin=subprocess.DEVNULL, stop_signal=stop_signal
        )

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """``wait_for``, failing with the log as it is at the timeout."""
        try:
            wait_for(condition, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the log:\n{self.log()}") from None

    def wait_text(self, text: str, timeout: float = 10.0) -> None:
        """Poll until ``text`` appears in the log."""
        self.wait(lambda: text in self.log(), timeout, repr(text))

    def vassal_master(self, timeout: float = 15.0) -> int:
        """The one vassal process (a child of the emperor running ``--ini``) once it exists.

        binserve's emperor also forks a short-lived child of its own to read a vassal's file.
        """
        self.wait(lambda: len(vassals_of(self.pid)) == 1, timeout, "one vassal")
        (pid,) = vassals_of(self.pid)
        self.seen.add(pid)
        return pid

    def workers(self, master: int, count: int, timeout: float = 15.0) -> set[int]:
        """The master's ``count`` workers once all are forked."""
        self.wait(lambda: len(children(master)) == count, timeout, f"{count} workers of {master}")
        pids = children(master)
        self.seen |= pids
        return pids

    def stop(self, grace: float | None = None) -> int | None:
        """The stop signal, a grace period, then SIGKILL to the group and every vassal seen."""
        code = super().stop(grace)
        for pid in self.seen:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not any(alive(p) for p in self.seen), 10, "every vassal process to die")
        return code


@pytest.fixture
def emperors(tmp_path: Path) -> Iterator[list[Emperor]]:
    """Emperors started by the test, always stopped after it."""
    started: list[Emperor] = []
    yield started
    for emperor in started:
        emperor.stop()


# -- binserve vassal under uWSGI's emperor -------------------------------------------------------
def test_binserve_vassal_under_uwsgi_emperor(
    tmp_path: Path, app_file: AppFile, emperors: list[Emperor]
) -> None:
    """uWSGI's emperor spawns binserve, reloads it on touch (byte 1) and stops it on removal (byte 0)."""
    uwsgi, binserve = executable("uwsgi"), executable("binserve")
    vassals = tmp_path / "vassals"
    vassals.mkdir()
    app = app_file(APP)
    sock = tmp_path / "app.sock"
    ini = vassals / "app.ini"
    ini.write_text(f"[uwsgi]\nsocket = {sock}\nwsgi-file = {app}\nprocesses = 2\n")
    # SIGINT: uWSGI 2.0's SIGTERM would be a brutal reload of the emperor, not a stop.
    args = [uwsgi, "--emperor", str(vassals), "--emperor-wrapper", binserve, "--emperor-freq", "1"]
    emperor = Emperor(tmp_path, "uwsgi-emperor", args, signal.SIGINT)
    emperors.append(emperor)

    # Spawned: uWSGI runs WRAPPER --ini NAME.ini in DIR; binserve reports spawned (1) and accepting (5).
    master = emperor.vassal_master()
    assert cmdline(master)[-2:] == ["--ini", "app.ini"], cmdline(master)
    assert os.readlink(f"/proc/{master}/cwd") == str(vassals)
    assert "UWSGI_EMPEROR_FD" in Path(f"/proc/{master}/environ").read_bytes().decode(errors="replace")
    old_workers = emperor.workers(master, 2)
    emperor.wait(lambda: get_pid(sock) is not None, 15, "the vassal to serve")
    assert get_pid(sock) in old_workers
    emperor.wait_text("[emperor] vassal app.ini has been spawned")
    emperor.wait_text("[emperor] vassal app.ini is ready to accept requests")
    emperor.wait_text("[emperor] vassal app.ini is now loyal")  # byte 17 after the first request

    # Reloaded on touch: byte 1 -> graceful reload, same master pid (re-exec), new workers.
    bump_mtime(ini)
    emperor.wait_text("[emperor] reload the uwsgi instance app.ini")
    emperor.wait(lambda: get_pid(sock) not in (None, *old_workers), 15, "new workers")
    emperor.wait(lambda: not any(alive(p) for p in old_workers), 10, "the old workers to exit")
    new_workers = emperor.workers(master, 2)
    assert not new_workers & old_workers
    assert get_pid(sock) in new_workers
    assert children(emperor.proc.pid) == {master}
    log = emperor.log()
    assert "received message 1 from the emperor" in log
    assert log.count("[emperor] vassal app.ini has been spawned") == 1  # "spawned" is first boot only
    assert log.count("[emperor] vassal app.ini is ready to accept requests") == 2  # accepting again

    # Stopped on removal: byte 0 (uWSGI's stop is brutal) -> binserve's fast stop, socket removed.
    ini.unlink()
    emperor.wait_text("[emperor] stop the uwsgi instance app.ini")
    emperor.wait(lambda: not any(alive(p) for p in (master, *new_workers)), 10, "the vassal to exit")
    emperor.wait_text("[emperor] removed uwsgi instance app.ini")
    assert not sock.exists()
    assert children(emperor.proc.pid) == set()
    assert "received message 0 from the emperor" in emperor.log()
    assert emperor.proc.poll() is None  # the emperor itself carries on


# -- uWSGI vassal under binserve's emperor -------------------------------------------------------
def test_uwsgi_vassal_under_binserve_emperor(
    tmp_path: Path, app_file: AppFile, emperors: list[Emperor]
) -> None:
    """binserve's emperor spawns uWSGI, reloads it on touch (byte 1) and stops it on removal (byte 2)."""
    uwsgi, binserve = executable("uwsgi"), executable("binserve")
    vassals = tmp_path / "vassals"
    vassals.mkdir()
    app = app_file(APP)
    sock = tmp_path / "u.sock"
    ini = vassals / "u.ini"
    # pyuwsgi has the python plugin built in: no plugins line. No vacuum: after a reload uWSGI 2.0.30
    # skips it anyway ("VACUUM WARNING: unix socket ... changed inode. Skip removal", standalone too).
    # pyuwsgi's reload re-executes the interpreter it resolves from /proc/self/exe, which in a
    # virtualenv is the base one, without pyuwsgi: binary-path names the virtualenv's own.
    ini.write_text(
        f"[uwsgi]\nsocket = {sock}\nwsgi-file = {app}\nmaster = true\nprocesses = 1\n"
        f"binary-path = {sys.executable}\n"
    )
    args = [binserve, "--emperor", str(vassals), "--emperor-wrapper", uwsgi, "--worker-reload-mercy", "5"]
    emperor = Emperor(tmp_path, "binserve-emperor", args, signal.SIGTERM)
    emperors.append(emperor)

    # Spawned: uWSGI sees UWSGI_EMPEROR_FD and sends 1 (spawned) and 5 (accepting).
    master = emperor.vassal_master()
    assert cmdline(master)[-2:] == ["--ini", str(ini)], cmdline(master)
    (worker,) = emperor.workers(master, 1)
    emperor.wait(lambda: get_pid(sock) is not None, 15, "the vassal to serve")
    assert get_pid(sock) == worker
    emperor.wait_text("*** has_emperor mode detected")
    emperor.wait_text("vassal u.ini has been spawned")
    emperor.wait_text("vassal u.ini is ready to accept requests")
    emperor.wait_text("vassal u.ini is now loyal")  # byte 17 after the worker's first request
    emperor.wait(lambda: status_row(vassals, "u.ini") == [str(master), "running"], 5, "u.ini running")

    # Reloaded on touch: byte 1 -> uWSGI's graceful reload, same master pid (re-exec), new worker.
    bump_mtime(ini)
    emperor.wait_text("vassal u.ini changed: graceful reload")
    emperor.wait_text("received message 1 from emperor")
    emperor.wait(lambda: get_pid(sock) not in (None, worker), 20, "a new worker")
    emperor.wait(lambda: not alive(worker), 10, "the old worker to exit")
    (new_worker,) = emperor.workers(master, 1)
    assert get_pid(sock) == new_worker != worker
    assert children(emperor.proc.pid) == {master}
    emperor.wait_text("gracefully (RE)spawned uWSGI master process")
    assert emperor.log().count("vassal u.ini has been spawned") == 1
    # Back to running only on the reloaded vassal's byte 5 (accepting): uWSGI sends it after every reload.
    emperor.wait(lambda: status_row(vassals, "u.ini") == [str(master), "running"], 5, "u.ini running again")

    # Stopped on removal: byte 2 -> uWSGI's graceful shutdown, well before the 5 s deadline.
    ini.unlink()
    emperor.wait_text("vassal u.ini removed or reowned: stopping it")
    removed = time.monotonic()
    emperor.wait(lambda: not any(alive(p) for p in (master, new_worker)), 10, "the vassal to exit")
    assert time.monotonic() - removed < 4, "uWSGI did not stop on byte 2; the deadline SIGKILL did it"
    emperor.wait_text("vassal u.ini stopped (exited with code 0)")
    log = emperor.log()
    assert "received message 2 from emperor" in log
    assert "graceful shutdown triggered" in log
    assert "goodbye to uWSGI" in log
    assert "SIGKILL" not in log
    assert get_pid(sock, timeout=1) is None  # nobody listens on the socket any more
    assert children(emperor.proc.pid) == set()
    assert emperor.proc.poll() is None

    # The emperor itself stops on SIGTERM, cleanly, with nothing left to stop.
    assert emperor.stop() == 0
    assert "emperor stopped: every vassal has exited" in emperor.log()

"""A reload that cannot bring up the new image is refused, and the old workers serve on.

Before re-executing itself, the master runs a probe: the same command line, as the same
user, loading the config and the app and binding nothing. These tests break what the new
image needs (the ini closed to the user the master runs as, the app's code, an import that
hangs or exits, a probe that cannot be forked) and check that SIGHUP, touch-reload and the
emperor's reload leave the same workers serving, with the reason in the log; once the cause is
fixed, the reload goes through.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
from pathlib import Path

import pytest

from binserve.testing import EmperorProcess, Serve, Server, alive, ping, touch_ahead, wait_for

from support import APPS, USER, AppFile, get, serve_limited, stop_cleanly, write_vassal

EXITING_APP = (APPS / "attack_runtime_app.py").read_text()
HANG_ON_RELOAD = (APPS / "attack_runtime_hang_on_reload.py").read_text()

APP = (APPS / "reload_safety_app.py").read_text()
BROKEN = "\nraise ImportError('broken deploy')\n"


def version(app: Path, text: str) -> None:
    """Write the app answering ``text`` (broken when ``text`` ends with the BROKEN suffix)."""
    app.write_text(APP.replace("VERSION", text))


def answer(server: Server) -> tuple[str, int]:
    """What the app answers (its version) and which worker answered."""
    status, body = get(server.socket)
    assert status == 200, server.log()
    text, pid = body.split()
    return text, int(pid)


def wait_refused(server: Server, count: int = 1) -> str:
    """The log once ``count`` reloads have been refused (the master must still be running)."""

    def refused() -> bool:
        assert server.proc.poll() is None, server.log()
        return server.log().count("reload refused") >= count

    wait_for(refused, 15, "the reload to be refused")
    return server.log()


def start(serve: Serve, app: Path, *args: str) -> tuple[Server, set[int]]:
    server = serve("--wsgi-file", str(app), "--processes", "2", *args)
    wait_for(lambda: len(server.worker_pids()) == 2, 10, "two workers")
    workers = server.worker_pids()
    if "--lazy-apps" in args:  # each worker imports the app itself: broken code must come after
        wait_for(lambda: all((app.parent / f"loaded-{pid}").exists() for pid in workers), 10, "both imports")
    return server, workers


def hang_a_probe(server: Server, tmp_path: Path) -> int:
    """Reload with SIGHUP, the new image's import made to hang: the pid of the probe hanging in it."""
    (tmp_path / "hang").touch()
    os.kill(server.pid, signal.SIGHUP)
    wait_for((tmp_path / "hanging").exists, 10, "the probe to hang in the app's import")
    return int(server.log().split("probe pid ")[1].split(")")[0])


def test_sighup_with_an_ini_the_dropped_user_cannot_read_is_refused(
    account: pwd.struct_passwd, home: Path, venv_interpreter: None, serve: Serve
) -> None:
    ini = home / "app.ini"
    ini.write_text(f"[uwsgi]\nwsgi-file = {home / 'app.py'}\nuid = {USER}\nprocesses = 2\n")
    ini.chmod(0o600)  # root's: the master, running as the user after the drop, cannot read it
    server = serve("--ini", str(ini), socket_path=home / "app.sock", cwd=home)
    wait_for(lambda: len(server.worker_pids()) == 2, 10, "two workers")
    workers = server.worker_pids()
    os.kill(server.pid, signal.SIGHUP)
    log = wait_refused(server)
    assert f"binserve reload probe: {ini}: cannot read ini file: Permission denied" in log, log
    assert "reload refused: the new image cannot start (probe exited with code 2" in log
    assert server.worker_pids() == workers
    assert ping(server.socket)
    assert get(server.socket)[0] == 200
    stop_cleanly(server)


def test_sighup_with_broken_code_keeps_the_old_code_serving_until_it_is_fixed(
    serve: Serve, tmp_path: Path
) -> None:
    app = tmp_path / "app.py"
    version(app, "v1")
    server, workers = start(serve, app)
    app.write_text(APP.replace("VERSION", "v2") + BROKEN)
    os.kill(server.pid, signal.SIGHUP)
    log = wait_refused(server)
    assert "broken deploy" in log and "the workers serve on" in log
    assert answer(server)[0] == "v1"
    assert server.worker_pids() == workers
    version(app, "v2")
    os.kill(server.pid, signal.SIGHUP)
    wait_for(lambda: not server.worker_pids() & workers and len(server.worker_pids()) == 2, 15, "new workers")
    assert answer(server)[0] == "v2"
    assert server.log().count("master ready") == 2


def test_touch_reload_with_broken_code_keeps_the_old_code_serving(serve: Serve, tmp_path: Path) -> None:
    app, touch = tmp_path / "app.py", tmp_path / "reload.touch"
    version(app, "v1")
    touch.touch()
    server, workers = start(serve, app, "--touch-reload", str(touch))
    app.write_text(APP.replace("VERSION", "v2") + BROKEN)
    touch_ahead(touch)
    log = wait_refused(server)
    assert f"{touch} was touched: graceful reload" in log and "broken deploy" in log
    assert answer(server)[0] == "v1" and server.worker_pids() == workers
    assert log.count("checking that the new image loads") == 1, "one touch, one probe"
    version(app, "v2")
    touch_ahead(touch, 10)
    wait_for(lambda: not server.worker_pids() & workers and len(server.worker_pids()) == 2, 15, "new workers")
    assert answer(server)[0] == "v2"


def test_lazy_apps_is_probed_too(serve: Serve, tmp_path: Path) -> None:
    """With lazy-apps the master never imports the app: the probe does, where the workers would fail."""
    app = tmp_path / "app.py"
    version(app, "v1")
    server, workers = start(serve, app, "--lazy-apps")
    app.write_text(APP.replace("VERSION", "v2") + BROKEN)
    os.kill(server.pid, signal.SIGHUP)
    assert "broken deploy" in wait_refused(server)
    assert answer(server)[0] == "v1" and server.worker_pids() == workers


def test_a_probe_past_the_mercy_is_killed_and_a_second_sighup_meanwhile_is_coalesced(
    serve: Serve, tmp_path: Path
) -> None:
    app = tmp_path / "app.py"
    version(app, "v1")
    server, workers = start(serve, app, "--worker-reload-mercy", "2")
    (tmp_path / "hang").touch()  # the new image's import would hang
    os.kill(server.pid, signal.SIGHUP)
    wait_for(lambda: "checking that the new image loads" in server.log(), 10, "the probe to start")
    os.kill(server.pid, signal.SIGHUP)
    wait_for(lambda: "a reload is already being checked" in server.log(), 10, "the second SIGHUP")
    wait_for((tmp_path / "hanging").exists, 10, "the probe to hang in the app's import")
    assert answer(server)[0] == "v1", "the workers serve while the probe runs"
    (tmp_path / "hang").unlink()  # the probe run again after the first is killed loads
    wait_for(lambda: not server.worker_pids() & workers and len(server.worker_pids()) == 2, 20, "new workers")
    log = server.log()
    assert "still running past worker-reload-mercy: SIGKILL" in log, log
    assert log.count("checking that the new image loads") == 2, log
    assert "reload refused" not in log


def test_sigterm_while_the_probe_runs_stops_cleanly(serve: Serve, tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    version(app, "v1")
    server, _ = start(serve, app)
    probe = hang_a_probe(server, tmp_path)
    stop_cleanly(server)
    assert not server.socket.exists()
    out = subprocess.run(["pgrep", "-g", str(server.pid)], capture_output=True, text=True)
    assert out.stdout == "", f"left behind: {out.stdout} (probe {probe})"


def test_a_probe_dies_with_its_master(serve: Serve, tmp_path: Path) -> None:
    """Killed, the master can no longer bound the probe: the probe goes with it."""
    app = tmp_path / "app.py"
    version(app, "v1")
    server, _ = start(serve, app)
    probe = hang_a_probe(server, tmp_path)
    os.kill(server.pid, signal.SIGKILL)
    wait_for(lambda: not alive(probe), 5, "the probe to die with its master")


@pytest.mark.process
def test_an_emperor_reload_of_a_broken_vassal_is_refused(tmp_path: Path) -> None:
    vassals = tmp_path / "vassals"
    vassals.mkdir()
    app, sock = tmp_path / "app.py", tmp_path / "one.sock"
    version(app, "v1")
    ini = write_vassal(vassals, "one", sock, app, processes=1)
    emperor = EmperorProcess(tmp_path, vassals, (), [])
    try:
        emperor.wait_serving("one", sock)
        wait_for(lambda: emperor.state_of("one") == "running", 10, "the vassal running")
        master, workers = emperor.master("one"), emperor.workers("one")
        app.write_text(APP.replace("VERSION", "v2") + BROKEN)
        touch_ahead(ini)  # a changed vassal file: the emperor sends its reload command
        emperor.wait_log("reload refused")
        assert get(sock)[1].split()[0] == "v1"
        assert emperor.master("one") == master and emperor.workers("one") == workers
        wait_for(lambda: emperor.state_of("one") == "running", 10, "the vassal running again")
    finally:
        emperor.stop()
    wait_for(emperor.all_gone, 10, "every vassal to be gone")


@pytest.mark.process
def test_a_probe_gets_no_channel_to_the_emperor(tmp_path: Path) -> None:
    """The probe imports the app: code run at import must not be able to talk to the emperor."""
    vassals = tmp_path / "vassals"
    vassals.mkdir()
    app, sock, seen = tmp_path / "app.py", tmp_path / "one.sock", tmp_path / "probe-saw"
    app.write_text(
        "import os\n"
        "if os.environ.get('_BINSERVE_PROBE'):\n"
        "    fd = os.environ.get('UWSGI_EMPEROR_FD')\n"
        "    try:\n"
        "        os.fstat(int(fd or 3))  # the descriptor the master inherited, or its usual number\n"
        "        state = 'open' if fd else 'no variable'\n"
        "    except OSError:\n"
        "        state = 'closed'\n"
        f"    open({str(seen)!r}, 'w').write(f'{{fd}} {{state}}')\n" + APP.replace("VERSION", "v1")
    )
    ini = write_vassal(vassals, "one", sock, app, processes=1)
    emperor = EmperorProcess(tmp_path, vassals, (), [])
    try:
        emperor.wait_serving("one", sock)
        touch_ahead(ini)  # the emperor's reload command: the master probes first
        # Until the probe has written it, the file may exist and be empty.
        wait_for(lambda: seen.exists() and seen.read_text() != "", 15, "the probe to import the app")
        assert seen.read_text().startswith("None "), seen.read_text()
    finally:
        emperor.stop()
    wait_for(emperor.all_gone, 10, "every vassal to be gone")


def test_an_app_that_exits_zero_at_import_fails_the_probe(
    serve: Serve, app_file: AppFile, tmp_path: Path
) -> None:
    """sys.exit(0) at import is a failed load, not a probe that passed: the workers serve on."""
    server = serve("--wsgi-file", str(app_file(EXITING_APP)), "--processes", "2")
    wait_for(lambda: len(server.worker_pids()) == 2, 10, "two workers")
    workers = server.worker_pids()
    (tmp_path / "exit").write_text("0")
    os.kill(server.pid, signal.SIGHUP)
    wait_for(lambda: "reload refused" in server.log() or server.proc.poll() is not None, 15, "the probe")
    assert server.proc.poll() is None, server.log()
    assert "SystemExit" in server.log(), server.log()
    assert server.worker_pids() == workers
    assert get(server.socket)[0] == 200


def test_an_app_that_ends_the_process_with_code_0_at_import_fails_the_probe(
    serve: Serve, app_file: AppFile, tmp_path: Path
) -> None:
    """os._exit(0) cannot be caught as sys.exit(0) is: the probe's "it loads" is not exit code 0."""
    app = app_file(EXITING_APP)
    server = serve("--wsgi-file", str(app))
    workers = server.wait_workers(1)
    app.write_text("import os\n\nos._exit(0)\n")
    os.kill(server.pid, signal.SIGHUP)
    wait_for(lambda: "reload refused" in server.log() or server.proc.poll() is not None, 15, "the probe")
    assert server.proc.poll() is None, server.log()
    assert "probe exited with code 0 before it had loaded the app" in server.log(), server.log()
    assert server.worker_pids() == workers
    assert get(server.socket)[0] == 200


def test_a_probe_stopped_by_sigterm_refuses_the_reload(
    serve: Serve, app_file: AppFile, tmp_path: Path
) -> None:
    """A stop sent to the probe alone (a cgroup-wide kill, a pkill) is no proof that the new image loads."""
    server = serve("--wsgi-file", str(app_file(HANG_ON_RELOAD)))
    wait_for(lambda: len(server.worker_pids()) == 1, 10, "the worker")
    workers = server.worker_pids()
    probe = hang_a_probe(server, tmp_path)
    os.kill(probe, signal.SIGTERM)
    wait_for(lambda: "reload refused" in server.log(), 10, "the reload to be refused")
    assert server.worker_pids() == workers
    assert get(server.socket)[0] == 200


def test_a_reload_whose_probe_cannot_be_forked_is_refused(
    account: pwd.struct_passwd, home: Path, venv_interpreter: None, serve: Serve
) -> None:
    """fork() failing (the user's process limit) for the probe must not end the master."""
    server, workers = serve_limited(serve, home)
    os.kill(server.pid, signal.SIGHUP)
    wait_for(lambda: "reload refused" in server.log() or server.proc.poll() is not None, 10, "the reload")
    assert server.proc.poll() is None, server.log()
    assert server.worker_pids() == workers
    assert get(server.socket)[0] == 200

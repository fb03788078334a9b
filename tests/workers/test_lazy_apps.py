"""lazy-apps: each worker imports the app itself, not the master; an app that cannot be imported
that way stops binserve instead of a respawn storm.
"""

from __future__ import annotations

from pathlib import Path

from binserve.testing import Serve, wait_for

from support import APPS, AppFile

IMPORT_RECORDER = (APPS / "supervision_import_recorder.py").read_text()


def imported_by(tmp_path: Path) -> set[int]:
    path = tmp_path / "imported-by"
    return {int(line) for line in path.read_text().split()} if path.exists() else set()


def test_lazy_apps_loads_the_app_in_each_worker_not_in_the_master(
    serve: Serve, app_file: AppFile, tmp_path: Path
) -> None:
    server = serve("--wsgi-file", str(app_file(IMPORT_RECORDER)), "--processes", "2", "--lazy-apps")
    wait_for(
        lambda: len(server.worker_pids()) == 2 and imported_by(tmp_path) == server.worker_pids(),
        10,
        "both workers to import the app",
    )
    assert server.pid not in imported_by(tmp_path)


def test_without_lazy_apps_the_master_loads_the_app_once(
    serve: Serve, app_file: AppFile, tmp_path: Path
) -> None:
    serve("--wsgi-file", str(app_file(IMPORT_RECORDER)), "--processes", "2")
    assert len(imported_by(tmp_path)) == 1


def test_lazy_apps_that_fail_to_import_stop_binserve_instead_of_respawning(
    serve: Serve, app_file: AppFile
) -> None:
    server = serve(
        "--wsgi-file", str(app_file("raise ImportError('lazy and broken')\n")), "--lazy-apps", ready=False
    )
    assert server.proc.wait(15) == 3
    log = server.log()
    assert "lazy and broken" in log and "failed to boot; stopping instead of respawning" in log


EXITING_APP = (APPS / "attack_runtime_app.py").read_text()


def test_a_lazy_app_that_exits_at_import_is_a_boot_failure_not_a_respawn_storm(
    serve: Serve, app_file: AppFile, tmp_path: Path
) -> None:
    (tmp_path / "exit").write_text("1")
    server = serve("--wsgi-file", str(app_file(EXITING_APP)), "--lazy-apps", "--processes", "2", ready=False)
    assert server.proc.wait(10) == 3, server.log()
    assert server.log().count("spawned worker") <= 2, server.log()
    assert not server.socket.exists()

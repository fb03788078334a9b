"""Attacks on the signal table, the reload probe and the request path, on real processes."""

from __future__ import annotations

import os
import pwd
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from binserve.testing import EmperorProcess, Server, exchange, request_packet, send, wait_for

from support import APPS, USER, get, write_vassal

APP = (APPS / "attack_runtime_app.py").read_text()


def test_an_app_that_exits_zero_at_import_fails_the_probe(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    """sys.exit(0) at import is a failed load, not a probe that passed: the workers serve on."""
    app = tmp_path / "app.py"
    app.write_text(APP)
    server = serve("--wsgi-file", str(app), "--processes", "2")
    wait_for(lambda: len(server.worker_pids()) == 2, 10, "two workers")
    workers = server.worker_pids()
    (tmp_path / "exit").write_text("0")
    os.kill(server.pid, signal.SIGHUP)
    wait_for(lambda: "reload refused" in server.log() or server.proc.poll() is not None, 15, "the probe")
    assert server.proc.poll() is None, server.log()
    assert "SystemExit" in server.log(), server.log()
    assert server.worker_pids() == workers
    assert get(server.socket)[0] == 200


def test_a_lazy_app_that_exits_at_import_is_a_boot_failure_not_a_respawn_storm(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
    (tmp_path / "exit").write_text("1")
    server = serve("--wsgi-file", str(app), "--lazy-apps", "--processes", "2", ready=False)
    assert server.proc.wait(10) == 3, server.log()
    assert server.log().count("spawned worker") <= 2, server.log()
    assert not server.socket.exists()


SLOW = (APPS / "attack_runtime_slow.py").read_text()


def test_sighup_while_the_app_is_imported_at_startup_does_not_kill_the_master(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    """SIGHUP has a meaning: sent while the master still imports the app, it must not end it silently."""
    app = tmp_path / "app.py"
    app.write_text(SLOW)
    server = serve("--wsgi-file", str(app), ready=False)
    wait_for((tmp_path / "importing").exists, 10, "the import to start")
    os.kill(server.pid, signal.SIGHUP)
    server.wait_ready()
    assert get(server.socket)[0] == 200
    os.kill(server.pid, signal.SIGTERM)
    assert server.proc.wait(10) == 0, server.log()


HELPER = (APPS / "attack_runtime_helper.py").read_text()


def test_after_the_master_is_killed_no_helper_of_the_app_keeps_the_socket_listening(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    """Orphaned workers close the listeners, so connections are refused: no helper of the app holds them."""
    app = tmp_path / "app.py"
    app.write_text(HELPER)
    server = serve("--wsgi-file", str(app), "--processes", "2")
    os.kill(server.pid, signal.SIGKILL)
    server.proc.wait(5)

    def refused() -> bool:
        probe = socket.socket(socket.AF_UNIX)
        probe.settimeout(0.5)
        try:
            probe.connect(str(server.socket))
            probe.sendall(b"\x00\x00\x00\x00")  # a ping: queued, it would wait for an answer forever
            return probe.recv(4) == b""
        except (ConnectionRefusedError, ConnectionResetError, FileNotFoundError):
            return True
        except TimeoutError:
            return False
        finally:
            probe.close()

    wait_for(refused, 5, "connections to be refused")


HANG = (APPS / "attack_runtime_hang.py").read_text()


def test_a_harakiri_line_escapes_the_control_characters_of_the_request_uri(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    """The master names the killed request: a URI with CR LF must not start a forged log line there."""
    app = tmp_path / "app.py"
    app.write_text(HANG)
    server = serve("--wsgi-file", str(app), "--harakiri", "1")
    forged = "/x\r\n2026-01-01 00:00:00 [binserve pid 1] FORGED"
    exchange(server.socket, request_packet(forged, REQUEST_URI=forged), timeout=10)
    wait_for(lambda: "HARAKIRI" in server.log(), 10, "the harakiri line")
    assert "\n2026-01-01" not in server.log(), server.log()
    assert "/x\\x0d\\x0a2026-01-01" in server.log(), server.log()


def test_a_lazy_worker_still_importing_when_the_master_is_killed_leaves_and_frees_the_socket(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    """An orphaned worker leaves within a bound, also one whose lazy import hangs."""
    app = tmp_path / "app.py"
    app.write_text(SLOW.replace("time.sleep(2)", "time.sleep(60)"))
    server = serve("--wsgi-file", str(app), "--lazy-apps", "--worker-reload-mercy", "2", ready=False)
    wait_for((tmp_path / "importing").exists, 10, "a worker's import to start")
    wait_for(lambda: len(server.worker_pids()) == 1, 10, "the worker")
    (worker,) = server.worker_pids()
    os.kill(server.pid, signal.SIGKILL)
    server.proc.wait(5)
    wait_for(lambda: not Path(f"/proc/{worker}").exists() or "Z" in _state(worker), 5, "the worker to leave")


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0]


READ_LATE = (APPS / "attack_runtime_read_late.py").read_text()


def test_a_body_cut_short_after_the_headers_gets_no_second_response(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    """The peer ends its body early once the app's headers are out: the 400 must not follow the 200."""
    app = tmp_path / "app.py"
    app.write_text(READ_LATE)
    server = serve("--wsgi-file", str(app))
    packet = request_packet("/", body=b"0123456789", CONTENT_LENGTH="100")
    raw = exchange(server.socket, packet, half_close=True)
    assert raw.startswith(b"HTTP/1.1 200 OK"), raw
    assert b"HTTP/1.0 400" not in raw, raw
    wait_for(lambda: "response cut off, connection aborted" in server.log(), 5, "the line naming the cut")


def test_sigterm_while_the_app_is_imported_at_startup_is_logged_and_cleans_up(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    app = tmp_path / "app.py"
    app.write_text(SLOW)
    server = serve("--wsgi-file", str(app), ready=False)
    wait_for((tmp_path / "importing").exists, 10, "the import to start")
    os.kill(server.pid, signal.SIGTERM)
    assert server.proc.wait(10) == 0, server.log()
    assert "SIGTERM received while the app was being imported: stopped" in server.log(), server.log()
    assert not server.socket.exists()


HELPER_PID = (APPS / "attack_runtime_helper_pid.py").read_text()


def test_a_helper_the_app_forks_at_import_blocks_no_signal(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    """Signals binserve holds while it starts are not held in a helper the app forks meanwhile."""
    app = tmp_path / "app.py"
    app.write_text(HELPER_PID)
    serve("--wsgi-file", str(app))
    helper = tmp_path / "helper"
    wait_for(helper.exists, 10, "the helper")
    status = Path(f"/proc/{helper.read_text()}/status").read_text()
    blocked = next(line for line in status.splitlines() if line.startswith("SigBlk:"))
    assert int(blocked.split()[1], 16) == 0, blocked


BUSY = (APPS / "attack_runtime_busy.py").read_text()


def test_sigquit_ends_a_worker_at_once_even_in_a_request(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    """The worker's SIGQUIT is "exit at once": not once the app's request is over."""
    app = tmp_path / "app.py"
    app.write_text(BUSY)
    server = serve("--wsgi-file", str(app))
    wait_for(lambda: len(server.worker_pids()) == 1, 10, "the worker")
    (worker,) = server.worker_pids()
    with send(server.socket, request_packet("/"), timeout=None):
        wait_for((tmp_path / "busy").exists, 10, "the request to start")
        os.kill(worker, signal.SIGQUIT)
        wait_for(lambda: worker not in server.worker_pids(), 3, "the worker to exit")


ODD_RESULT = (APPS / "attack_runtime_odd_result.py").read_text()


def test_a_response_whose_attributes_raise_does_not_end_the_worker(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    """Looking up the response's close() is the app's code too: what it raises is the app's error."""
    app = tmp_path / "app.py"
    app.write_text(ODD_RESULT)
    server = serve("--wsgi-file", str(app))
    wait_for(lambda: len(server.worker_pids()) == 1, 10, "the worker")
    (worker,) = server.worker_pids()
    exchange(server.socket, request_packet("/"))
    assert get(server.socket) == (200, str(worker)), server.log()
    assert server.worker_pids() == {worker}, server.log()


HANG_ON_RELOAD = (APPS / "attack_runtime_hang_on_reload.py").read_text()


def test_a_probe_stopped_by_sigterm_refuses_the_reload(serve: Callable[..., Server], tmp_path: Path) -> None:
    """A stop sent to the probe alone (a cgroup-wide kill, a pkill) is no proof that the new image loads."""
    app = tmp_path / "app.py"
    app.write_text(HANG_ON_RELOAD)
    server = serve("--wsgi-file", str(app))
    wait_for(lambda: len(server.worker_pids()) == 1, 10, "the worker")
    workers = server.worker_pids()
    (tmp_path / "hang").touch()
    os.kill(server.pid, signal.SIGHUP)
    wait_for((tmp_path / "hanging").exists, 10, "the probe to hang in the import")
    probe = int(server.log().split("probe pid ")[1].split(")")[0])
    os.kill(probe, signal.SIGTERM)
    wait_for(lambda: "reload refused" in server.log(), 10, "the reload to be refused")
    assert server.worker_pids() == workers
    assert get(server.socket)[0] == 200


def test_a_vassal_file_name_cannot_forge_an_emperor_log_line(
    emperor: Callable[..., EmperorProcess], vassal_dir: Path, tmp_path: Path
) -> None:
    """Whoever may write the vassal directory chooses the file names the emperor logs."""
    app = tmp_path / "app.py"
    app.write_text(HANG_ON_RELOAD)
    write_vassal(vassal_dir, "x\n2026-01-01 00:00:00 [binserve pid 1] FORGED", tmp_path / "v.sock", app, 1)
    process = emperor(vassal_dir)
    wait_for(lambda: "control characters" in process.log(), 10, "the file to be refused")
    assert "\n2026-01-01" not in process.log(), process.log()
    assert "x\\x0a2026-01-01" in process.log(), process.log()


LIMITED = (APPS / "attack_runtime_limited.py").read_text()


def serve_limited(serve: Callable[..., Server], where: Path) -> tuple[Server, set[int]]:
    """binserve as USER (whose process limit the app lowers) from ``where``; its one worker once forked."""
    (where / "app.py").write_text(LIMITED)
    server = serve(
        "--wsgi-file", str(where / "app.py"), "--uid", USER, socket_path=where / "app.sock", cwd=where
    )
    return server, server.wait_workers(1)


def test_a_reload_whose_probe_cannot_be_forked_is_refused(
    account: pwd.struct_passwd,
    home: Path,
    venv_interpreter: None,
    serve: Callable[..., Server],
) -> None:
    """fork() failing (the user's process limit) for the probe must not end the master."""
    server, workers = serve_limited(serve, home)
    os.kill(server.pid, signal.SIGHUP)
    wait_for(lambda: "reload refused" in server.log() or server.proc.poll() is not None, 10, "the reload")
    assert server.proc.poll() is None, server.log()
    assert server.worker_pids() == workers
    assert get(server.socket)[0] == 200


def test_a_replacement_that_cannot_be_forked_leaves_the_worker_serving(
    account: pwd.struct_passwd,
    home: Path,
    venv_interpreter: None,
    serve: Callable[..., Server],
) -> None:
    """fork() failing for a worker's replacement (SIGHUP to the worker) must not end the master."""
    server, workers = serve_limited(serve, home)
    os.kill(next(iter(workers)), signal.SIGHUP)
    wait_for(lambda: "cannot fork" in server.log() or server.proc.poll() is not None, 10, "the replacement")
    assert server.proc.poll() is None, server.log()
    assert "cannot fork worker 1: Resource temporarily unavailable; next try in 10 s" in server.log()
    assert server.worker_pids() == workers
    assert get(server.socket)[0] == 200


def test_sighup_during_a_graceful_stop_is_logged(serve: Callable[..., Server], tmp_path: Path) -> None:
    """No signal goes unsaid: a reload asked for while the workers finish their requests gets a line."""
    app = tmp_path / "app.py"
    app.write_text(BUSY)
    server = serve("--wsgi-file", str(app), "--worker-reload-mercy", "3")
    with send(server.socket, request_packet("/"), timeout=None):
        wait_for((tmp_path / "busy").exists, 10, "the request to start")
        os.kill(server.pid, signal.SIGTERM)
        wait_for(lambda: "graceful stop" in server.log(), 5, "the stop")
        os.kill(server.pid, signal.SIGHUP)
        wait_for(lambda: "SIGHUP: no reload, the master is stopping" in server.log(), 5, "the SIGHUP line")
    assert server.proc.wait(10) == 0, server.log()

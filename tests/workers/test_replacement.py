"""Replacement beside the old worker, where it can go wrong: broken code, reloads, cut bodies, counts.

A worker is replaced by spawning its replacement in the worker id's other scoreboard place; the
old process serves on and gets SIGTERM only once the new one accepts. These tests run real
binserve and nginx processes and check the edges: a replacement that cannot import the app
(chain reload, lazy-apps respawn), a master reload while threads hold a request, a request
body cut short (counted, never a harakiri), and request counts summed over places and
processes. Waits poll a condition; the only timed wait watches for something that must not happen.
"""

from __future__ import annotations

import os
import pwd
import re
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from binserve.testing import (
    Serve,
    StartNginx,
    answers_in_background,
    exchange,
    ping,
    read_stats,
    request_packet,
    touch_ahead,
    wait_for,
)

from support import APPS, REQUEST_LINE, AppFile, BehindNginx, get, serve_limited

VERSION_APP = (APPS / "replacement_version.py").read_text()
PID_APP = (APPS / "pid_app.py").read_text()
SLOW_APP = (APPS / "replacement_slow.py").read_text()
READING_APP = (APPS / "replacement_reading.py").read_text()
HANGING_APP = (APPS / "replacement_hanging.py").read_text()

# What a bad deploy leaves on disk: importing it raises SyntaxError.
BROKEN_APP = """
def application(environ, start_response:
    return []
"""


def wait_stats_up(path: Path) -> None:
    def up() -> bool:
        try:
            return bool(read_stats(path)["workers"])
        except OSError:
            return False

    wait_for(up, 10, f"the stats server on {path}")


# -- 1. a chain reload onto broken code --------------------------------------------------------------


def test_chain_reload_onto_broken_code_stops_and_the_old_workers_serve_on(
    serve: Serve, nginx: StartNginx, app_file: AppFile, tmp_path: Path
) -> None:
    (tmp_path / "version.txt").write_text("v1")
    app = app_file(VERSION_APP)
    trigger = tmp_path / "chain.trigger"
    trigger.write_text("")
    server = serve(
        "--wsgi-file", str(app), "--lazy-apps", "--processes", "3", "--touch-chain-reload", str(trigger)
    )
    front = nginx(server)
    wait_for(lambda: len(server.worker_pids()) == 3, 10, "three workers")
    before = server.worker_pids()
    assert front.request("GET", "/")[2].startswith(b"v1 ")

    app.write_text(BROKEN_APP)
    with answers_in_background(front) as answers:
        touch_ahead(trigger, 5)
        wait_for(lambda: "chain reload stopped" in server.log(), 5, "the chain reload to stop")
        failed_at = time.monotonic()
        # A few more requests after the failure, so the old workers are seen serving past it.
        settled = len(answers)
        wait_for(lambda: len(answers) >= settled + 10, 5, "requests after the failure")
    log = server.log()
    failure = re.search(
        r"worker 1's replacement \(pid (\d+)\) failed to boot \(see above\); pid (\d+) goes on serving; "
        r"next try in 10 s",
        log,
    )
    assert failure, log
    assert int(failure[1]) not in before and int(failure[2]) in before, (failure[0], before)
    assert "chain reload stopped: a replacement did not start; 3 worker(s) keep their old process" in log, log
    assert "SyntaxError" in log, "the boot failure's traceback is logged"
    assert "chain reload: every worker replaced" not in log, log
    assert server.proc.poll() is None, log
    assert server.worker_pids() == before
    assert answers and {status for status, _ in answers} == {200}, sorted({s for s, _ in answers})
    versions = {body.split()[0] for _, body in answers}
    pids = {int(body.split()[1]) for _, body in answers}
    assert versions == {b"v1"} and pids <= before, (versions, pids, before)
    # Only worker 1 was tried: the chain did not go on to workers 2 and 3.
    assert log.count("chain reload; spawning its replacement") == 1, log

    # Fixed code and a new touch: a new chain starts, but worker 1's retry waits out its pause.
    (tmp_path / "version.txt").write_text("v2")
    app.write_text(VERSION_APP)
    with answers_in_background(front) as answers:
        touch_ahead(trigger, 10)
        wait_for(lambda: "chain reload: every worker replaced" in server.log(), 13, "the second chain reload")
        took = time.monotonic() - failed_at
    assert answers and {status for status, _ in answers} == {200}, sorted({s for s, _ in answers})
    assert took >= 9, f"worker 1 was replaced {took:.1f} s after its failed boot, within the 10 s pause"
    now = server.worker_pids()
    assert len(now) == 3 and not now & before, (before, now)
    bodies = [front.request("GET", "/")[2].split() for _ in range(10)]
    assert {version for version, _ in bodies} == {b"v2"}, bodies
    assert {int(pid) for _, pid in bodies} <= now


# -- 2. a master reload while a thread holds a request ----------------------------------------------


def test_master_reload_lets_a_thread_finish_its_request(behind_nginx: BehindNginx, tmp_path: Path) -> None:
    server, front = behind_nginx(SLOW_APP, "--processes", "1", "--threads", "2")
    (old,) = server.worker_pids()
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(front.request, "GET", "/slow")
        wait_for(lambda: (tmp_path / "in-flight").exists(), 10, "the request to reach the app")
        server.proc.send_signal(signal.SIGHUP)
        status, _, body = slow.result(10)
    assert (status, body) == (200, str(old).encode()), (status, body, server.log())
    wait_for(
        lambda: f"old worker (pid {old}) exited with code 0" in server.log(), 10, "the old worker to exit"
    )
    log = server.log()
    assert "SIGHUP: graceful reload" in log, log
    lines = [(m["pid"], m["uri"], m["status"]) for m in REQUEST_LINE.finditer(log)]
    assert (str(old), "/slow", "200") in lines, log
    for cut in ("closed the connection", "past worker-reload-mercy", "SIGKILL", "a core thread failed"):
        assert cut not in log, f"{cut!r} in the log:\n{log}"
    assert "prematurely closed" not in front.error_log(), front.error_log()
    assert server.proc.poll() is None
    # The new image serves with a new worker.
    status, _, body = front.request("GET", "/")
    assert status == 200 and int(body) != old and int(body) in server.worker_pids()


# -- 3. a body cut short ------------------------------------------------------------------------------


def test_a_body_cut_short_is_counted_and_never_reaches_harakiri(
    serve: Serve, app_file: AppFile, tmp_path: Path
) -> None:
    stats = tmp_path / "stats.sock"
    server = serve(
        "--wsgi-file",
        str(app_file(READING_APP)),
        "--processes",
        "1",
        "--harakiri",
        "2",
        "--stats",
        str(stats),
    )
    wait_stats_up(stats)
    (pid,) = server.worker_pids()
    packet = request_packet("/upload", "POST", body=b"0123456789", CONTENT_LENGTH="100")
    reply = exchange(server.socket, packet, half_close=True)  # the peer is gone after 10 of the 100 bytes
    assert reply.startswith(b"HTTP/1.0 400 "), reply
    sent = time.monotonic()
    wait_for(lambda: read_stats(stats)["workers"][0]["requests"] == 1, 5, "the request to be counted")
    # Past the harakiri limit (2 s) with a margin, the worker must never show as busy nor be killed.
    while time.monotonic() - sent < 3.5:
        (worker,) = read_stats(stats)["workers"]
        assert (worker["pid"], worker["status"], worker["requests"]) == (pid, "idle", 1), worker
        assert worker["harakiri_count"] == 0, worker
        time.sleep(0.1)  # the stats are polled for the whole window: this paces the polling
    log = server.log()
    assert "HARAKIRI" not in log, log
    assert server.worker_pids() == {pid}
    assert re.search(r"bad uwsgi packet from unix:\S+ \(peer pid \d+\): .*; connection closed", log), log
    assert re.search(rf"^\[pid: {pid}\|app: 0\|req: 1/1\] .* POST /upload => .*\(\S+ 400\)", log, re.M), log


# -- 4. exact counts across replacements -------------------------------------------------------------


def test_request_counts_stay_exact_across_replacements(
    serve: Serve, nginx: StartNginx, app_file: AppFile, tmp_path: Path
) -> None:
    stats = tmp_path / "stats.sock"
    server = serve(
        "--wsgi-file",
        str(app_file(PID_APP)),
        "--processes",
        "2",
        "--max-requests",
        "20",
        "--min-worker-lifetime",
        "0",
        "--stats",
        str(stats),
        "--log-format",
        "[pid: %(pid)|wid: %(wid)] %(uri)",  # the default line does not name the worker id
    )
    wait_stats_up(stats)
    front = nginx(server)
    total = 300
    answers = front.burst(total)
    assert [status for status, _, _ in answers] == [200] * total
    served_by = {int(body) for _, _, body in answers}
    # A recycling worker serves on until its replacement accepts: how many generations a burst
    # sees depends on the machine's speed, but at least one replacement must have served.
    assert len(served_by) >= 3, f"only {len(served_by)} processes served {total} requests: no replacement"

    last: dict[str, Any] = {}

    def counted() -> bool:
        last["doc"] = read_stats(stats)
        return sum(worker["requests"] for worker in last["doc"]["workers"]) == total

    try:
        wait_for(counted, 5, f"the workers' requests to add up to {total}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the last stats document: {last.get('doc')}") from None

    def served_per_pid() -> Counter[int]:
        return Counter(int(pid) for pid in re.findall(r"^\[pid: (\d+)\|", server.log(), re.M))

    # A request's log line is written just after its response: the last ones may lag nginx's answer.
    wait_for(lambda: served_per_pid().total() == total, 5, f"{total} request log lines")

    def settled() -> bool:
        # Every process that served max-requests has been replaced and has exited.
        log = server.log()
        done = [pid for pid, n in served_per_pid().items() if n >= 20]
        return all(f"(pid {pid}) recycled: exited with code 17" in log for pid in done) and (
            len(server.worker_pids()) == 2
        )

    wait_for(settled, 10, "the replacements to finish")
    doc = read_stats(stats)
    assert sum(worker["requests"] for worker in doc["workers"]) == total, doc
    assert {worker["pid"] for worker in doc["workers"]} == server.worker_pids(), doc
    # Per worker id too: its figure is every process's requests under that id, as the log has them.
    logged = Counter(int(wid) for wid in re.findall(r"^\[pid: \d+\|wid: (\d+)\]", server.log(), re.M))
    assert {worker["id"]: worker["requests"] for worker in doc["workers"]} == dict(logged), (doc, logged)
    assert len(re.findall(r"accepts: retiring pid \d+", server.log())) >= 4, server.log()


# -- 5. a lazy-apps respawn onto broken code, after the server has served ---------------------------


def test_lazy_apps_respawn_onto_broken_code_does_not_stop_the_server(
    serve: Serve, nginx: StartNginx, app_file: AppFile
) -> None:
    app = app_file(PID_APP)
    server = serve("--wsgi-file", str(app), "--lazy-apps", "--processes", "2")
    front = nginx(server)
    wait_for(lambda: len(server.worker_pids()) == 2, 10, "two workers")
    status, _, body = front.request("GET", "/")
    assert status == 200
    victim = int(body)
    (survivor,) = server.worker_pids() - {victim}

    app.write_text(BROKEN_APP)
    os.kill(victim, signal.SIGKILL)
    # Either way the master reports the failed boot: going on (right) or stopping (wrong).
    wait_for(
        lambda: "failed to boot (see above)" in server.log() or "failed to boot;" in server.log(),
        10,
        "the respawn's failed boot",
    )
    log = server.log()
    assert f"(pid {victim}) died: killed by signal 9 (SIGKILL); respawning" in log, log
    respawned = re.search(r"spawned worker (\d+) \(pid (\d+)\)\n", log[log.index(f"(pid {victim}) died") :])
    assert respawned, log
    wid, pid = respawned[1], respawned[2]
    assert f"worker {wid} (pid {pid}) failed to boot (see above); next try in 10 s" in log, log
    assert "stopping instead of respawning" not in log and "graceful stop" not in log, log
    assert server.proc.poll() is None, log
    assert server.worker_pids() == {survivor}
    answers = [front.request("GET", "/") for _ in range(10)]
    assert [(status, int(body)) for status, _, body in answers] == [(200, survivor)] * 10
    assert server.proc.poll() is None


def test_a_replacement_that_never_accepts_is_killed_and_the_old_worker_serves_on(
    serve: Serve, nginx: StartNginx, app_file: AppFile, tmp_path: Path
) -> None:
    app = app_file(HANGING_APP)
    server = serve("--wsgi-file", str(app), "--lazy-apps", "--processes", "1", "--worker-reload-mercy", "2")
    front = nginx(server)
    (old,) = server.worker_pids()
    (tmp_path / "hang").write_text("")
    os.kill(old, signal.SIGHUP)  # replace this worker: the replacement's import hangs
    wait_for(lambda: "did not accept within worker-reload-mercy: SIGKILL" in server.log(), 6, "the deadline")
    wait_for(lambda: "before accepting; next try in 10 s" in server.log(), 5, "the replacement to be reaped")
    assert server.worker_pids() == {old}, server.log()
    assert front.request("GET", "/")[2] == str(old).encode()


def test_worker_killed_with_sigkill_is_respawned(serve: Serve, process_app: Path) -> None:
    server = serve("--wsgi-file", str(process_app), "--processes", "3")
    before = server.wait_workers(3)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)

    def respawned() -> bool:
        now = server.worker_pids()
        return len(now) == 3 and victim not in now and before - {victim} <= now

    wait_for(respawned, 10, "a new worker in place of the killed one")
    wait_for(lambda: "respawning" in server.log(), 5, "the death to be logged")
    assert re.search(
        rf"worker \d \(pid {victim}\) died: killed by signal 9 \(SIGKILL\); respawning", server.log()
    )
    assert get(server.socket, "/")[0] == 200
    assert server.proc.poll() is None


def test_a_replacement_that_cannot_be_forked_leaves_the_worker_serving(
    account: pwd.struct_passwd, home: Path, venv_interpreter: None, serve: Serve
) -> None:
    """fork() failing for a worker's replacement (SIGHUP to the worker) must not end the master."""
    server, workers = serve_limited(serve, home)
    os.kill(next(iter(workers)), signal.SIGHUP)
    wait_for(lambda: "cannot fork" in server.log() or server.proc.poll() is not None, 10, "the replacement")
    assert server.proc.poll() is None, server.log()
    assert "cannot fork worker 1: Resource temporarily unavailable; next try in 10 s" in server.log()
    assert server.worker_pids() == workers
    assert get(server.socket)[0] == 200


def test_a_worker_exiting_as_it_starts_is_respawned_after_a_pause(
    serve: Serve, process_app: Path, tmp_path: Path
) -> None:
    """An ``import`` module ending the process (os._exit, as a misused library may): each respawn
    waits a second instead of forking again at once, hundreds of times a second."""
    flag = tmp_path / "exit-on-import"
    flag.write_text("")
    (tmp_path / "exiting_module.py").write_text(
        f"import os\n\nif os.path.exists({str(flag)!r}):\n    os._exit(0)\n"
    )
    server = serve(
        "--wsgi-file", str(process_app), "--pythonpath", str(tmp_path), "--import", "exiting_module",
        ready=False,
    )  # fmt: skip
    deaths = r"worker 1 \(pid \d+\) died as it started: exited with code 0; next try in 1 s"
    server.wait_log(deaths)
    first = time.monotonic()
    wait_for(lambda: len(re.findall(deaths, server.log())) >= 3, 15, "three deaths")
    assert time.monotonic() - first > 1.0  # two pauses of 1 s between the three
    assert server.log().count("spawned worker 1 ") <= 4, server.log()
    flag.unlink()  # the next respawn imports the module and serves
    wait_for(lambda: ping(server.socket), 15, "a worker answering")
    assert get(server.socket, "/")[0] == 200
    assert server.stop() == 0

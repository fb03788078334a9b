"""Recycling workers without dropping a request, and the options around it.

A recycled worker (max-requests, reload-on-rss, or SIGHUP from the master for
max-worker-lifetime and chain reloads) stops accepting, the master spawns its replacement, and
only once the replacement accepts is the old one told to leave. Also here: min-worker-lifetime,
evil-reload-on-rss, touch-chain-reload, threads, post-buffering and stalled partial packets.
Everything runs real binserve and nginx processes; waits poll a condition, never sleep.
"""

from __future__ import annotations

import hashlib
import os
import re
import resource
import signal
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

from binserve.testing import Serve, StartNginx, answers_in_background, location, send, touch_ahead, wait_for

from support import APPS, AppFile, BehindNginx

SLEEP_APP = (APPS / "supervision_app.py").read_text()

PID_APP = (APPS / "pid_app.py").read_text()
GROWING_APP = (APPS / "recycling_growing.py").read_text()
EVIL_APP = (APPS / "recycling_evil.py").read_text()
VERSION_APP = (APPS / "recycling_version.py").read_text()
THREADS_APP = (APPS / "recycling_threads.py").read_text()
DIGEST_APP = (APPS / "recycling_digest.py").read_text()


def age(pid: int) -> float:
    """Seconds since ``pid`` started, to about 10 ms.

    Both numbers come from the kernel's boot clock (/proc/PID/stat starttime and /proc/uptime);
    psutil's create_time adds the boot time rounded to the second, too coarse here.
    """
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    with open("/proc/uptime") as uptime:
        return float(uptime.read().split()[0]) - started


def recycled_pids(log: str) -> list[int]:
    """Pids the master logged as recycling, in log order."""
    return [
        int(pid) for pid in re.findall(r"\(pid (\d+)\): asked by the worker; spawning its replacement", log)
    ]


# -- the recycling protocol ----------------------------------------------------------------------


def test_max_requests_with_one_process_serves_every_request_and_retires_after_the_replacement(
    behind_nginx: BehindNginx,
) -> None:
    server, front = behind_nginx(
        PID_APP, "--processes", "1", "--max-requests", "5", "--min-worker-lifetime", "0"
    )
    # The old worker serves on until its replacement accepts, so a generation serves a few more
    # than 5: on a loaded machine, where a boot is slow, many more. Batches go on until three
    # generations have served, every request answered.
    served_by: set[int] = set()
    deadline = time.monotonic() + 30
    while len(served_by) < 3 and time.monotonic() < deadline:
        answers = front.burst(20)
        assert [status for status, _, _ in answers] == [200] * 20
        served_by |= {int(body) for _, _, body in answers}
    assert len(served_by) >= 3, f"only {len(served_by)} distinct workers served in 30 s"
    # Each asked for its replacement at its fifth request, however long the replacement took.
    assert server.log().count("5 requests served (max-requests 5)") >= 2, server.log()
    # Every worker that asked for its replacement exits once that replacement accepts.
    wait_for(
        lambda: (
            len(recycled_pids(server.log())) >= 2
            and all(
                f"(pid {pid}) recycled: exited with code 17" in server.log()
                for pid in recycled_pids(server.log())
            )
        ),
        10,
        "every recycling worker to exit with code 17",
    )
    log = server.log()
    for pid in recycled_pids(log):
        recycling = log.index(f"(pid {pid}): asked by the worker; spawning its replacement")
        retiring = log.index(f"accepts: retiring pid {pid}\n")
        recycled = log.index(f"(pid {pid}) recycled: exited with code 17")
        assert recycling < retiring < recycled, f"pid {pid}: out of order\n{log}"


def test_sighup_to_a_worker_replaces_only_that_worker(serve: Serve, app_file: AppFile) -> None:
    server = serve("--wsgi-file", str(app_file(PID_APP)), "--processes", "2")
    wait_for(lambda: len(server.worker_pids()) == 2, 10, "two workers")
    victim, other = sorted(server.worker_pids())
    os.kill(victim, signal.SIGHUP)
    wait_for(
        lambda: f"(pid {victim}) recycled: exited with code 17" in server.log(),
        10,
        "the recycled worker to exit",
    )
    wait_for(lambda: len(server.worker_pids()) == 2, 10, "the replacement")
    now = server.worker_pids()
    assert victim not in now and other in now, (victim, other, now)
    assert server.proc.poll() is None
    (replacement,) = now - {other}
    log = server.log()
    assert f"(pid {victim}): SIGHUP, recycling" in log, log
    assert f"(pid {replacement}) accepts: retiring pid {victim}" in log, log
    assert "SIGHUP: graceful reload" not in log, "the master reloaded although only a worker was signalled"


# -- min-worker-lifetime ---------------------------------------------------------------------------


def test_default_min_worker_lifetime_holds_off_max_requests(behind_nginx: BehindNginx) -> None:
    server, front = behind_nginx(PID_APP, "--processes", "2", "--max-requests", "3")
    wait_for(lambda: len(server.worker_pids()) == 2, 10, "two workers")
    before = server.worker_pids()
    answers = [front.request("GET", "/") for _ in range(30)]
    assert [status for status, _, _ in answers] == [200] * 30
    assert {int(body) for _, _, body in answers} <= before
    assert server.worker_pids() == before
    assert "recycling" not in server.log(), server.log()


def test_min_worker_lifetime_recycles_only_once_the_worker_has_lived_that_long(
    serve: Serve, nginx: StartNginx, app_file: AppFile, tmp_path: Path
) -> None:
    # nginx first: the worker's first half second is for requests, not for nginx to start.
    front = nginx(location(tmp_path / "app.sock"))
    server = serve(
        "--wsgi-file",
        str(app_file(PID_APP)),
        "--processes",
        "1",
        "--max-requests",
        "1",
        "--min-worker-lifetime",
        "1",
    )
    (pid,) = server.worker_pids()
    early = 0
    while age(pid) < 0.5:
        status, _, body = front.request("GET", "/")
        assert (status, int(body)) == (200, pid)
        early += 1
    assert early >= 1, f"the worker was already {age(pid):.2f} s old when the test could first ask"
    assert "recycling" not in server.log(), server.log()
    wait_for(lambda: age(pid) >= 1.2, 5, "the worker to be 1.2 s old")
    status, _, body = front.request("GET", "/")
    assert (status, int(body)) == (200, pid)  # served by the old worker, which then recycles
    wait_for(lambda: f"(pid {pid}) recycled: exited with code 17" in server.log(), 10, "the recycle")
    status, _, body = front.request("GET", "/")
    assert status == 200 and int(body) != pid
    assert f"(pid {pid}): {early + 1} requests served (max-requests 1), recycling" in server.log(), (
        server.log()
    )


# -- max-worker-lifetime ---------------------------------------------------------------------------


def test_max_worker_lifetime_replaces_every_worker_without_a_failed_request(
    behind_nginx: BehindNginx,
) -> None:
    server, front = behind_nginx(PID_APP, "--processes", "2", "--max-worker-lifetime", "1")
    wait_for(lambda: len(server.worker_pids()) == 2, 10, "two workers")
    before = server.worker_pids()
    with answers_in_background(front) as answers:
        wait_for(
            lambda: len(server.worker_pids()) == 2 and not server.worker_pids() & before,
            4.5,
            "both workers to be replaced",
        )
    statuses = {status for status, _ in answers}
    assert answers and statuses == {200}, f"{len(answers)} requests: {sorted(statuses)}"
    assert "lifetime reached" in server.log(), server.log()
    assert server.proc.poll() is None


# -- reload-on-rss and evil-reload-on-rss ----------------------------------------------------------


def test_reload_on_rss_recycles_a_growing_worker_between_requests(
    serve: Serve, nginx: StartNginx, app_file: AppFile, tmp_path: Path
) -> None:
    app = str(app_file(GROWING_APP))
    # A first server measures what an idle worker of this app weighs.
    probe = serve("--wsgi-file", app, "--processes", "1")
    front = nginx(probe)
    status, _, body = front.request("GET", "/")
    assert status == 200
    idle_mb = psutil.Process(int(body)).memory_info().rss >> 20
    probe.stop()

    limit = idle_mb + 40
    server = serve(
        "--wsgi-file",
        app,
        "--processes",
        "1",
        "--reload-on-rss",
        str(limit),
        "--min-worker-lifetime",
        "0",
        socket_path=tmp_path / "limited.sock",
    )
    front = nginx(server)
    answers = [front.request("GET", "/grow") for _ in range(12)]
    assert [status for status, _, _ in answers] == [200] * 12
    pids = [int(body) for _, _, body in answers]
    # 40 MB of headroom at 8 MB a request: the first worker serves several before it is over.
    assert pids.count(pids[0]) >= 3 and len(set(pids)) >= 2, pids
    log = server.log()
    assert f"> reload-on-rss {limit} MB, recycling" in log, log
    wait_for(
        lambda: f"(pid {pids[0]}) recycled: exited with code 17" in server.log(),
        10,
        "the first worker's exit",
    )


def test_evil_reload_on_rss_kills_a_worker_mid_request(behind_nginx: BehindNginx) -> None:
    server, front = behind_nginx(EVIL_APP, "--processes", "1", "--evil-reload-on-rss", "100")
    (pid,) = server.worker_pids()
    started = time.monotonic()
    status, _, _ = front.request("GET", "/grow", timeout=15)
    took = time.monotonic() - started
    assert status == 502 and took < 3.5, (status, took)
    assert f"EVIL RELOAD worker 1 (pid {pid})" in server.log(), server.log()
    wait_for(lambda: len(server.worker_pids()) == 1 and pid not in server.worker_pids(), 10, "the respawn")
    status, _, body = front.request("GET", "/")
    assert status == 200 and int(body) != pid
    assert server.proc.poll() is None


# -- touch-chain-reload ----------------------------------------------------------------------------


def _imported_by(tmp_path: Path) -> set[int]:
    path = tmp_path / "imported-by"
    return {int(line) for line in path.read_text().split()} if path.exists() else set()


def test_touch_chain_reload_replaces_workers_one_at_a_time_with_the_new_code(
    behind_nginx: BehindNginx, tmp_path: Path
) -> None:
    (tmp_path / "version.txt").write_text("v1")
    trigger = tmp_path / "chain.trigger"
    trigger.write_text("")
    server, front = behind_nginx(
        VERSION_APP, "--lazy-apps", "--processes", "3", "--touch-chain-reload", str(trigger)
    )
    wait_for(
        lambda: len(server.worker_pids()) == 3 and _imported_by(tmp_path) == server.worker_pids(),
        10,
        "three workers with the app imported",
    )
    before = server.worker_pids()
    assert front.request("GET", "/")[2].startswith(b"v1 ")
    assert "touch-chain-reload without lazy-apps" not in server.log()

    (tmp_path / "version.txt").write_text("v2")
    with answers_in_background(front) as answers:
        touch_ahead(trigger)
        wait_for(lambda: "chain reload: every worker replaced" in server.log(), 10, "the chain reload")
    statuses = {status for status, _ in answers}
    assert answers and statuses == {200}, f"{len(answers)} requests: {sorted(statuses)}"

    # The last retired worker may still be finishing its request when the chain is done.
    wait_for(lambda: not server.worker_pids() & before, 10, "the last retired worker to leave")
    now = server.worker_pids()
    assert len(now) == 3 and not now & before, (before, now)
    answers = [front.request("GET", "/")[2].decode().split() for _ in range(15)]
    assert {version for version, _ in answers} == {"v2"}, answers
    assert {int(pid) for _, pid in answers} <= now

    # One at a time: worker k's replacement accepts (and k is retired) before worker k+1 is asked.
    log = server.log()
    asked = [
        (m.start(), int(m["wid"]), int(m["pid"]))
        for m in re.finditer(r"worker (?P<wid>\d+) \(pid (?P<pid>\d+)\): chain reload; spawning", log)
    ]
    assert {pid for _, _, pid in asked} == before and [wid for _, wid, _ in asked] == [1, 2, 3], log
    for (_, wid, pid), (next_asked, _, _) in zip(asked, asked[1:], strict=False):
        retired = log.index(f"accepts: retiring pid {pid}\n")
        assert retired < next_asked, f"worker {wid} (pid {pid}) was not replaced before the next began\n{log}"
    assert f"accepts: retiring pid {asked[-1][2]}\n" in log


def test_touch_chain_reload_without_lazy_apps_warns_and_keeps_the_masters_code(
    behind_nginx: BehindNginx, tmp_path: Path
) -> None:
    (tmp_path / "version.txt").write_text("v1")
    trigger = tmp_path / "chain.trigger"
    trigger.write_text("")
    server, front = behind_nginx(VERSION_APP, "--processes", "2", "--touch-chain-reload", str(trigger))
    assert "touch-chain-reload without lazy-apps" in server.log(), server.log()
    wait_for(lambda: len(server.worker_pids()) == 2, 10, "two workers")
    before = server.worker_pids()
    (tmp_path / "version.txt").write_text("v2")
    touch_ahead(trigger)
    wait_for(lambda: "chain reload: every worker replaced" in server.log(), 10, "the chain reload")
    wait_for(lambda: len(server.worker_pids()) == 2, 10, "two workers")
    assert not server.worker_pids() & before
    # As the warning says: forked from the master, the new workers still run what it imported.
    answers = {front.request("GET", "/")[2].split()[0] for _ in range(10)}
    assert answers == {b"v1"}, answers


# -- threads ---------------------------------------------------------------------------------------


def test_threads_serve_requests_concurrently_in_one_process(behind_nginx: BehindNginx) -> None:
    server, front = behind_nginx(THREADS_APP, "--processes", "1", "--threads", "4")
    started = time.monotonic()
    answers = front.burst(8, concurrency=8)
    took = time.monotonic() - started
    assert [status for status, _, _ in answers] == [200] * 8
    assert took < 1.5, f"8 requests of 0.3 s took {took:.2f} s with 4 threads"
    fields = [body.decode().split() for _, _, body in answers]
    assert {multithread for multithread, _ in fields} == {"True"}
    assert len({ident for _, ident in fields}) >= 3, fields


def test_one_thread_is_not_multithread(behind_nginx: BehindNginx) -> None:
    server, front = behind_nginx(THREADS_APP, "--processes", "1")
    status, _, body = front.request("GET", "/")
    assert status == 200 and body.split()[0] == b"False"


def test_sigterm_with_threads_finishes_the_request_in_flight_and_exits_0(
    behind_nginx: BehindNginx, tmp_path: Path
) -> None:
    server, front = behind_nginx(THREADS_APP, "--processes", "1", "--threads", "4")
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(front.request, "GET", "/slow")
        wait_for(lambda: (tmp_path / "in-flight").exists(), 10, "the request to reach the app")
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(5) == 0, server.log()
        status, _, body = slow.result(5)
    assert status == 200 and body.startswith(b"True "), (status, body)


# -- post-buffering --------------------------------------------------------------------------------


def test_post_buffering_gives_the_app_a_buffered_body(behind_nginx: BehindNginx) -> None:
    server, front = behind_nginx(DIGEST_APP, "--post-buffering", "4096")
    small, large = os.urandom(1000), os.urandom(1 << 20)
    status, _, body = front.request("POST", "/", small)
    assert (status, body.decode().split()) == (200, ["BytesIO", hashlib.sha256(small).hexdigest()])
    status, _, body = front.request("POST", "/", large)
    kind, digest = body.decode().split()
    with tempfile.TemporaryFile() as probe:
        temporary_file = type(probe).__name__
    assert (status, kind, digest) == (200, temporary_file, hashlib.sha256(large).hexdigest())
    assert kind not in ("BytesIO", "Input")


def test_without_post_buffering_the_app_reads_the_socket(behind_nginx: BehindNginx) -> None:
    server, front = behind_nginx(DIGEST_APP)
    payload = os.urandom(1 << 20)
    status, _, body = front.request("POST", "/", payload)
    assert (status, body.decode().split()) == (200, ["Input", hashlib.sha256(payload).hexdigest()])


# -- stalled partial packets -----------------------------------------------------------------------


def test_stalled_partial_packets_do_not_hold_the_only_worker(behind_nginx: BehindNginx) -> None:
    timeout = 2.0
    server, front = behind_nginx(PID_APP, "--processes", "1", "--socket-timeout", str(int(timeout)))
    stalled: list[tuple[socket.socket, float]] = []
    try:
        for _ in range(20):
            sock = send(server.socket, b"\x00\x10\x00", timeout=None)  # 3 of the 4 header bytes, then nothing
            stalled.append((sock, time.monotonic()))
        started = time.monotonic()
        status, _, _ = front.request("GET", "/", timeout=5)
        took = time.monotonic() - started
        assert status == 200 and took < 1.0, (status, took)
        for n, (sock, opened) in enumerate(stalled):
            sock.settimeout(max(0.01, opened + timeout + 1 - time.monotonic()))
            try:
                assert sock.recv(16) == b"", f"connection {n} got data"
            except ConnectionResetError:
                pass
            except TimeoutError:
                raise AssertionError(
                    f"connection {n} still open {timeout + 1} s after it was opened"
                ) from None
            held = time.monotonic() - opened
            assert held >= timeout - 0.1, f"connection {n} closed after {held:.2f} s, before socket-timeout"
    finally:
        for sock, _ in stalled:
            sock.close()
    # Logged in aggregate: "closed N stalled connections" per line, or one such line per connection.
    wait_for(lambda: _expired(server.log()) >= 20, 5, "20 expiries in the log")
    assert _expired(server.log()) == 20, server.log()


def _expired(log: str) -> int:
    together = sum(int(n) for n in re.findall(r"closed (\d+) stalled connections", log))
    return together + log.count("timeout waiting for the request")


def test_a_core_stops_accepting_rather_than_run_out_of_descriptors(
    serve: Serve, nginx: StartNginx, app_file: AppFile
) -> None:
    """With 128 descriptors a worker parks at most 64 stalled peers; the rest wait in the backlog."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))  # inherited by the server only
    try:
        server = serve(
            "--wsgi-file",
            str(app_file(PID_APP)),
            "--processes",
            "1",
            "--socket-timeout",
            "2",
            "--listen",
            "256",
        )
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    front = nginx(server)
    stalled = []
    try:
        for _ in range(150):
            sock = send(server.socket, b"\x00\x10\x00", timeout=None)
            stalled.append(sock)
        wait_for(
            lambda: "connections are waiting for their packet; not accepting" in server.log(), 5, "the pause"
        )
        # Behind the stalled peers in the backlog, nginx's request waits for them to time out.
        status, _, _ = front.request("GET", "/", timeout=15)
        assert status == 200
    finally:
        for sock in stalled:
            sock.close()
    log = server.log()
    assert "Too many open files" not in log, log[-2000:]
    assert log.count("not accepting until some of them go") <= 5, log[-2000:]
    assert server.proc.poll() is None


def test_a_recycling_worker_with_a_stalled_peer_parked_is_still_replaced(behind_nginx: BehindNginx) -> None:
    # worker-reload-mercy 2: should the worker hang, the teardown's graceful stop ends in seconds.
    server, front = behind_nginx(
        PID_APP,
        "--processes",
        "1",
        "--max-requests",
        "1",
        "--min-worker-lifetime",
        "0",
        "--socket-timeout",
        "1",
        "--worker-reload-mercy",
        "2",
    )
    (pid,) = server.worker_pids()
    # Queued before nginx's request, so the worker has it parked when it starts recycling.
    with send(server.socket, b"\x00\x10\x00", timeout=None) as stalled:
        status, _, body = front.request("GET", "/")
        assert (status, int(body)) == (200, pid)  # its one request: the worker recycles after it
        started = time.monotonic()
        # The replacement accepts at once; the old worker finishes the parked connection (dropped
        # at socket-timeout, 1 s) and leaves.
        wait_for(
            lambda: f"(pid {pid}) recycled: exited with code 17" in server.log(), 4, "the old worker to go"
        )
        took = time.monotonic() - started
        assert stalled.recv(16) == b"", "the stalled connection was closed"
    status, _, body = front.request("GET", "/", timeout=4)
    assert status == 200 and int(body) != pid and took < 2.5, (status, body, took, server.log())


def test_max_requests_recycles_workers_without_a_failed_request(behind_nginx: BehindNginx) -> None:
    server, front = behind_nginx(
        SLEEP_APP,
        "--processes",
        "2",
        "--max-requests",
        "10",
        "--max-requests-delta",
        "5",
        "--min-worker-lifetime",
        "0",
    )
    answers = front.burst(200)
    assert [status for status, _, _ in answers] == [200] * 200
    # A recycling worker serves on until its replacement accepts, and its own replacement waits
    # until the process before it has left: how many more than max-requests a generation serves
    # depends on the machine's speed. Both worker ids must have been replaced at least once.
    pids = {body for _, _, body in answers}
    assert len(pids) >= 4, f"only {len(pids)} distinct workers served 200 requests"
    wait_for(
        lambda: server.log().count(") recycled: exited with code 17") >= 4, 10, "recycled workers to exit"
    )
    assert server.log().count("requests served (max-requests") >= 4

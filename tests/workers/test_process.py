"""The master and the workers as real processes: signals, reloads, stops, options, bad peers.

Every test starts binserve in a subprocess (``serve``), often with real nginx in front, and
synchronises by polling (the server's log, a file the app appends to, pgrep), never by sleeping.
The app below records every call in ``calls`` next to it, so a test can see that a slow request
has started, or that a ping never reached the app.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from binserve.protocol import PING, PONG, encode_header
from binserve.testing import (
    Nginx,
    Server,
    connect,
    exchange,
    free_port,
    location,
    parse_response,
    ping,
    read_all,
    request_packet,
    wait_for,
)

from support import APPS

APP = (APPS / "process_app.py").read_text()
SLOW_BODY = b"".join(b"%05d" % i for i in range(20000))


# -- helpers -------------------------------------------------------------------------------------
def get(address: str | Path, path: str, query: str = "", timeout: float = 10.0) -> tuple[int, bytes]:
    """A GET straight over the uwsgi protocol: (status, body); (0, b"") when closed unanswered."""
    return status_body(exchange(address, request_packet(f"{path}?{query}" if query else path), timeout))


def status_body(raw: bytes) -> tuple[int, bytes]:
    """Status and body of a raw HTTP/1.x response (status 0 when nothing came back)."""
    if not raw:
        return 0, b""
    reply = parse_response(raw)
    return reply.status, reply.body


def calls(tmp_path: Path) -> list[str]:
    """The paths the app has been called with, in order."""
    path = tmp_path / "calls"
    return [line.split(" ", 1)[1] for line in path.read_text().splitlines()] if path.exists() else []


def group_processes(pgid: int) -> str:
    """pgrep's listing of the processes still in a process group ("" when none)."""
    return subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.strip()


@pytest.fixture
def app(app_file: Callable[[str], Path]) -> Path:
    return app_file(APP)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    """Threads for requests that must run alongside the test.

    Not waited for: a thread stuck in a request ends when ``serve`` kills the server.
    """
    executor = ThreadPoolExecutor(4)
    yield executor
    executor.shutdown(wait=False, cancel_futures=True)


def start_slow(pool: ThreadPoolExecutor, tmp_path: Path, fetch: Callable[[], tuple[int, bytes]]) -> Future:
    """Start a slow request in a thread and wait until the app is running it."""
    before = calls(tmp_path).count("/slow")
    future = pool.submit(fetch)
    wait_for(lambda: calls(tmp_path).count("/slow") > before, 10, "the slow request to reach the app")
    return future


# -- signals: reload ------------------------------------------------------------------------------
@dataclass
class Reply:
    """One request of a :class:`Burst`: which client, when it started and ended, what came back."""

    client: int
    started: float
    ended: float
    status: int  # -1 when the request raised
    body: bytes  # the exception's repr when it raised


class Burst:
    """``clients`` threads, each making GET ``path`` requests through nginx back to back until stopped.

    A context manager: leaving it stops and joins the threads, so a failing test leaves none
    behind hammering a dead nginx. A request that raises is a :class:`Reply` with status -1.
    """

    def __init__(self, front: Nginx, path: str, clients: int) -> None:
        self.front = front
        self.path = path
        self.clients = clients
        self.replies: list[Reply] = []  # list.append is atomic: no lock needed
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(i,), name=f"burst-{i}", daemon=True)
            for i in range(clients)
        ]

    def _loop(self, client: int) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                status, _, body = self.front.request("GET", self.path, timeout=5)
            except Exception as exc:  # counted as a failure, not lost in the thread
                status, body = -1, repr(exc).encode()
            self.replies.append(Reply(client, started, time.monotonic(), status, body))

    def all_running(self) -> bool:
        """Whether every client has had at least one answer."""
        return len({reply.client for reply in self.replies}) == self.clients

    def __enter__(self) -> Burst:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        deadline = time.monotonic() + 6  # a request's own timeout is 5 s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [thread.name for thread in self._threads if thread.is_alive()]
        assert not stuck or exc_info[0] is not None, f"burst clients still in a request: {stuck}"


def test_sighup_reload_finishes_slow_request_and_drops_nothing(
    serve: Callable[..., Server],
    nginx: Callable[[str], Nginx],
    app: Path,
    tmp_path: Path,
    pool: ThreadPoolExecutor,
) -> None:
    """A reload under load: the request in flight finishes, and every connection made meanwhile is
    served (it waits in the listen backlog while no worker accepts), none refused or cut."""
    clients = 16
    server = serve("--wsgi-file", str(app), "--processes", "2", "--worker-reload-mercy", "10")
    front = nginx(location(server.socket))
    old_workers = server.wait_workers(2)

    budget = time.monotonic() + 20  # for everything below: a hang fails the test in bounded time

    def left() -> float:
        return max(0.1, budget - time.monotonic())

    # 3 s: still running when the SIGHUP comes, and it keeps an old worker (so the reload
    # window) alive for a while under the burst.
    slow = start_slow(pool, tmp_path, lambda: front.request("GET", "/slow?3", timeout=left())[::2])
    with Burst(front, "/pid", clients) as burst:
        wait_for(burst.all_running, left(), f"all {clients} clients to have an answer before the reload")
        hup_at = time.monotonic()
        os.kill(server.pid, signal.SIGHUP)
        assert not slow.done(), "the slow request ended before the SIGHUP: the test proves nothing"

        def replaced() -> bool:
            pids = server.worker_pids()
            return len(pids) == 2 and pids.isdisjoint(old_workers)

        wait_for(replaced, left(), "two new workers and none of the old ones")
        ready_at = time.monotonic()
        new_workers = server.worker_pids()
        wait_for(
            lambda: sum(1 for reply in burst.replies if reply.started > ready_at) >= 2 * clients,
            left(),
            "requests after the reload",
        )
    replies = list(burst.replies)

    status, body = slow.result(timeout=left())
    assert status == 200
    assert body == SLOW_BODY

    def served_by(reply: Reply) -> int:
        return int(reply.body) if reply.status == 200 and reply.body.isdigit() else -1

    in_window = [r for r in replies if hup_at <= r.started and r.ended <= ready_at]
    during = [r for r in replies if hup_at <= r.started <= ready_at]
    summary = (
        f"{len(replies)} requests by {clients} clients; {len(during)} started and {len(in_window)} also "
        f"ended in the {ready_at - hup_at:.2f} s between the SIGHUP and the new workers ready; "
        f"answered by old workers: {sum(served_by(r) in old_workers for r in replies)}, "
        f"by new ones: {sum(served_by(r) in new_workers for r in replies)}"
    )
    failed = [r for r in replies if r.status != 200]
    if failed:
        errors = [
            line for line in front.error_log().splitlines() if "[info]" not in line and "[notice]" not in line
        ]
        statuses = Counter(r.status for r in failed)
        pytest.fail(
            f"{len(failed)} requests failed (status: count {dict(statuses)}), first: {failed[:3]}\n"
            f"{summary}\nnginx errors:\n" + "\n".join(errors[-20:])
        )
    strangers = [r for r in replies if served_by(r) not in old_workers | new_workers]
    assert not strangers, f"answered by neither an old nor a new worker: {strangers[:3]}\n{summary}"
    assert len(in_window) > 0, summary
    late = [r for r in replies if r.started > ready_at and served_by(r) not in new_workers]
    assert not late, f"answered by an old worker after the reload: {late[:3]}\n{summary}"

    assert server.proc.poll() is None
    log = server.log()
    assert "SIGHUP: graceful reload" in log
    ready_pids = re.findall(r"\[binserve pid (\d+)\] master ready", log)
    assert ready_pids == [str(server.pid)] * 2, log
    assert "Traceback" not in log, log
    new_pid = int(front.request("GET", "/pid")[2])
    assert new_pid in new_workers


# -- signals: stop --------------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_graceful_stop_finishes_request_and_leaves_nothing(
    serve: Callable[..., Server], app: Path, tmp_path: Path, pool: ThreadPoolExecutor, signum: int
) -> None:
    pidfile = tmp_path / "binserve.pid"
    server = serve("--wsgi-file", str(app), "--processes", "2", "--pidfile", str(pidfile))
    assert pidfile.read_text().strip() == str(server.pid)
    server.wait_workers(2)

    slow = start_slow(pool, tmp_path, lambda: get(server.socket, "/slow", "1"))
    os.kill(server.pid, signum)
    assert slow.result(timeout=10) == (200, SLOW_BODY)

    assert server.proc.wait(timeout=10) == 0
    assert not server.socket.exists()
    assert not pidfile.exists()
    assert group_processes(server.pid) == ""
    assert f"{signal.Signals(signum).name}: graceful stop" in server.log()
    assert "master stopped" in server.log()


def test_sigquit_stops_fast_and_cuts_the_request(
    serve: Callable[..., Server], app: Path, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    server = serve("--wsgi-file", str(app), "--worker-reload-mercy", "30")

    slow = start_slow(pool, tmp_path, lambda: get(server.socket, "/slow", "30", timeout=40))
    started = time.monotonic()
    os.kill(server.pid, signal.SIGQUIT)
    code = server.proc.wait(timeout=10)
    elapsed = time.monotonic() - started
    assert elapsed < 3, f"SIGQUIT took {elapsed:.1f} s"
    assert code >= 0, "the master itself was killed instead of stopping"
    assert slow.result(timeout=5) == (0, b"")
    assert "SIGQUIT: fast stop" in server.log()
    assert not server.socket.exists()
    assert group_processes(server.pid) == ""


def test_graceful_stop_kills_a_worker_past_the_mercy(
    serve: Callable[..., Server], app: Path, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    server = serve("--wsgi-file", str(app), "--worker-reload-mercy", "1")
    (worker,) = server.wait_workers(1)

    slow = start_slow(pool, tmp_path, lambda: get(server.socket, "/slow", "30", timeout=40))
    started = time.monotonic()
    os.kill(server.pid, signal.SIGTERM)
    server.proc.wait(timeout=10)
    elapsed = time.monotonic() - started
    assert elapsed < 3, f"the stop took {elapsed:.1f} s with worker-reload-mercy 1"
    assert slow.result(timeout=5)[0] != 200
    log = server.log()
    assert f"worker (pid {worker}) still running past the deadline: SIGKILL" in log
    assert f"(pid {worker}) killed by signal 9 (SIGKILL)" in log
    assert not server.socket.exists()
    assert group_processes(server.pid) == ""


def test_worker_killed_with_sigkill_is_respawned(serve: Callable[..., Server], app: Path) -> None:
    server = serve("--wsgi-file", str(app), "--processes", "3")
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


# -- the app fails to load ------------------------------------------------------------------------
BROKEN = """
import os
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "imported"), "a") as f:
    f.write("x")
raise RuntimeError("kaboom at import time")
"""


@pytest.mark.parametrize("how", ["--module", "--wsgi-file"])
def test_app_that_fails_to_import_exits_at_once(
    serve: Callable[..., Server], app_file: Callable[[str], Path], tmp_path: Path, how: str
) -> None:
    broken = app_file(BROKEN)
    target = broken.stem if how == "--module" else str(broken)
    started = time.monotonic()
    server = serve(how, target, "--processes", "2", ready=False)
    code = server.proc.wait(timeout=15)
    assert time.monotonic() - started < 5
    assert code == 4
    log = server.log()
    assert "Traceback (most recent call last)" in log
    assert "RuntimeError: kaboom at import time" in log
    assert log.count("cannot load the app") == 1
    assert "spawned worker" not in log
    assert (tmp_path / "imported").read_text() == "x", "the app was imported more than once"
    assert not server.socket.exists()


@pytest.mark.parametrize("how", ["--module", "--wsgi-file"])
def test_missing_callable_is_named(serve: Callable[..., Server], app: Path, how: str) -> None:
    target = app.stem if how == "--module" else str(app)
    pidfile = app.parent / "binserve.pid"
    server = serve(how, target, "--callable", "nope", "--pidfile", str(pidfile), ready=False)
    assert server.proc.wait(timeout=15) == 4
    kind = f"module {app.stem}" if how == "--module" else f"wsgi-file {app}"
    assert f"cannot load the app: {kind} has no callable 'nope'" in server.log()
    assert "Traceback" not in server.log()
    assert not pidfile.exists(), "the pidfile of a server that never started is removed"


# -- options --------------------------------------------------------------------------------------
def test_chmod_socket(serve: Callable[..., Server], app: Path) -> None:
    server = serve("--wsgi-file", str(app), "--chmod-socket", "660")
    assert stat.S_IMODE(os.stat(server.socket).st_mode) == 0o660


def test_logto_collects_master_worker_and_app_output(
    serve: Callable[..., Server], app: Path, tmp_path: Path
) -> None:
    logfile = tmp_path / "logto.log"
    server = serve("--wsgi-file", str(app), "--logto", str(logfile))
    assert get(server.socket, "/print") == (200, b"printed")
    text = logfile.read_text()
    assert "master ready: 1 workers" in text
    assert "spawned worker 1" in text
    assert "GET /print => 200" in text
    assert "printed by the app" in text
    assert server.log() == ""


def test_disable_logging_keeps_errors(serve: Callable[..., Server], app: Path) -> None:
    server = serve("--wsgi-file", str(app), "--disable-logging")
    assert get(server.socket, "/quiet")[0] == 200
    assert get(server.socket, "/boom")[0] == 500
    log = server.log()
    assert "/quiet" not in log
    assert "=> 500" not in log
    assert "the app raised during GET /boom" in log
    assert "RuntimeError: the app blew up on purpose" in log


def test_request_lines_logged_by_default(serve: Callable[..., Server], app: Path) -> None:
    server = serve("--wsgi-file", str(app))
    assert get(server.socket, "/loud")[0] == 200
    assert re.search(
        r"\[pid: \d+\|worker: 1\|req: 1\] 127\.0\.0\.1 GET /loud => 200 \d+ bytes in", server.log()
    )


def test_env_option_is_visible_to_the_app(serve: Callable[..., Server], app: Path) -> None:
    server = serve("--wsgi-file", str(app), "--env", "GREETING=hello world=1")
    assert get(server.socket, "/env") == (200, b"hello world=1")


def test_chdir_and_pythonpath(serve: Callable[..., Server], tmp_path: Path) -> None:
    appdir = tmp_path / "site"
    libdir = tmp_path / "lib"
    appdir.mkdir()
    libdir.mkdir()
    (libdir / "helperlib.py").write_text("VALUE = 'from the pythonpath'\n")
    (appdir / "siteapp.py").write_text(
        "import os\nimport helperlib\n\n"
        "def application(environ, start_response):\n"
        "    body = f'{os.getcwd()}|{helperlib.VALUE}'.encode()\n"
        "    start_response('200 OK', [('Content-Length', str(len(body)))])\n"
        "    return [body]\n"
    )
    # The module is found only through chdir (the current directory is importable), the helper
    # only through pythonpath.
    server = serve("--chdir", str(appdir), "--pythonpath", str(libdir), "--module", "siteapp")
    assert get(server.socket, "/") == (200, f"{appdir}|from the pythonpath".encode())


def test_tcp_socket(serve: Callable[..., Server], app: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    server = serve("--wsgi-file", str(app), socket_path=address)
    assert get(address, "/tcp") == (200, b"ok")
    assert f"on {address}" in server.log()


def test_two_sockets_both_serve(serve: Callable[..., Server], app: Path, tmp_path: Path) -> None:
    second = tmp_path / "second.sock"
    server = serve("--wsgi-file", str(app), "--socket", str(second))
    assert ping(second)
    assert get(server.socket, "/one") == (200, b"ok")
    assert get(second, "/two") == (200, b"ok")
    assert f"on {server.socket}, {second}" in server.log()
    os.kill(server.pid, signal.SIGTERM)
    assert server.proc.wait(timeout=10) == 0
    assert not server.socket.exists() and not second.exists()


# -- limits and bad peers -------------------------------------------------------------------------
def test_vars_block_over_buffer_size_gets_431_and_an_orderly_close(
    serve: Callable[..., Server], nginx: Callable[[str], Nginx], app: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"
    server = serve("--wsgi-file", str(app), "--buffer-size", "4096", "--socket", address)
    packet = request_packet("/big", HTTP_X_BIG="b" * 6000)
    size = len(packet) - 4
    for where in (address, server.socket):
        with connect(where) as sock:
            sock.sendall(packet)
            first = sock.recv(65536)  # a reset would raise here or in read_all
            rest = read_all(sock)
        assert first.startswith(b"HTTP/1.0 431 "), first
        assert rest.endswith(b"bad uwsgi request\n") or first.endswith(b"bad uwsgi request\n")
    log = server.log()
    assert log.count(f"invalid request block size: {size} (max 4096)") == 2
    assert get(address, "/after") == (200, b"ok")

    front = nginx(location(server.socket))
    status, _, body = front.request("GET", "/big-through-nginx", headers={"X-Big": "c" * 6000})
    assert status == 431, (status, body, front.error_log()[-2000:])


def test_ping_is_answered_without_the_app(serve: Callable[..., Server], app: Path, tmp_path: Path) -> None:
    server = serve("--wsgi-file", str(app))
    assert exchange(server.socket, PING) == PONG
    assert exchange(server.socket, PING) == bytes.fromhex("64000001")
    assert calls(tmp_path) == []
    assert get(server.socket, "/") == (200, b"ok")
    assert calls(tmp_path) == ["/"]


def test_unsupported_modifier_is_logged_and_closed(
    serve: Callable[..., Server], app: Path, tmp_path: Path
) -> None:
    server = serve("--wsgi-file", str(app))
    pids = server.wait_workers(1)
    assert exchange(server.socket, encode_header(5, 0)) == b""
    assert "unavailable modifier requested: 5 (PSGI (Perl))" in server.log()
    assert calls(tmp_path) == []
    assert get(server.socket, "/") == (200, b"ok")
    assert server.worker_pids() == pids


def test_stalled_header_is_closed_at_socket_timeout(serve: Callable[..., Server], app: Path) -> None:
    server = serve("--wsgi-file", str(app), "--socket-timeout", "1")
    pids = server.wait_workers(1)
    with connect(server.socket, timeout=10) as sock:
        sock.sendall(PING[:3])
        started = time.monotonic()
        assert read_all(sock) == b""
        elapsed = time.monotonic() - started
    assert 0.7 < elapsed < 3, f"closed after {elapsed:.2f} s with socket-timeout 1"
    assert "timeout waiting for the request: 3 bytes of a packet arrived, then nothing" in server.log()
    assert get(server.socket, "/") == (200, b"ok")
    assert server.worker_pids() == pids


def test_malformed_packet_is_logged_once_and_the_worker_lives_on(
    serve: Callable[..., Server], app: Path, tmp_path: Path
) -> None:
    server = serve("--wsgi-file", str(app), "--processes", "2")
    pids = server.wait_workers(2)
    block = b"\x00\x00\x00\x00"  # a key of length 0, then a value of length 0
    answer = exchange(server.socket, encode_header(0, len(block)) + block)
    assert status_body(answer)[0] == 400
    lines = [line for line in server.log().splitlines() if "bad uwsgi packet" in line]
    assert len(lines) == 1, lines
    assert f"from unix:{server.socket} (peer pid {os.getpid()})" in lines[0]
    assert "uwsgi key cannot be null" in lines[0] and lines[0].endswith("connection closed")
    assert calls(tmp_path) == []
    assert get(server.socket, "/") == (200, b"ok")
    assert server.worker_pids() == pids


# -- signals around a reload ----------------------------------------------------------------------
def test_second_sighup_keeps_track_of_workers_still_retiring(
    serve: Callable[..., Server], app: Path, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    """Workers of the first image are still killed at worker-reload-mercy after a second reload."""
    server = serve("--wsgi-file", str(app), "--worker-reload-mercy", "1")
    (first,) = server.wait_workers(1)

    slow = start_slow(pool, tmp_path, lambda: get(server.socket, "/slow", "30", timeout=40))
    os.kill(server.pid, signal.SIGHUP)
    wait_for(lambda: len(server.worker_pids() - {first}) == 1, 10, "the first reload's worker")
    (second,) = server.worker_pids() - {first}
    os.kill(server.pid, signal.SIGHUP)
    wait_for(lambda: len(server.worker_pids() - {first, second}) == 1, 10, "the second reload's worker")
    wait_for(lambda: first not in server.worker_pids(), 4, f"worker {first} to be killed past the mercy")
    assert slow.result(timeout=5)[0] != 200
    assert get(server.socket, "/")[0] == 200


def test_sigterm_right_after_sighup_stops_gracefully(serve: Callable[..., Server], app: Path) -> None:
    """A stop that arrives while the master re-executes itself is neither lost nor fatal."""
    server = serve("--wsgi-file", str(app))
    server.wait_workers(1)
    os.kill(server.pid, signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "SIGHUP: graceful reload" not in server.log() and time.monotonic() < deadline:
        pass  # spin: the re-exec window is short
    os.kill(server.pid, signal.SIGTERM)
    try:
        code = server.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pytest.fail(f"SIGTERM sent during the reload was lost; log:\n{server.log()}")
    assert code == 0, f"master ended with {code}; log:\n{server.log()}"
    assert not server.socket.exists()
    assert group_processes(server.pid) == ""


def test_sigterm_serves_the_connections_already_queued(
    serve: Callable[..., Server], app: Path, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    server = serve("--wsgi-file", str(app))
    server.wait_workers(1)
    slow = start_slow(pool, tmp_path, lambda: get(server.socket, "/slow", "0.5"))
    queued = []
    for i in range(5):  # connected and sent while the only worker is busy: they wait in the backlog
        sock = connect(server.socket)
        sock.sendall(request_packet(f"/queued{i}"))
        queued.append(sock)
    os.kill(server.pid, signal.SIGTERM)
    assert slow.result(timeout=10) == (200, SLOW_BODY)
    for sock in queued:
        with sock:
            assert status_body(read_all(sock)) == (200, b"ok")
    assert server.proc.wait(timeout=10) == 0
    assert calls(tmp_path)[1:] == [f"/queued{i}" for i in range(5)]


def test_a_new_image_that_fails_after_its_probe_passed_stops_cleanly(
    serve: Callable[..., Server], app_file: Callable[[str], Path], tmp_path: Path
) -> None:
    """The code changes between the probe and the re-execution (the one window the probe leaves):
    in-flight requests finish, then binserve exits 4 and cleans up."""
    app = app_file(APP)
    pidfile = tmp_path / "master.pid"
    server = serve("--wsgi-file", str(app), "--processes", "2", "--pidfile", str(pidfile))
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(get, server.socket, "/slow", "1.5")
        wait_for(
            lambda: (tmp_path / "calls").exists() and "/slow" in (tmp_path / "calls").read_text(),
            10,
            "the slow request to start",
        )
        # Broken for the re-executed image only (it is handed the old workers): the probe passes.
        broken = "\nif '_BINSERVE_RETIRING' in os.environ:\n    raise ImportError('broken deploy')\n"
        app.write_text(APP + broken)
        server.proc.send_signal(signal.SIGHUP)
        assert slow.result(15) == (200, SLOW_BODY)
    assert server.proc.wait(15) == 4
    log = server.log()
    assert "the new image loads: re-executing" in log
    assert "broken deploy" in log and "the reload failed" in log
    assert not server.socket.exists() and not pidfile.exists()

    def group_gone() -> bool:
        try:
            os.killpg(server.pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(group_gone, 10, "every process of the server's group to exit")

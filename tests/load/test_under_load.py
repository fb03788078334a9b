"""The fault suite: binserve under load from wrk through real nginx while faults are injected.

Every scenario starts a real binserve behind a real nginx, loads it with wrk (one thread and a few
connections: wrk, nginx and binserve share two cores), injects its fault (SIGHUP to the master, a
touched chain-reload file, max-requests, SIGKILL to a worker, a request past harakiri, a leaking
app, 500 stalled connections, slow requests on threads) and records a row in the fault table
(tests/fault_report.py) before asserting, so the report shows the numbers of a failing scenario
too. wrk's Lua hooks collect the pids of the workers that answered (the app names its pid in an
X-Pid header) and print wrk's summary as one JSON line. Each scenario is bounded well under 60 s.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import selectors
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from fault_report import FaultTable

from binserve.testing import Nginx, Serve, Server, StartNginx, send, wait_for

from support import APPS, AppFile

pytestmark = pytest.mark.load  # wrk's many connections at once against binserve behind nginx

WRK = "/usr/bin/wrk"  # Debian's
LOAD_CAP_S = 55  # wrk's -d for loads that the scenario ends itself, once its faults are done
MIB = 1024 * 1024

APP = (APPS / "fault_suite_app.py").read_text()

RESULT_MARKER = "FAULT_RESULT "
# response() runs in wrk's thread and notes each new X-Pid; done() runs in wrk's main Lua state,
# which reaches the thread's globals only through thread:get.
WRK_LUA = """
pids = ""
local seen = {}
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function response(status, headers, body)
  local pid = headers["X-Pid"]
  if pid and not seen[pid] then
    seen[pid] = true
    pids = pids .. pid .. ","
  end
end

function done(summary, latency, requests)
  local all = ""
  for _, thread in ipairs(threads) do
    all = all .. thread:get("pids")
  end
  local e = summary.errors
  io.write(string.format(
    'FAULT_RESULT {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, '
    .. '"status": %d, "timeout": %d, "pids": "%s"}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout, all))
end
"""


@dataclass(frozen=True)
class WrkResult:
    """wrk's summary of one run."""

    requests: int
    duration_s: float
    non_2xx: int  # wrk's errors.status: answers of 400 and above (the app itself answers only 200)
    socket_errors: int  # connect, read, write and timeout errors
    pids: frozenset[int]  # the workers that answered

    @property
    def rate(self) -> float:
        """Completed requests per second."""
        return self.requests / self.duration_s if self.duration_s else 0.0


class Wrk:
    """wrk loading ``url`` in the background for at most ``duration`` seconds."""

    def __init__(self, script: Path, url: str, connections: int, duration: int) -> None:
        self.duration = duration
        argv = [WRK, "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "15s", "-s", str(script), url]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def result(self) -> WrkResult:
        """Wait for wrk to end and return its summary."""
        limit = self.duration + 30
        try:
            out, _ = self.proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"wrk did not finish within {limit} s") from None
        for line in out.splitlines():
            if line.startswith(RESULT_MARKER):
                summary = json.loads(line[len(RESULT_MARKER) :])
                return WrkResult(
                    requests=summary["requests"],
                    duration_s=summary["duration_us"] / 1e6,
                    non_2xx=summary["status"],
                    socket_errors=sum(summary[key] for key in ("connect", "read", "write", "timeout")),
                    pids=frozenset(int(pid) for pid in summary["pids"].split(",") if pid),
                )
        raise AssertionError(f"wrk exited with {self.proc.returncode} without a summary:\n{out[-2000:]}")

    def stop(self) -> WrkResult:
        """End the load now: on SIGINT wrk stops and still reports what it did."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.result()

    def kill(self) -> None:
        """Make sure wrk is gone (teardown)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)


@pytest.fixture
def stack(serve: Serve, nginx: StartNginx, app_file: AppFile) -> Callable[..., tuple[Server, Nginx]]:
    """binserve serving APP with ``args`` behind its own nginx, once every worker is up.

    Request logging is off: wrk's thousands of requests a second would only fill the log.
    """
    app = app_file(APP)

    def start(*args: str, processes: int = 2, socket_path: Path | None = None) -> tuple[Server, Nginx]:
        common = ("--wsgi-file", str(app), "--disable-logging", "--processes", str(processes))
        server = serve(*common, *args, socket_path=socket_path)
        wait_for(lambda: len(server.worker_pids()) == processes, 15, f"{processes} workers")
        front = nginx(server)
        status, _, _ = front.request("GET", "/")
        assert status == 200, f"binserve does not answer through nginx:\n{server.log()}"
        return server, front

    return start


@pytest.fixture
def load(tmp_path: Path) -> Iterator[Callable[..., Wrk]]:
    """Start wrk through an nginx: ``load(front, path="/", connections=8, duration=LOAD_CAP_S)``.

    With ``flowing`` (the default) it returns once wrk's requests reach nginx's access log, so a
    fault injected next lands under load. Any wrk still running is killed after the test.
    """
    script = tmp_path / "fault.lua"
    script.write_text(WRK_LUA)
    started: list[Wrk] = []

    def start(
        front: Nginx, path: str = "/", connections: int = 8, duration: int = LOAD_CAP_S, flowing: bool = True
    ) -> Wrk:
        access = front.dir / "nginx_access.log"
        before = access.stat().st_size
        wrk = Wrk(script, f"http://127.0.0.1:{front.port}{path}", connections, duration)
        started.append(wrk)
        if flowing:
            wait_for(lambda: access.stat().st_size > before, 10, "wrk's first requests in nginx's access log")
        return wrk

    yield start
    for wrk in started:
        wrk.kill()


def time_until(condition: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until ``condition`` held (polled every 10 ms), or None if it did not within ``timeout``."""
    started = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            return None
        time.sleep(0.01)


def pace(started: float, tick: int) -> None:
    """Sleep until ``tick`` seconds after ``started``: the scenario's once-a-second rhythm."""
    delay = started + tick - time.monotonic()
    if delay > 0:
        time.sleep(delay)


class WorkerWatch:
    """Polls the master's children, remembering every pid seen and the fewest alive at one time."""

    def __init__(self, server: Server, processes: int) -> None:
        self.server = server
        self.processes = processes
        self.seen = server.worker_pids()
        self.fewest = len(self.seen)

    def poll(self) -> set[int]:
        """The master's children now."""
        now = self.server.worker_pids()
        self.seen |= now
        self.fewest = min(self.fewest, len(now))
        return now

    def all_replaced(self, before: set[int], timeout: float) -> float | None:
        """Seconds until a full set of workers holds none of ``before`` (None: not within ``timeout``)."""
        return time_until(lambda: self._full_without(before), timeout)

    def respawned(self, victim: int, timeout: float) -> float | None:
        """Seconds until ``victim`` is reaped and a full set of workers runs again."""
        return time_until(lambda: self._full_without({victim}), timeout)

    def _full_without(self, gone: set[int]) -> bool:
        now = self.poll()
        return len(now) == self.processes and not now & gone

    @property
    def respawns(self) -> int:
        """Workers seen beyond the first generation."""
        return len(self.seen) - self.processes


def spawned_since_start(server: Server, processes: int) -> int:
    """Workers the master spawned after its first ``processes``, from its log."""
    return server.log().count("spawned worker") - processes


def no_failures(result: WrkResult) -> bool:
    """wrk completed requests, none with an error status (the app answers only 200) or a socket error."""
    return result.requests > 0 and result.non_2xx == 0 and result.socket_errors == 0


RELOADS = 20


def readied(server: Server, images: int) -> Callable[[], bool]:
    """A check that ``images`` master images have started: each logs "master ready" once its workers run."""
    return lambda: server.log().count("master ready") >= images


def test_graceful_reloads_once_a_second_fail_no_request(
    stack: Callable[..., tuple[Server, Nginx]], load: Callable[..., Wrk], fault_table: FaultTable
) -> None:
    server, front = stack()
    wrk = load(front)
    started = time.monotonic()
    took: list[float | None] = []
    for tick in range(1, RELOADS + 1):
        pace(started, tick)
        os.kill(server.pid, signal.SIGHUP)
        took.append(time_until(readied(server, tick + 1), 5))
        if took[-1] is None:
            break
    result = wrk.stop()
    done = [t for t in took if t is not None]
    fault_table.add(
        f"{RELOADS} graceful reloads (SIGHUP 1/s)",
        result.duration_s,
        result.requests,
        result.non_2xx,
        result.socket_errors,
        f"reloads {len(done)}, slowest {max(done, default=0):.2f} s, workers seen {len(result.pids)}",
    )
    assert len(done) == RELOADS, (
        f"reload {len(done) + 1} never logged 'master ready':\n{server.log()[-3000:]}"
    )
    assert no_failures(result), result
    assert server.proc.poll() is None, "the master did not survive the reloads"
    # Each generation of workers served: the reloads really happened under load.
    assert len(result.pids) > RELOADS, result.pids


CHAINS = 10
CHAIN_TIMEOUT_S = 10  # a chain of 3 lazy-apps workers takes about a second


def test_chain_reloads_replace_workers_one_at_a_time_without_a_failed_request(
    stack: Callable[..., tuple[Server, Nginx]],
    load: Callable[..., Wrk],
    fault_table: FaultTable,
    tmp_path: Path,
) -> None:
    trigger = tmp_path / "chain.trigger"
    trigger.write_text("")
    server, front = stack("--lazy-apps", "--touch-chain-reload", str(trigger), processes=3)
    watch = WorkerWatch(server, 3)
    wrk = load(front)
    budget = time.monotonic() + 45
    took: list[float] = []
    for chain in range(CHAINS):
        before = watch.poll()
        stamp = time.time() + chain + 1  # a new mtime for every touch
        os.utime(trigger, (stamp, stamp))
        chain_took = watch.all_replaced(before, min(CHAIN_TIMEOUT_S, budget - time.monotonic()))
        if chain_took is None:
            break
        took.append(chain_took)
    result = wrk.stop()
    fault_table.add(
        f"{CHAINS} chain reloads (lazy-apps, 3 workers)",
        result.duration_s,
        result.requests,
        result.non_2xx,
        result.socket_errors,
        f"chains {len(took)}, respawns {watch.respawns}, slowest chain {max(took, default=0):.2f} s, "
        f"fewest workers {watch.fewest}",
    )
    assert len(took) == CHAINS, f"chain {len(took) + 1} did not replace every worker:\n{server.log()[-3000:]}"
    assert no_failures(result), result
    assert watch.respawns >= 3 * CHAINS
    # Each replacement starts beside the worker it replaces: never fewer than 3 processes.
    assert watch.fewest >= 3, watch.fewest


def test_max_requests_recycles_many_workers_under_load_without_a_failed_request(
    stack: Callable[..., tuple[Server, Nginx]], load: Callable[..., Wrk], fault_table: FaultTable
) -> None:
    server, front = stack("--max-requests", "100", "--max-requests-delta", "20", "--min-worker-lifetime", "0")
    result = load(front, duration=20).result()
    respawns = spawned_since_start(server, 2)
    fault_table.add(
        "max-requests 100 (+0..20)",
        result.duration_s,
        result.requests,
        result.non_2xx,
        result.socket_errors,
        f"respawns {respawns}, workers seen {len(result.pids)}, "
        f"{result.requests / max(1, len(result.pids)):.0f} requests per worker",
    )
    assert no_failures(result), result
    # A worker asks for its replacement after 100..120 requests and serves on until the
    # replacement accepts (a few milliseconds, some dozens of requests at this rate).
    per_worker = result.requests / len(result.pids)
    assert per_worker < 240, (len(result.pids), result.requests)
    assert respawns >= len(result.pids) - 2


KILLS = 10
WORKER_THREADS = 1  # binserve's default: one request in flight per worker


def test_sigkilled_workers_lose_only_their_request_and_are_back_within_a_second(
    stack: Callable[..., tuple[Server, Nginx]], load: Callable[..., Wrk], fault_table: FaultTable
) -> None:
    server, front = stack()
    watch = WorkerWatch(server, 2)
    wrk = load(front)
    started = time.monotonic()
    recovered: list[float | None] = []
    for tick in range(1, KILLS + 1):
        pace(started, tick)
        victim = sorted(watch.poll())[tick % 2]
        os.kill(victim, signal.SIGKILL)
        recovered.append(watch.respawned(victim, 5))
        if recovered[-1] is None:
            break
    result = wrk.stop()
    times = [t for t in recovered if t is not None]
    fault_table.add(
        f"SIGKILL a worker 1/s (x{KILLS})",
        result.duration_s,
        result.requests,
        result.non_2xx,
        result.socket_errors,
        f"kills {len(recovered)}, max recovery {max(times, default=0):.2f} s",
    )
    assert len(times) == KILLS, f"kill {len(recovered)}: no full set of workers within 5 s"
    assert max(times) < 1.0, times
    # Only the requests in flight on the killed worker may fail: at most one per thread.
    assert result.requests > 0 and result.socket_errors == 0, result
    assert result.non_2xx <= KILLS * WORKER_THREADS, result
    assert server.log().count("killed by signal 9 (SIGKILL); respawning") == KILLS


HARAKIRI = 2
HARAKIRI_BOUND_S = 3.0  # the bound; the master wakes when the oldest request reaches harakiri


def test_harakiri_ends_a_slow_request_while_quick_ones_all_succeed(
    stack: Callable[..., tuple[Server, Nginx]], load: Callable[..., Wrk], fault_table: FaultTable
) -> None:
    server, front = stack("--harakiri", str(HARAKIRI))
    watch = WorkerWatch(server, 2)
    wrk = load(front, connections=4)
    before = watch.poll()
    started = time.monotonic()
    status, _, _ = front.request("GET", "/sleep?10", timeout=15)
    took = time.monotonic() - started
    respawn = time_until(lambda: len(now := watch.poll()) == 2 and now != before, 5)
    result = wrk.stop()
    log = server.log()
    kills = re.findall(r"HARAKIRI worker \d+ \(pid \d+\): GET /sleep\?10 running since .*", log)
    fault_table.add(
        f"harakiri {HARAKIRI} s, GET /sleep?10 under load",
        result.duration_s,
        result.requests,
        result.non_2xx,
        result.socket_errors,
        f"slow request ended with {status} after {took:.2f} s; harakiri kills {len(kills)}",
    )
    assert status == 502 and took < HARAKIRI_BOUND_S, (status, took)
    assert no_failures(result), result
    # One kill, naming the request: the worker respawned in its place must not pay for it again.
    assert len(kills) == 1, log[-3000:]
    assert respawn is not None, "no worker replaced the one harakiri killed"


def worker_rss(server: Server) -> list[int]:
    """Resident bytes of each of the master's children (one that exits meanwhile is skipped)."""
    sizes = []
    for child in psutil.Process(server.pid).children():
        try:
            sizes.append(child.memory_info().rss)
        except psutil.Error:
            continue
    return sizes


LEAK_LIMIT_MB = 20  # above an idle worker's RSS
LEAK_LOAD_S = 8


def test_reload_on_rss_recycles_leaking_workers_without_a_failed_request(
    stack: Callable[..., tuple[Server, Nginx]],
    load: Callable[..., Wrk],
    fault_table: FaultTable,
    tmp_path: Path,
) -> None:
    probe, probe_front = stack(socket_path=tmp_path / "probe.sock")
    for _ in range(4):
        assert probe_front.request("GET", "/")[0] == 200
    idle = max(worker_rss(probe))
    probe.stop()
    limit_mb = math.ceil(idle / MIB) + LEAK_LIMIT_MB
    server, front = stack("--reload-on-rss", str(limit_mb), "--min-worker-lifetime", "0")
    wrk = load(front, path="/leak", connections=4, duration=LEAK_LOAD_S)
    peak = 0
    sampling_ends = time.monotonic() + LEAK_LOAD_S + 10
    while wrk.proc.poll() is None and time.monotonic() < sampling_ends:
        peak = max(peak, *worker_rss(server), 0)
        time.sleep(0.05)  # the sampling interval of the RSS probe, not a wait for a state
    result = wrk.result()
    respawns = spawned_since_start(server, 2)
    fault_table.add(
        f"leak 1 MB/request, reload-on-rss {limit_mb} MB",
        result.duration_s,
        result.requests,
        result.non_2xx,
        result.socket_errors,
        f"respawns {respawns}, workers seen {len(result.pids)}, idle RSS {idle / MIB:.1f} MB, "
        f"peak RSS {peak / MIB:.1f} MB",
    )
    assert no_failures(result), result
    assert respawns > 0, f"no worker was recycled:\n{server.log()[-3000:]}"
    # A life ends about 20 requests in (1 MB each): far more workers than one per 40 requests.
    assert len(result.pids) >= result.requests / 40, (len(result.pids), result.requests)
    assert peak <= (limit_mb + 8) * MIB, f"a worker reached {peak / MIB:.1f} MB, limit {limit_mb} MB"


STALLED = 500
SOCKET_TIMEOUT = 2
PARTIAL_HEADER = b"\x00\x10\x00"  # 3 of the 4 bytes of a uwsgi header (modifier1 0, 16 bytes of vars)


@pytest.fixture
def many_files() -> Iterator[None]:
    """Descriptors for the stalled sockets here and in the binserve started after (it inherits them)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * STALLED
    if soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= wanted, "RLIMIT_NOFILE cannot be raised enough"
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_stalled_partial_packets_do_not_stop_other_clients_and_are_closed_after_socket_timeout(
    many_files: None,
    stack: Callable[..., tuple[Server, Nginx]],
    load: Callable[..., Wrk],
    fault_table: FaultTable,
) -> None:
    server, front = stack("--socket-timeout", str(SOCKET_TIMEOUT), "--listen", "1024")
    unstalled = load(front, duration=1).result()
    selector = selectors.DefaultSelector()
    stalled: list[socket.socket] = []
    closed_after: list[float] = []
    try:
        for _ in range(STALLED):
            sock = send(server.socket, PARTIAL_HEADER, timeout=5)
            stalled.append(sock)
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, sock)
        last_opened = time.monotonic()
        wrk = load(front, duration=SOCKET_TIMEOUT, flowing=False)
        # Watched past the bound, so the report says how late a late close was.
        deadline = last_opened + SOCKET_TIMEOUT + 1 + 2
        while len(closed_after) < STALLED and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                sock = key.data
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""  # reset: closed as well
                if not data:
                    closed_after.append(time.monotonic() - last_opened)
                    selector.unregister(sock)
        result = wrk.result()
    finally:
        selector.close()
        for sock in stalled:
            sock.close()
    latest = max(closed_after, default=0.0)
    fault_table.add(
        f"{STALLED} stalled partial packets, socket-timeout {SOCKET_TIMEOUT} s",
        result.duration_s,
        result.requests,
        result.non_2xx,
        result.socket_errors,
        f"closed {len(closed_after)}/{STALLED}, last after {latest:.2f} s; "
        f"{result.rate:.0f} req/s during the stall vs {unstalled.rate:.0f} before",
    )
    assert no_failures(result), result
    assert result.rate >= unstalled.rate / 4, (result.rate, unstalled.rate)
    assert len(closed_after) == STALLED, f"only {len(closed_after)} of {STALLED} stalled sockets were closed"
    assert latest <= SOCKET_TIMEOUT + 1, latest


THREADS_RATE_GOAL = 70  # req/s: 2 workers x 4 threads x 10 req/s each is 80 at best


def test_threads_serve_slow_requests_concurrently(
    stack: Callable[..., tuple[Server, Nginx]], load: Callable[..., Wrk], fault_table: FaultTable
) -> None:
    _, front = stack("--threads", "4")
    status, _, body = front.request("GET", "/sleep?0.1")
    result = load(front, path="/sleep?0.1", connections=16, duration=5).result()
    fault_table.add(
        "threads 4 x 2 workers, 100 ms requests",
        result.duration_s,
        result.requests,
        result.non_2xx,
        result.socket_errors,
        f"{result.rate:.1f} req/s (goal {THREADS_RATE_GOAL}); {body.decode(errors='replace')}",
    )
    assert status == 200 and b"multithread=True" in body, (status, body)
    assert no_failures(result), result
    assert result.rate >= THREADS_RATE_GOAL, result.rate

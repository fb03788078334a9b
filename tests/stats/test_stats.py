"""The stats server against a running binserve: the numbers agree with the request log.

Real processes: binserve with ``--stats``, nginx in front of it, the real ``uwsgitop``
from PyPI in tmux, and listen queues filled on purpose with raw connections. Every document
is read the way any client would: connect, read to EOF, decode (msgpack, JSON, or either
wrapped in an HTTP response). Workers with several threads are built in a scoreboard directly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest

from binserve.protocol import PING, PONG
from binserve.scoreboard import Scoreboard
from binserve.stats import CpuMeter, Recent, instance_document
from binserve.testing import (
    Nginx,
    Serve,
    Server,
    StartNginx,
    connect,
    exchange,
    executable,
    free_port,
    read_all,
    request_packet,
    send,
    wait_for,
)
from binserve.tools import statsdoc

from support import APPS, Tmux

APP = APPS / "stats_app.py"

# The default request line does not name the worker id: these servers log it with log-format.
LOG_FORMAT = "[pid: %(pid)|worker: %(wid)] %(addr) %(method) %(uri) => %(status) %(size) bytes in %(secs) s"
LOG_LINE = re.compile(
    r"^\[pid: (?P<pid>\d+)\|worker: (?P<wid>\d+)\] .* => (?P<status>\d+) "
    r"(?P<bytes>\d+) bytes in (?P<secs>[\d.]+) s$",
    re.M,
)


# ---------------------------------------------------------------------------------------------
# Reading stats documents and request logs


@dataclass
class Fetched:
    """One stats document as a client received it."""

    doc: dict[str, Any]
    encoding: str  # "msgpack" or "json"
    body: bytes  # the encoded document, without any HTTP head
    http_status: str | None = None  # the status line when the document came wrapped in HTTP
    http_headers: dict[str, str] = field(default_factory=dict)


def read_to_eof(address: str | Path, timeout: float = 5.0) -> bytes:
    """Connect to a unix path or HOST:PORT and read until the server closes."""
    with connect(address, timeout) as sock:
        return read_all(sock)


def fetch(address: str | Path) -> Fetched:
    """One stats document, decoded as the format doc says a reader tells encodings apart."""
    raw = read_to_eof(address)
    status, headers = None, {}
    if raw.startswith(b"HTTP/"):
        head, sep, raw = raw.partition(b"\r\n\r\n")
        assert sep, f"HTTP stats response without the end of its headers: {head[:200]!r}"
        status_line, *lines = head.decode("latin-1").split("\r\n")
        status = status_line
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if raw[:1] == b"{":
        return Fetched(json.loads(raw), "json", raw, status, headers)
    return Fetched(msgpack.unpackb(raw), "msgpack", raw, status, headers)


def stats(address: str | Path) -> dict[str, Any]:
    """Just the document."""
    return fetch(address).doc


def wait_stats(
    address: str | Path, condition: Callable[[dict[str, Any]], bool], what: str, timeout: float = 10.0
) -> dict[str, Any]:
    """Poll the stats until ``condition(doc)``; return that document, or fail showing the last one."""
    last: dict[str, Any] = {}

    def check() -> bool:
        last["doc"] = stats(address)
        return condition(last["doc"])

    try:
        wait_for(check, timeout, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the last stats document: {last.get('doc')}") from None
    return last["doc"]


def by_id(doc: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The document's workers keyed by worker id."""
    return {w["id"]: w for w in doc["workers"]}


@dataclass
class LoggedWorker:
    """What the request log says about one worker id."""

    pids: set[int] = field(default_factory=set)
    lines: int = 0
    bytes: int = 0
    ms: list[float] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"log(pids={self.pids}, lines={self.lines}, bytes={self.bytes}, ms={sum(self.ms):.2f})"


def request_log(text: str) -> dict[int, LoggedWorker]:
    """The request log lines of a server log, summed per worker id."""
    workers: dict[int, LoggedWorker] = defaultdict(LoggedWorker)
    for match in LOG_LINE.finditer(text):
        logged = workers[int(match["wid"])]
        logged.pids.add(int(match["pid"]))
        logged.lines += 1
        logged.bytes += int(match["bytes"])
        logged.ms.append(float(match["secs"]) * 1000)
    return dict(workers)


def logged_requests(server: Server) -> int:
    return sum(w.lines for w in request_log(server.log()).values())


# ---------------------------------------------------------------------------------------------
# Raw uwsgi clients


def response(sock: socket.socket) -> bytes:
    """The rest of a raw response, up to the server's close."""
    with sock:
        return read_all(sock)


def get(address: str | Path, uri: str) -> bytes:
    """One whole request straight to binserve."""
    return exchange(address, request_packet(uri))


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """The file whose existence lets /block return."""
    return tmp_path / "release"


@pytest.fixture
def stats_server(serve: Serve, tmp_path: Path, release: Path) -> Callable[..., tuple[Server, str]]:
    """``stats_server(*args, stats=None)`` starts binserve serving stats_app with ``--stats``.

    Returns the server and the stats address (a unix path in tmp_path unless ``stats`` is given).
    """

    def start(*args: str, stats: str | None = None, **kwargs: Any) -> tuple[Server, str]:
        address = stats or str(tmp_path / "stats.sock")
        server = serve(
            "--wsgi-file",
            str(APP),
            "--stats",
            address,
            "--log-format",
            LOG_FORMAT,
            *args,
            env={"STATS_RELEASE": str(release)},
            **kwargs,
        )
        # The stats server is up with the master: the first document is there at once.
        wait_for(lambda: _answers(address), 10, f"the stats server on {address}")
        return server, address

    return start


def _answers(address: str) -> bool:
    try:
        return bool(read_to_eof(address, timeout=1.0))
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# 1. The stats agree with the request log


REQUESTS = 500
THREADS = 8
PROCESSES = 4


def load_through_nginx(front: Nginx, count: int) -> Counter[int]:
    """``count`` GETs of varied sizes from several threads; the statuses nginx returned."""
    sizes = [(i * 37) % 3001 for i in range(count)]  # 0..3000 bytes, no two neighbours alike

    def one(size: int) -> int:
        status, _, body = front.request("GET", f"/bytes?{size}")
        assert status != 200 or len(body) == size
        return status

    with ThreadPoolExecutor(THREADS) as pool:
        return Counter(pool.map(one, sizes))


@pytest.mark.parametrize(
    ("variant", "args", "tcp"),
    [
        ("msgpack", [], False),
        ("json", ["--stats-format", "json"], False),
        ("http-json", ["--stats-format", "json", "--stats-http"], True),
        ("http-msgpack", ["--stats-http"], True),
    ],
)
def test_request_counts_match_the_log(
    variant: str,
    args: list[str],
    tcp: bool,
    stats_server: Callable[..., tuple[Server, str]],
    nginx: StartNginx,
) -> None:
    address = f"127.0.0.1:{free_port()}" if tcp else None
    server, address = stats_server("--processes", str(PROCESSES), *args, stats=address)
    front = nginx(server)

    statuses = load_through_nginx(front, REQUESTS)
    assert statuses == Counter({200: REQUESTS}), f"nginx answered {statuses}"

    # A request is logged after its counters are written: once the log holds N lines, the
    # stats must show exactly N (not N-1 because of lag, not N+1 because of a ping or double count).
    wait_for(lambda: logged_requests(server) >= REQUESTS, 15, f"{REQUESTS} request log lines")
    fetched = fetch(address)
    doc = fetched.doc

    expected_encoding = "json" if "json" in variant else "msgpack"
    assert fetched.encoding == expected_encoding
    if variant.startswith("http"):
        assert fetched.http_status is not None and fetched.http_status.split()[1] == "200"
        assert fetched.http_headers["content-type"] == f"application/{expected_encoding}"
        assert int(fetched.http_headers["content-length"]) == len(fetched.body)
    else:
        assert fetched.http_status is None

    logged = request_log(server.log())
    assert sum(w.lines for w in logged.values()) == REQUESTS
    assert sum(w["requests"] for w in doc["workers"]) == REQUESTS
    assert sorted(by_id(doc)) == list(range(1, PROCESSES + 1))
    assert set(logged) <= set(by_id(doc)), f"log has worker ids {sorted(logged)}"

    for wid, worker in by_id(doc).items():
        seen = logged.get(wid, LoggedWorker())
        where = f"worker {wid}: stats {worker} vs log {seen}"
        assert worker["requests"] == seen.lines, where
        assert worker["tx"] == seen.bytes, where
        assert worker["cores"][0]["requests"] == worker["requests"], where
        assert worker["status"] == "idle" and worker["current"] is None, where
        assert worker["exceptions"] == 0, where
        if seen.lines:
            assert seen.pids == {worker["pid"]}, where
            # Both timings start at the same instant; the log's ends a little later.
            log_us = sum(seen.ms) * 1000
            assert 0 < worker["running_time"] <= log_us + 10 * seen.lines, where
            assert worker["running_time"] >= 0.5 * log_us - 1000, where
            assert 0 < worker["avg_rt"] <= max(seen.ms) * 1000 + 10, where
    assert {w["pid"] for w in doc["workers"]} == server.worker_pids()
    assert doc["pid"] == server.pid

    # The JSON keeps uWSGI's layout (uwsgitop reads these keys); msgpack holds the same model.
    top_keys = {"version", "listen_queue", "listen_queue_errors", "signal_queue", "load", "pid", "uid", "gid"}
    assert top_keys <= doc.keys(), top_keys - doc.keys()
    assert doc["version"].startswith("binserve ")
    worker_keys = {
        "accepting",
        "delta_requests",
        "harakiri_count",
        "signals",
        "rss",
        "vsz",
        "last_spawn",
        "cpu",
    }
    assert worker_keys <= doc["workers"][0].keys(), worker_keys - doc["workers"][0].keys()

    # Reading again changes nothing: no phantom requests from the stats server itself.
    again = stats(address)
    assert [w["requests"] for w in again["workers"]] == [w["requests"] for w in doc["workers"]]
    assert [w["tx"] for w in again["workers"]] == [w["tx"] for w in doc["workers"]]


def test_exceptions_are_counted(stats_server: Callable[..., tuple[Server, str]], nginx: StartNginx) -> None:
    server, address = stats_server("--processes", "2")
    front = nginx(server)
    for _ in range(3):
        assert front.request("GET", "/raise")[0] == 500
    for _ in range(2):
        assert front.request("GET", "/bytes?10")[0] == 200

    wait_for(lambda: logged_requests(server) >= 5, 10, "5 request log lines")
    doc = stats(address)
    assert sum(w["exceptions"] for w in doc["workers"]) == 3
    assert sum(w["requests"] for w in doc["workers"]) == 5
    failures = Counter(int(m["wid"]) for m in LOG_LINE.finditer(server.log()) if m["status"] == "500")
    for wid, worker in by_id(doc).items():
        assert worker["exceptions"] == failures.get(wid, 0), f"worker {wid}: {worker} vs log {failures}"


def test_respawn_changes_pid_and_count(stats_server: Callable[..., tuple[Server, str]]) -> None:
    server, address = stats_server("--processes", "2")
    before = by_id(stats(address))
    assert {w["pid"] for w in before.values()} == server.worker_pids()
    assert all(w["respawn_count"] >= 1 for w in before.values()), before
    victim = before[1]

    os.kill(victim["pid"], signal.SIGKILL)

    def respawned(doc: dict[str, Any]) -> bool:
        now = by_id(doc)[1]
        return now["pid"] != victim["pid"] and now["pid"] in server.worker_pids()

    after = by_id(wait_stats(address, respawned, "worker 1 to be respawned with a new pid in the stats", 15))
    assert after[1]["respawn_count"] == victim["respawn_count"] + 1
    assert after[1]["last_spawn"] >= victim["last_spawn"]
    assert after[1]["rss"] > 0 and after[1]["vsz"] > 0
    assert after[2]["pid"] == before[2]["pid"]
    assert after[2]["respawn_count"] == before[2]["respawn_count"]
    assert {w["pid"] for w in after.values()} == server.worker_pids()


def test_busy_worker_shows_its_current_request(
    stats_server: Callable[..., tuple[Server, str]], release: Path
) -> None:
    server, address = stats_server("--processes", "2")
    doc = stats(address)
    for worker in doc["workers"]:
        assert worker["status"] == "idle" and worker["current"] is None, worker
        assert worker["rss"] > 0 and worker["vsz"] > 0, worker
        assert worker["vsz"] >= worker["rss"], worker
    assert doc["sockets"] == [
        {
            "name": str(server.socket),
            "proto": "uwsgi",
            "queue": 0,
            "max_queue": doc["sockets"][0]["max_queue"],
            "shared": 0,
            "can_offload": 0,
        }
    ]
    assert doc["sockets"][0]["max_queue"] > 0

    sent_at = time.time()
    blocked = send(server.socket, request_packet("/block?who=stats-test"))
    try:
        workers = wait_stats(
            address,
            lambda doc: any(w["status"] == "busy" for w in doc["workers"]),
            "a busy worker in the stats",
        )["workers"]
        busy = [w for w in workers if w["status"] == "busy"]
        idle = [w for w in workers if w["status"] == "idle"]
        assert len(busy) == 1 and len(idle) == 1, workers
        current = busy[0]["current"]
        assert current is not None, busy[0]
        assert current["method"] == "GET"
        assert current["uri"] == "/block?who=stats-test"
        assert sent_at - 1.0 <= current["since"] <= time.time(), (sent_at, current)
        assert busy[0]["cores"][0]["in_request"] == 1
        assert idle[0]["current"] is None
        assert idle[0]["cores"][0]["in_request"] == 0
    finally:
        release.touch()
    assert response(blocked).endswith(b"released")
    doc = wait_stats(
        address,
        lambda doc: all(w["status"] == "idle" and w["current"] is None for w in doc["workers"]),
        "every worker idle again",
    )
    assert sum(w["requests"] for w in doc["workers"]) == 1


def test_current_request_is_the_one_in_progress(
    stats_server: Callable[..., tuple[Server, str]], release: Path
) -> None:
    """``current`` shows the request in progress, not leftovers of a longer earlier one."""
    server, address = stats_server("--processes", "1")
    long_uri = "/bytes?5&pad=" + "p" * 150
    assert get(server.socket, long_uri).endswith(b"xxxxx")
    done = wait_stats(address, lambda doc: doc["workers"][0]["requests"] == 1, "the first request counted")
    assert done["workers"][0]["current"] is None

    cases = [("/block", "/block"), ("/block?" + "q" * 400, None)]  # None: a prefix is enough
    for uri, expected in cases:
        release.unlink(missing_ok=True)
        blocked = send(server.socket, request_packet(uri))
        try:
            doc = wait_stats(
                address, lambda doc: doc["workers"][0]["status"] == "busy", f"busy with {uri[:20]}"
            )
            current = doc["workers"][0]["current"]
            assert current is not None and current["method"] == "GET", current
            if expected is not None:
                assert current["uri"] == expected, current
            else:  # kept in a fixed-size slot: cut, but never anything other than the URI's start
                assert len(current["uri"]) >= 100 and uri.startswith(current["uri"]), current
        finally:
            release.touch()
        assert response(blocked).endswith(b"released")


UWSGI_CORE_FIELDS = {
    "id",
    "requests",
    "static_requests",
    "routed_requests",
    "offloaded_requests",
    "write_errors",
    "read_errors",
    "in_request",
    "vars",
    "req_info",
}


def test_each_thread_is_a_core_of_its_worker() -> None:
    """One ``cores`` entry per serving thread; the worker's figures are their sums."""
    board = Scoreboard(2, 3)
    for wid in (1, 2):
        board.spawned(wid, os.getpid())
    slots = [board.slot(1, core) for core in range(3)]
    start = time.time()
    for core, slot in enumerate(slots):
        for _ in range(core + 1):
            slot.begin(start - 60, "GET", "/done")
            slot.end(0.25, 100, False)  # exact in binary: the sums are too
    slots[1].begin(start - 2, "POST", "/newer")
    slots[2].begin(start - 5, "GET", "/older?q=1")

    doc = instance_document(board, [], start, CpuMeter(), Recent(), True)
    workers = by_id(doc)
    busy, idle = workers[1], workers[2]
    assert all(set(core) == UWSGI_CORE_FIELDS for w in (busy, idle) for core in w["cores"])
    assert [core["id"] for core in busy["cores"]] == [0, 1, 2]
    assert [core["requests"] for core in busy["cores"]] == [1, 2, 3]
    assert [core["in_request"] for core in busy["cores"]] == [0, 1, 1]
    assert [core["req_info"] for core in busy["cores"]] == [
        {},
        {"request_start": int(start - 2)},
        {"request_start": int(start - 5)},
    ]
    assert busy["requests"] == busy["delta_requests"] == 6 and busy["tx"] == 600
    assert busy["running_time"] == 1_500_000 and busy["avg_rt"] == 250_000
    # The worker's request is the one running longest: harakiri would kill it for that one.
    assert busy["status"] == "busy"
    assert busy["current"] == {"method": "GET", "uri": "/older?q=1", "since": start - 5}
    assert statsdoc.current_request(busy, start) == "GET /older?q=1 (5s)"
    assert idle["status"] == "idle" and idle["current"] is None and idle["requests"] == 0
    assert [core["in_request"] for core in idle["cores"]] == [0, 0, 0]


# ---------------------------------------------------------------------------------------------
# 2. The real uwsgitop reads binserve's JSON


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    session = Tmux(tmp_path / "tmux.sock", "uwsgitop")
    try:
        yield session
    finally:
        session.kill()


# WID % PID REQ RPS EXC SIG STATUS AVG RSS VSZ TX ReSpwn HC RunT LastSpwn
WORKER_ROW = re.compile(
    r"^ (?P<wid>\d+)\s+(?P<pct>[\d.]+)\s+(?P<pid>\d+)\s+(?P<req>\d+)\s+\d+\s+(?P<exc>\d+)\s+\d+\s+"
    r"(?P<status>\w+)\s+\d+ms\s+(?P<rss>\S+)\s+\S+\s+\S+\s+(?P<respawn>\d+)\s+\d+\s+\S+\s+"
    r"(?P<spawned>\d\d:\d\d:\d\d)\s*$"
)


@dataclass
class Row:
    """One worker row of uwsgitop's screen."""

    pid: int
    requests: int
    exceptions: int
    status: str
    rss: str
    respawn: int


def worker_rows(screen: str) -> dict[int, Row]:
    """uwsgitop's complete worker rows (every column down to LastSpwn), by worker id."""
    rows = {}
    for line in screen.splitlines():
        match = WORKER_ROW.match(line)
        if match:
            rows[int(match["wid"])] = Row(
                int(match["pid"]),
                int(match["req"]),
                int(match["exc"]),
                match["status"],
                match["rss"],
                int(match["respawn"]),
            )
    return rows


def test_real_uwsgitop_shows_the_workers(stats_server: Callable[..., tuple[Server, str]], tmux: Tmux) -> None:
    server, address = stats_server("--processes", "2", "--stats-format", "json")
    pids = server.worker_pids()
    assert len(pids) == 2
    # If uwsgitop dies, its traceback and exit status stay on the screen instead of closing the pane.
    tmux.start(f"{executable('uwsgitop')} {address}; echo uwsgitop exited with $?; exec cat", 200, 50)
    last = {"screen": ""}

    def shows(requests: int) -> bool:
        screen = last["screen"] = tmux.screen()
        assert "Traceback" not in screen and "exited with" not in screen, screen
        rows = worker_rows(screen)
        return (
            screen.startswith("uwsgi-binserve ")
            and f" - req: {requests} - " in screen
            and sorted(rows) == [1, 2]
            and {row.pid for row in rows.values()} == pids
            and sum(row.requests for row in rows.values()) == requests
        )

    def wait_screen(requests: int, what: str) -> dict[int, Row]:
        try:
            wait_for(lambda: shows(requests), 15, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; uwsgitop's screen:\n{last['screen']}") from None
        return worker_rows(last["screen"])

    rows = wait_screen(0, "uwsgitop's header and two worker rows")
    header = last["screen"].splitlines()[0]
    assert header.startswith(f"uwsgi-{stats(address)['version']} - "), header
    assert " - lq: 0 - " in header, header
    for row in rows.values():
        assert row.status == "idle" and row.exceptions == 0 and row.respawn == 1, row
        assert row.rss not in ("0", "0B"), row  # psutil's RSS, where uWSGI shows 0 without memory-report

    for size in (10, 20, 30, 40, 50, 60):
        assert get(server.socket, f"/bytes?{size}").endswith(b"x" * size)
    rows = wait_screen(6, "uwsgitop to show 6 requests")
    by_worker = by_id(stats(address))
    for wid, row in rows.items():
        assert (row.pid, row.requests) == (by_worker[wid]["pid"], by_worker[wid]["requests"]), (
            row,
            by_worker[wid],
        )
    assert "Traceback" not in last["screen"]


# ---------------------------------------------------------------------------------------------
# 3. A listen queue filled on purpose


BACKLOG = 128
PENDING = 50


def somaxconn_capped(backlog: int) -> int:
    return min(backlog, int(Path("/proc/sys/net/core/somaxconn").read_text()))


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_listen_queue_filled_on_purpose(
    kind: str,
    stats_server: Callable[..., tuple[Server, str]],
    tmp_path: Path,
    release: Path,
    opened: list[socket.socket],
) -> None:
    uwsgi_address: str | Path = tmp_path / "app.sock" if kind == "unix" else f"127.0.0.1:{free_port()}"
    server, address = stats_server("--processes", "1", "--listen", str(BACKLOG), socket_path=uwsgi_address)
    if kind == "tcp":
        # Server puts --socket first; a second --socket would add a listener, so check it has one.
        assert server.args[server.args.index("--socket") + 1] == uwsgi_address
    doc = stats(address)
    assert len(doc["sockets"]) == 1
    assert doc["sockets"][0]["name"] == str(uwsgi_address)
    assert doc["sockets"][0]["proto"] == "uwsgi"
    assert doc["sockets"][0]["queue"] == 0 and doc["listen_queue"] == 0

    def queued(n: int) -> Callable[[dict[str, Any]], bool]:
        return lambda doc: doc["sockets"][0]["queue"] == n and doc["listen_queue"] == n

    try:
        # The single worker takes one request and stays in it.
        blocker = send(uwsgi_address, request_packet("/block"))
        opened.append(blocker)
        wait_stats(address, lambda doc: doc["workers"][0]["status"] == "busy", "the worker to be busy")

        # 50 more connections that nobody accepts; each already carries a ping to answer later.
        for _ in range(PENDING):
            client = connect(uwsgi_address)
            opened.append(client)
            client.sendall(PING)

        doc = wait_stats(address, queued(PENDING), f"{PENDING} connections in the listen queue")
        assert doc["sockets"][0]["max_queue"] == somaxconn_capped(BACKLOG)
        assert doc["workers"][0]["status"] == "busy"
        assert doc["workers"][0]["current"]["uri"] == "/block"
    finally:
        release.touch()  # also when an assertion failed: the worker must not wait 30 s
    wait_stats(address, queued(0), "the listen queue to drain", 15)
    assert response(blocker).endswith(b"released")
    for client in opened[1:]:
        assert client.recv(len(PONG)) == PONG
    wait_stats(address, lambda doc: doc["workers"][0]["status"] == "idle", "the worker to be idle")

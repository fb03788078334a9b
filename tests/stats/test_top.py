"""binserve-top: the ``--once`` text and the curses view, against fake stats servers and a real uWSGI.

The fakes are threads serving a fixed or changing document over a unix socket (msgpack, JSON, or
either wrapped in HTTP, optionally waiting for a request first as uWSGI's ``stats-http`` does). The
curses view runs for real in a private tmux server; the screen is read with ``capture-pane``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from binserve.testing import executable, wait_for
from binserve.tools import statsdoc, top

from support import Tmux

FIXTURES = Path(__file__).resolve().parent.parent / "top_fixtures"

Doc = dict[str, Any]


# ------------------------------------------------------------------------------------------- fakes


def worker(wid: int, requests: int, rss: int, cpu: float, avg_rt: int, **extra: Any) -> Doc:
    """A binserve worker entry."""
    entry: Doc = {
        "id": wid,
        "pid": 4000 + wid,
        "accepting": 1,
        "requests": requests,
        "delta_requests": requests,
        "exceptions": wid - 1,
        "harakiri_count": 0,
        "signals": 0,
        "signal_queue": 0,
        "status": "idle",
        "rss": rss,
        "vsz": rss * 4,
        "running_time": 1000 * requests,
        "last_spawn": int(time.time()) - 60,
        "respawn_count": 1,
        "tx": 300 * requests,
        "avg_rt": avg_rt,
        "cpu": cpu,
        "current": None,
        "apps": [],
        "cores": [],
    }
    entry.update(extra)
    return entry


def instance_doc(base: int = 0) -> Doc:
    """A binserve instance with three workers whose orders by requests, rss, cpu and avg all differ."""
    now = time.time()
    return {
        "version": "binserve 0.1.0",
        "listen_queue": 3,
        "listen_queue_errors": 0,
        "signal_queue": 0,
        "load": 3,
        "pid": 4000,
        "uid": 0,
        "gid": 0,
        "cwd": "/srv",
        "uptime": 3725.0,
        "time": now,
        "locks": [],
        "sockets": [
            {"name": "/run/app.sock", "proto": "uwsgi", "queue": 3, "max_queue": 100, "shared": 0},
            {"name": "127.0.0.1:9000", "proto": "uwsgi", "queue": 0, "max_queue": 128, "shared": 0},
        ],
        "workers": [
            worker(1, 100 + base, 30 << 20, 5.0, 2000),
            worker(
                2,
                10 + base,
                90 << 20,
                1.0,
                9000,
                status="busy",
                current={"method": "POST", "uri": "/upload?x=1", "since": now - 7},
            ),
            worker(3, 50 + base, 10 << 20, 40.0, 500),
        ],
    }


def encode(doc: Doc, encoding: str) -> bytes:
    """A document as msgpack, json, or ``http-json`` / ``http-msgpack``."""
    if encoding.endswith("json"):
        body = json.dumps(doc, indent="\t").encode()
        ctype = "application/json"
    else:
        body = msgpack.packb(doc)
        ctype = "application/msgpack"
    if encoding.startswith("http-"):
        head = f"HTTP/1.0 200 OK\r\nConnection: close\r\nContent-Type: {ctype}\r\n\r\n"
        return head.encode() + body
    return body


class FakeStats:
    """A stats server in a thread: each connection gets one document, then is closed.

    ``doc`` is a dict or a callable returning one (a changing document). With ``wait_request`` the
    server first reads a request, as uWSGI's ``--stats-http`` does.
    """

    def __init__(
        self,
        address: Path | tuple[str, int],
        doc: Doc | Callable[[], Doc] | bytes,
        encoding: str = "msgpack",
        wait_request: bool = False,
    ) -> None:
        self.doc = doc
        self.encoding = encoding
        self.wait_request = wait_request
        self.served = 0
        if isinstance(address, Path):
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(str(address))
            self.address = str(address)
        else:
            self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.listener.bind(address)
            host, port = self.listener.getsockname()[:2]
            self.address = f"{host}:{port}"
        self.path = address if isinstance(address, Path) else None
        self.listener.listen(16)
        self.listener.settimeout(0.05)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def payload(self) -> bytes:
        """The bytes of the current document."""
        if isinstance(self.doc, bytes):
            return self.doc
        doc = self.doc() if callable(self.doc) else self.doc
        return encode(doc, self.encoding)

    def serve(self) -> None:
        """Accept until stopped."""
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                try:
                    conn.settimeout(2)
                    if self.wait_request:
                        conn.recv(4096)
                    conn.sendall(self.payload())
                    self.served += 1
                except OSError:
                    pass

    def stop(self) -> None:
        """Stop serving and remove the socket: the server 'goes away'."""
        self.stopping.set()
        self.thread.join(5)
        self.listener.close()
        if self.path is not None and self.path.exists():
            self.path.unlink()


@pytest.fixture
def fakes() -> Iterator[Callable[..., FakeStats]]:
    """Start fake stats servers: ``fakes(address, doc, encoding=..., wait_request=...)``; stopped after."""
    started: list[FakeStats] = []

    def start(*args: Any, **kwargs: Any) -> FakeStats:
        fake = FakeStats(*args, **kwargs)
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.stop()


def once(address: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run ``binserve-top ADDR --once``."""
    return subprocess.run(
        [executable("binserve-top"), address, "--once", *extra], capture_output=True, text=True, timeout=20
    )


def rows(text: str) -> dict[str, list[str]]:
    """Rows of ``--once`` output or a screen, keyed by their first token, for lines after the titles."""
    found: dict[str, list[str]] = {}
    started = False
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if fields[0] in ("WID", "VASSAL"):
            started = True
            continue
        if started:
            found.setdefault(fields[0], fields)
    return found


def worker_order(screen: str) -> list[int]:
    """Worker ids in screen order (lines after the title line that start with a number)."""
    return [int(key) for key in rows(screen) if key.isdigit()]


# -------------------------------------------------------------------------------------- --once text


@pytest.mark.process
def test_once_msgpack(tmp_path: Path, fakes: Callable[..., FakeStats]) -> None:
    """One snapshot as text: header with queue per socket, then one row per worker beginning with its id."""
    fake = fakes(tmp_path / "s.sock", instance_doc())
    result = once(fake.address)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("binserve 0.1.0 - pid 4000 - up 1h02m - requests 160")
    assert lines[1] == "listen queue: /run/app.sock 3/100, 127.0.0.1:9000 0/128"
    assert lines[2].split() == top.titles(top.WORKER_COLUMNS).split()
    found = rows(result.stdout)
    assert list(found) == ["1", "2", "3"]
    assert found["1"][:13] == [
        "1",
        "4001",
        "100",
        "-",
        "0",
        "idle",
        "2.0ms",
        "30.0M",
        "5.0",
        "29.3K",
        "1",
        "0",
        "-",
    ]
    assert found["2"][5:9] == ["busy", "9.0ms", "90.0M", "1.0"]
    assert found["2"][12:] == ["POST", "/upload?x=1", "(7s)"]
    sorted_run = once(fake.address, "--sort", "memory")
    assert [line.split()[0] for line in sorted_run.stdout.splitlines()[3:]] == ["2", "1", "3"]


@pytest.mark.process
def test_once_json_and_http(tmp_path: Path, fakes: Callable[..., FakeStats]) -> None:
    """uWSGI's JSON, plain, HTTP-wrapped over a unix socket that waits for a request, and http://."""
    sample = json.loads((FIXTURES / "uwsgi-stats.json").read_text())
    plain = fakes(tmp_path / "j.sock", sample, encoding="json")
    wrapped = fakes(tmp_path / "h.sock", sample, encoding="http-json", wait_request=True)
    tcp = fakes(("127.0.0.1", 0), instance_doc(), encoding="http-msgpack", wait_request=True)
    for address in (plain.address, wrapped.address):
        result = once(address)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("uwsgi-2.0.21-debian - pid 10348 - requests 16")
        found = rows(result.stdout)
        assert found["1"][:10] == ["1", "10350", "9", "-", "0", "idle", "0.4ms", "11.3M", "-", "2.0K"]
        assert found["2"][:5] == ["2", "10351", "7", "-", "2"]
    result = once(f"http://{tcp.address}/")
    assert result.returncode == 0, result.stderr
    assert list(rows(result.stdout)) == ["1", "2", "3"]


@pytest.mark.process
def test_once_emperor(tmp_path: Path, fakes: Callable[..., FakeStats]) -> None:
    """An emperor document: one row per vassal beginning with its id, uWSGI states derived."""
    sample = json.loads((FIXTURES / "uwsgi-emperor-stats.json").read_text())
    fake = fakes(tmp_path / "e.sock", sample, encoding="json")
    result = once(fake.address)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("uwsgi-2.0.21-debian emperor - pid 11498 - vassals 2")
    found = rows(result.stdout)
    assert found["a.ini"][:6] == ["a.ini", "11500", "running", "0", "1", "-"]
    assert found["crashy.ini"][:3] == ["crashy.ini", "-", "throttled"]
    assert "attempt 2" in " ".join(found["crashy.ini"])


@pytest.mark.process
def test_once_errors(tmp_path: Path, fakes: Callable[..., FakeStats]) -> None:
    """Exit 1 with one clear line when nothing listens or the bytes are not a stats document."""
    result = once(str(tmp_path / "nobody.sock"))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"binserve-top: cannot connect to {tmp_path / 'nobody.sock'}: No such file or directory"
    ]
    garbage = fakes(tmp_path / "g.sock", b"\xc1 this is not msgpack")
    result = once(garbage.address)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "invalid msgpack" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.process
def test_once_real_uwsgi(tmp_path: Path) -> None:
    """A real uWSGI master with 2 workers and --stats: rows for workers 1 and 2."""
    app = tmp_path / "app.py"
    app.write_text(
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'hi']\n"
    )
    stats = tmp_path / "stats.sock"
    log = open(tmp_path / "uwsgi.log", "wb")
    args = [executable("uwsgi"), "--socket", str(tmp_path / "app.sock"), "--wsgi-file", str(app)]
    args += ["--processes", "2", "--master", "--stats", str(stats)]
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    try:

        def answers() -> bool:
            assert proc.poll() is None, (tmp_path / "uwsgi.log").read_text()
            try:
                doc = statsdoc.fetch(str(stats), 1.0)
            except statsdoc.StatsError:
                return False
            return len(doc.get("workers", [])) == 2 and all(w.get("pid") for w in doc["workers"])

        wait_for(answers, 20, "uWSGI's stats server")
        result = once(str(stats))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("uwsgi-2.")
        found = rows(result.stdout)
        assert sorted(found) == ["1", "2"]
        for wid in ("1", "2"):
            assert int(found[wid][1]) > 0 and found[wid][5] in ("idle", "busy")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
        log.close()


# ------------------------------------------------------------------------------------------- curses


class TopSession(Tmux):
    """binserve-top running in a detached session of a private tmux server (its socket in tmp_path)."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        super().__init__(tmp_path / f"tmux-{time.monotonic_ns()}.sock", "top")
        self.err = tmp_path / "top.err"
        command = (
            " ".join(_quote(a) for a in [executable("binserve-top"), *args]) + f" 2>{_quote(str(self.err))}"
        )
        self.start(command, 160, 40)

    def screen(self) -> str:
        """The visible pane, once binserve-top has not exited."""
        if not self.alive():
            raise AssertionError(f"binserve-top exited: {self.err.read_text(errors='replace')}")
        return super().screen()

    def wait(self, condition: Callable[[str], bool], what: str, timeout: float = 10) -> str:
        """Poll the screen until ``condition`` holds; return that screen."""
        seen: list[str] = [""]

        def check() -> bool:
            seen[0] = self.screen()
            return condition(seen[0])

        try:
            wait_for(check, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; screen:\n{seen[0]}") from None
        return seen[0]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


@pytest.fixture
def tmux_top(tmp_path: Path) -> Iterator[Callable[..., TopSession]]:
    """Run ``binserve-top ARGS`` in tmux: ``tmux_top(*args)``; the session is always killed."""
    started: list[TopSession] = []

    def start(*args: str) -> TopSession:
        session = TopSession(tmp_path, *args)
        started.append(session)
        return session

    yield start
    for session in started:
        session.kill()


@pytest.mark.process
def test_tmux_workers_sort_keys_and_quit(
    tmp_path: Path, fakes: Callable[..., FakeStats], tmux_top: Callable[..., TopSession]
) -> None:
    """Rows appear in id order with a live req/s; m/r/c/a reorder them, a second m reverses, q quits."""
    ticks = iter(range(10**6))
    fake = fakes(tmp_path / "s.sock", lambda: instance_doc(base=5 * next(ticks)))
    view = tmux_top(fake.address, "--interval", "0.2")
    # The pane may start at tmux's default size and grow to 160x40 just after: wait for whole rows.
    screen = view.wait(lambda s: "POST /upload?x=1 (7s)" in s, "worker rows with the current request")
    assert worker_order(screen) == [1, 2, 3]
    assert "listen queue: /run/app.sock 3/100, 127.0.0.1:9000 0/128" in screen
    view.wait(lambda s: re.search(r" - [1-9][0-9.]* req/s - ", s) is not None, "a total req/s")
    assert all(fields[3] != "-" for fields in rows(view.screen()).values() if fields[0].isdigit())
    for key, order in (("m", [2, 1, 3]), ("r", [1, 3, 2]), ("c", [3, 1, 2]), ("a", [2, 1, 3])):
        view.keys(key)
        view.wait(lambda s, order=order: worker_order(s) == order, f"order {order} after {key!r}")
    view.keys("m")
    view.wait(lambda s: worker_order(s) == [2, 1, 3] and "sort: memory desc" in s, "memory desc")
    view.keys("m")
    view.wait(lambda s: worker_order(s) == [3, 1, 2] and "sort: memory asc" in s, "memory reversed")
    view.keys("i")
    view.wait(lambda s: worker_order(s) == [1, 2, 3], "id order again")
    view.keys("q")
    wait_for(lambda: not view.alive(), 5, "binserve-top to quit on q")
    assert view.err.read_text() == ""


@pytest.mark.process
def test_tmux_emperor_drill_down(
    tmp_path: Path, fakes: Callable[..., FakeStats], tmux_top: Callable[..., TopSession]
) -> None:
    """Enter on a vassal shows its workers (from its own stats server), Esc comes back; no address: a note."""
    vassal = fakes(tmp_path / "v.sock", instance_doc(), encoding="json")
    now = time.time()
    emperor: Doc = {
        "version": "binserve 0.1.0",
        "pid": 3000,
        "uid": 0,
        "gid": 0,
        "cwd": str(tmp_path),
        "emperor": [str(tmp_path / "vassals")],
        "emperor_tyrant": 0,
        "throttle_level": 0,
        "time": now,
        "vassals": [
            {"id": "app.ini", "pid": 3001, "born": now - 100, "loyal": 1, "ready": 1, "accepting": 1,
             "respawns": 0, "state": "running", "stats": vassal.address, "throttled_until": None, "why": ""},
            {"id": "bad.ini", "pid": None, "born": now - 100, "loyal": 0, "ready": 0, "accepting": 0,
             "respawns": 4, "state": "waiting", "stats": None, "throttled_until": now + 3600,
             "why": "exited with status 1"},
        ],
        "blacklist": [],
    }  # fmt: skip
    fake = fakes(tmp_path / "e.sock", emperor)
    view = tmux_top(fake.address, "--interval", "0.2")
    screen = view.wait(lambda s: {"app.ini", "bad.ini"} <= set(rows(s)), "vassal rows")
    assert rows(screen)["bad.ini"][:5] == ["bad.ini", "-", "waiting", "4", "0"]
    assert ": exited with status 1" in screen and "throttled until" in screen
    view.keys("Enter")
    screen = view.wait(lambda s: worker_order(s) == [1, 2, 3], "the vassal's worker rows")
    assert "vassal app.ini" in screen and "binserve 0.1.0 - pid 4000" in screen
    view.keys("m")
    view.wait(lambda s: worker_order(s) == [2, 1, 3], "sorting inside the vassal")
    view.keys("Escape")
    view.wait(lambda s: "app.ini" in rows(s) and not worker_order(s), "back to the vassals")
    view.keys("j", "Enter")
    view.wait(lambda s: "vassal bad.ini has no stats address" in s, "the no-stats message")
    view.keys("Up", "Enter")
    view.wait(lambda s: worker_order(s) == [2, 1, 3], "app.ini again (sort kept)")
    view.keys("Left")
    view.wait(lambda s: "bad.ini" in rows(s), "back again")
    view.keys("q")
    wait_for(lambda: not view.alive(), 5, "binserve-top to quit on q")


@pytest.mark.process
def test_tmux_server_goes_away_and_resize(
    tmp_path: Path, fakes: Callable[..., FakeStats], tmux_top: Callable[..., TopSession]
) -> None:
    """A vanished server is an error in the status line and retried; a tiny terminal says so."""
    path = tmp_path / "s.sock"
    fake = fakes(path, instance_doc(), encoding="http-msgpack")
    view = tmux_top(str(path), "--interval", "0.2")
    view.wait(lambda s: worker_order(s) == [1, 2, 3], "worker rows")
    fake.stop()
    screen = view.wait(lambda s: "error: cannot connect to" in s and "retrying" in s, "the error line")
    assert worker_order(screen) == [1, 2, 3]  # the last data stays on screen
    fakes(path, instance_doc(base=1000), encoding="json")
    view.wait(lambda s: "error:" not in s and "requests 3160" in s, "recovery")
    view.run("resize-window", "-t", view.name, "-x", "30", "-y", "4")
    view.wait(lambda s: "terminal too small" in s, "the too-small message")
    view.run("resize-window", "-t", view.name, "-x", "120", "-y", "30")
    view.wait(lambda s: worker_order(s) == [1, 2, 3], "rows after growing back")
    view.keys("q")
    wait_for(lambda: not view.alive(), 5, "binserve-top to quit on q")
    assert "Traceback" not in view.err.read_text()

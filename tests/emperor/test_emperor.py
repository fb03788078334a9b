"""The emperor with real processes: vassals spawned, reloaded, stopped and throttled.

Each test writes vassal ini files into a directory under tmp_path, starts
``python -m binserve --emperor DIR`` in its own session (log in tmp_path; vassals inherit its
stdout/stderr, so their errors land in the same log) and polls: sockets that answer, the
emperor's log, its state file, the vassals' processes. The ``emperor`` fixture always tears
the whole process group down and fails the test if a vassal is left behind.
"""

from __future__ import annotations

import os
import pwd
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from binserve.config import load
from binserve.emperor import Emperor
from binserve.emperor.plan import Wait, plan
from binserve.emperor.watch import scan
from binserve.testing import EmperorProcess, Nginx, StartEmperor, alive, executable, location, ping, wait_for
from binserve.testing.emperor import leftovers

from support import APPS, AppFile, get, good_vassal, reachable_prefix, system_users, write_vassal

APP = (APPS / "emperor_app.py").read_text()

# Raises at import; every attempt appends the time first, so the test can measure the throttle.
BROKEN_APP = """
import os
import time

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "attempts"), "a") as attempts:
    attempts.write(f"{time.time()}\\n")
raise RuntimeError("broken on purpose")
"""

BROKEN_THROTTLED = (
    r"vassal broken\.ini died \d+ time\(s\) without serving a request: throttled, next attempt in (\d+) s"
)
WAITING_NOTE = r"throttled for [\d.]+ s more: died \d+ time\(s\) without serving a request"


# -- helpers ---------------------------------------------------------------------------------
def status_text(target: Path) -> str:
    """What ``binserve --emperor-status TARGET`` prints."""
    out = subprocess.run(
        [sys.executable, "-m", "binserve", "--emperor-status", str(target)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def status_row(text: str, name: str) -> str:
    """The --emperor-status row for vassal ``name`` ("" if there is none)."""
    return next((line for line in text.splitlines() if line.split(" ", 1)[0] == name), "")


@pytest.fixture
def app(app_file: AppFile) -> Path:
    return app_file(APP, "app.py")


class Load:
    """Client threads looping GETs through nginx over the active prefixes until stopped."""

    def __init__(self, server: Nginx, prefixes: list[str], threads: int = 6) -> None:
        self.server = server
        self.active = list(prefixes)
        self.ok: Counter[str] = Counter()
        self.failures: list[tuple[str, str]] = []
        self.pids: dict[str, set[int]] = {p: set() for p in prefixes}
        self.in_flight: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(threads)]
        for thread in self.threads:
            thread.start()

    def _loop(self, offset: int) -> None:
        turn = offset
        while not self.done.is_set():
            with self.lock:
                prefixes = list(self.active)
                if not prefixes:
                    return
                prefix = prefixes[turn % len(prefixes)]
                self.in_flight[prefix] += 1
            turn += 1
            try:
                status, _, body = self.server.request("GET", prefix, timeout=10)
                text = body.decode(errors="replace")
                good = status == 200 and text.split(" ", 1)[0] == prefix.strip("/")
                outcome = text if good else f"{status} {text[:200]!r}"
            except Exception as exc:  # every failure is counted, whatever it is
                good, outcome = False, repr(exc)
            with self.lock:
                self.in_flight[prefix] -= 1
                if good:
                    self.ok[prefix] += 1
                    self.pids[prefix].add(int(outcome.split()[1]))
                else:
                    self.failures.append((prefix, outcome))

    def pause(self, prefix: str) -> None:
        """No more requests to ``prefix``; returns once those in flight have finished."""
        with self.lock:
            self.active.remove(prefix)
        wait_for(lambda: self.in_flight[prefix] == 0, 15, f"requests to {prefix} to finish")

    def served_by(self, prefix: str, pids: set[int]) -> bool:
        with self.lock:
            return bool(self.pids[prefix] & pids)

    def stop(self) -> None:
        self.done.set()
        for thread in self.threads:
            thread.join(15)


# -- three vassals behind nginx, under load --------------------------------------------------
def test_three_vassals_behind_nginx_under_load(
    tmp_path: Path, vassal_dir: Path, app: Path, emperor: StartEmperor, nginx: Any
) -> None:
    socks = {name: tmp_path / f"{name}.sock" for name in ("a", "b", "c", "d", "broken")}
    files = {name: write_vassal(vassal_dir, name, socks[name], app) for name in ("a", "b", "c")}
    broken_dir = tmp_path / "broken"
    broken_dir.mkdir()
    (broken_dir / "app.py").write_text(BROKEN_APP)
    write_vassal(vassal_dir, "broken", socks["broken"], broken_dir / "app.py", processes=1)

    emp = emperor(vassal_dir)
    for name in ("a", "b", "c"):
        emp.wait_serving(name, socks[name])
    server = nginx("\n".join(location(socks[n], f"/{n}/") for n in ("a", "b", "c")))
    load = Load(server, ["/a/", "/b/", "/c/"])
    try:
        wait_for(lambda: min(load.ok[p] for p in ("/a/", "/b/", "/c/")) >= 20, 20, "load on every vassal")

        # Touch b: only b gets new workers; its master re-executes in place.
        masters = {n: emp.master(n) for n in ("a", "b", "c")}
        before = {n: emp.workers(n) for n in ("a", "b", "c")}
        assert all(len(before[n]) == 2 for n in before), before
        mtime = files["b"].stat().st_mtime
        os.utime(files["b"], (mtime + 10, mtime + 10))
        emp.wait_log(r"vassal b\.ini changed: graceful reload")

        def b_renewed() -> bool:
            now = emp.workers("b")
            return len(now) == 2 and not now & before["b"]

        wait_for(b_renewed, 15, "b's workers to be replaced")
        new_b = emp.workers("b")
        wait_for(lambda: load.served_by("/b/", new_b), 10, "b's new workers to serve through nginx")
        wait_for(lambda: emp.state_of("b") == "running", 10, "b to be running again")
        assert {n: emp.master(n) for n in ("a", "b", "c")} == masters
        assert emp.workers("a") == before["a"]
        assert emp.workers("c") == before["c"]
        assert "vassal a.ini changed" not in emp.log() and "vassal c.ini changed" not in emp.log()
        assert load.failures == [], load.failures[:10]

        # The broken vassal: 1 s, 2 s, 4 s ... while a, b and c keep serving.
        emp.wait_log(r"vassal broken\.ini died 3 time\(s\).*next attempt in 4 s", timeout=20)
        delays = re.findall(BROKEN_THROTTLED, emp.log())
        assert delays[:3] == ["1", "2", "4"], emp.log()
        assert "RuntimeError: broken on purpose" in emp.log()  # why it died is in the log too
        attempts = [float(t) for t in (broken_dir / "attempts").read_text().split()]
        gaps = [later - earlier for earlier, later in zip(attempts, attempts[1:], strict=False)]
        assert len(gaps) >= 2, attempts
        assert 0.9 <= gaps[0] < 3.0 and 1.9 <= gaps[1] < 4.5, gaps

        wait_for(
            lambda: emp.state_of("broken") == "waiting", 10, "broken.ini to be waiting in the state file"
        )
        entry = emp.vassal("broken")
        assert entry is not None and "without serving a request" in entry["why"], entry
        assert entry["failures"] >= 3 and entry["throttled_until"] > time.time() - 1, entry

        def status_shows_waiting() -> bool:
            return " waiting " in status_row(status_text(vassal_dir), "broken.ini")

        wait_for(status_shows_waiting, 10, "--emperor-status to show broken.ini waiting")
        text = status_text(vassal_dir)
        row = status_row(text, "broken.ini")
        assert re.search(WAITING_NOTE, row), text
        for name in ("a", "b", "c"):
            assert re.match(
                rf"{name}\.ini +{emp.master(name)} +running +0 +yes\b", status_row(text, f"{name}.ini")
            ), text
        assert load.failures == [], load.failures[:10]

        # Remove c: its vassal stops and its socket goes; a and b go on.
        load.pause("/c/")
        c_pids = {masters["c"], *before["c"]}
        files["c"].unlink()
        wait_for(lambda: not socks["c"].exists(), 10, "c's socket to be removed")
        wait_for(lambda: not any(alive(p) for p in c_pids), 10, "c's master and workers to exit")
        wait_for(lambda: emp.vassal("c") is None, 5, "c to leave the state file")
        emp.wait_log(r"vassal c\.ini stopped \(exited with code 0\)", timeout=5)

        # A new file serves within 2 s of its creation.
        staged = tmp_path / "d.staged"
        write_vassal(tmp_path, "d", socks["d"], app).rename(staged)
        created = time.monotonic()
        staged.rename(vassal_dir / "d.ini")
        wait_for(lambda: emp.vassal("d") is not None, 5, "the emperor to spawn d")
        reacted = time.monotonic() - created
        wait_for(lambda: get(socks["d"], "/d/")[0] == 200, 10, "the new vassal d to serve")
        elapsed = time.monotonic() - created
        assert get(socks["d"], "/d/")[1].startswith("d ")
        assert reacted < 1.0, f"the emperor spawned d {reacted:.2f} s after its file appeared"
        assert elapsed < 2.0, f"vassal d served {elapsed:.2f} s after its file appeared"

        before_ab = (load.ok["/a/"], load.ok["/b/"])
        wait_for(
            lambda: load.ok["/a/"] > before_ab[0] + 20 and load.ok["/b/"] > before_ab[1] + 20, 10, "more load"
        )
    finally:
        load.stop()
    assert min(load.ok.values()) >= 100, load.ok
    assert load.failures == [], load.failures[:10]
    emp.check_running()


# -- many vassals -----------------------------------------------------------------------------
def test_fifty_vassals_serve_within_30_s_and_the_idle_emperor_stays_under_1_percent_cpu(
    tmp_path: Path, vassal_dir: Path, app: Path, emperor: StartEmperor
) -> None:
    socks = {f"v{i:02d}": tmp_path / f"v{i:02d}.sock" for i in range(50)}
    for name, sock in socks.items():
        write_vassal(vassal_dir, name, sock, app, processes=1)
    started = time.monotonic()
    emp = emperor(vassal_dir)
    waiting = dict(socks)

    def all_serving() -> bool:
        emp.check_running()
        for name, sock in list(waiting.items()):
            if ping(sock, timeout=0.5):
                del waiting[name]
        return not waiting

    wait_for(all_serving, 35, "50 vassals to serve")
    elapsed = time.monotonic() - started
    assert elapsed < 30, f"50 vassals took {elapsed:.1f} s"
    for name, sock in socks.items():
        assert get(sock, f"/{name}")[1].startswith(f"{name} ")

    wait_for(lambda: all(v["state"] == "running" for v in emp.state()["vassals"]), 10, "every vassal running")
    masters = {v["id"]: v["pid"] for v in emp.state()["vassals"]}
    assert len(masters) == 50
    # The measurement: 10 s with no requests and no changes. Only the emperor's own CPU counts.
    process = psutil.Process(emp.pid)
    before = process.cpu_times()
    time.sleep(10)
    after = process.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    assert used < 0.1, f"the idle emperor used {used:.3f} s of CPU in 10 s ({used * 10:.2f} %)"
    assert {v["id"]: v["pid"] for v in emp.state()["vassals"]} == masters


# -- bad input ----------------------------------------------------------------------------------
def test_bad_vassal_files_give_one_clear_line_each_and_never_stop_the_others(
    tmp_path: Path, vassal_dir: Path, app: Path, emperor: StartEmperor
) -> None:
    good_sock = good_vassal(vassal_dir, app)
    bad_sock = tmp_path / "bad.sock"
    unknown = write_vassal(vassal_dir, "unknown", bad_sock, app, extra="procesess = 3\n")
    bad_value = write_vassal(vassal_dir, "badvalue", bad_sock, app, processes="many")
    no_include = write_vassal(
        vassal_dir, "noinclude", bad_sock, app, extra=f"include = {tmp_path}/gone.ini\n"
    )
    directory = vassal_dir / "x.ini"
    directory.mkdir()
    dangling = vassal_dir / "dangling.ini"
    dangling.symlink_to(tmp_path / "missing.ini")

    emp = emperor(vassal_dir)
    emp.wait_serving("good", good_sock)
    expected = {
        unknown: rf"{re.escape(str(unknown))}:\d+: unknown option 'procesess' \(did you mean 'processes'\?\)",
        bad_value: rf"{re.escape(str(bad_value))}:\d+: .*'processes'.*'many'",
        no_include: rf"{re.escape(str(no_include))}:\d+: .*include.*gone\.ini.*No such file",
        directory: rf"{re.escape(str(directory))}: cannot read vassal file: [Ii]s a directory",
        dangling: rf"{re.escape(str(dangling))}: cannot read vassal file: No such file or directory",
    }
    for pattern in expected.values():
        emp.wait_log(pattern)
    # Each bad vassal has failed at least twice; the emperor and the good vassal carry on.
    for name in ("unknown", "badvalue", "noinclude"):
        emp.wait_log(rf"vassal {name}\.ini died 2 time\(s\)")
    good_master = emp.master("good")
    assert get(good_sock, "/")[0] == 200
    emp.check_running()
    assert emp.master("good") == good_master and (emp.vassal("good") or {}).get("respawns") == 0

    log = emp.log()
    assert "Traceback" not in log, log
    for path in expected:
        # One clear line per problem: every line naming the file says the same single thing.
        lines = {line.split("] ", 1)[-1] for line in log.splitlines() if f"{path}:" in line}
        assert len(lines) == 1, f"{path}: {lines}"
    for path in (directory, dangling):  # the emperor's own scan problems are logged once, not per scan
        assert sum(f"{path}:" in line for line in log.splitlines()) == 1, log
    assert "spawned vassal x.ini" not in log and "spawned vassal dangling.ini" not in log

    text = status_text(vassal_dir)
    assert re.match(rf"good\.ini +{good_master} +running\b", status_row(text, "good.ini")), text
    for name in ("unknown", "badvalue", "noinclude"):
        assert re.search(r" (waiting|starting) ", status_row(text, f"{name}.ini")), text


# -- signals ------------------------------------------------------------------------------------
def test_sighup_reloads_every_vassal_and_sigterm_stops_them_all_gracefully(
    tmp_path: Path, vassal_dir: Path, app: Path, emperor: StartEmperor
) -> None:
    socks = {name: tmp_path / f"{name}.sock" for name in ("a", "b")}
    for name, sock in socks.items():
        write_vassal(vassal_dir, name, sock, app)
    emp = emperor(vassal_dir)
    for name, sock in socks.items():
        emp.wait_serving(name, sock)
    masters = {n: emp.master(n) for n in socks}
    before = {n: emp.workers(n) for n in socks}
    assert all(len(w) == 2 for w in before.values()), before

    os.kill(emp.pid, signal.SIGHUP)

    def all_renewed() -> bool:
        return all(len(emp.workers(n)) == 2 and not emp.workers(n) & before[n] for n in socks)

    wait_for(all_renewed, 15, "every vassal's workers to be replaced")
    wait_for(lambda: all(emp.state_of(n) == "running" for n in socks), 10, "running again")
    after = {n: emp.workers(n) for n in socks}
    for name, sock in socks.items():
        status, body = get(sock, f"/{name}")
        assert status == 200 and int(body.split()[1]) in after[name]
    assert {n: emp.master(n) for n in socks} == masters

    # SIGTERM with a request in flight: it completes, then every process exits and sockets go.
    result: list[tuple[int, str]] = []
    slow = threading.Thread(target=lambda: result.append(get(socks["a"], "/a/slow")))
    slow.start()
    wait_for(lambda: (tmp_path / "slow-started").exists(), 10, "the slow request to start")
    os.kill(emp.pid, signal.SIGTERM)
    assert emp.proc.wait(15) == 0, emp.log()
    slow.join(10)
    assert result and result[0][0] == 200, (result, emp.log())
    everyone = {*masters.values(), *before["a"], *before["b"], *after["a"], *after["b"]}
    assert not [p for p in everyone if alive(p)]
    assert not any(sock.exists() for sock in socks.values())
    log = emp.log()
    for name in socks:
        assert f"vassal {name}.ini stopped (exited with code 0)" in log
    assert "SIGKILL" not in log
    assert not leftovers(vassal_dir)


def test_vassals_do_not_outlive_a_killed_emperor(
    tmp_path: Path, vassal_dir: Path, app: Path, emperor: StartEmperor
) -> None:
    socks = {name: tmp_path / f"{name}.sock" for name in ("a", "b")}
    files = {name: write_vassal(vassal_dir, name, sock, app) for name, sock in socks.items()}
    emp = emperor(vassal_dir)
    for name, sock in socks.items():
        emp.wait_serving(name, sock)
    # b re-executes itself once (a reload) first: the parent-death signal must survive that.
    old_b = emp.workers("b")
    mtime = files["b"].stat().st_mtime
    os.utime(files["b"], (mtime + 10, mtime + 10))
    wait_for(lambda: len(emp.workers("b")) == 2 and not emp.workers("b") & old_b, 15, "b to reload")
    pids = {emp.master("a"), emp.master("b"), *emp.workers("a"), *emp.workers("b")}
    assert len(pids) == 6 and all(alive(p) for p in pids)

    os.kill(emp.pid, signal.SIGKILL)
    emp.proc.wait(5)
    wait_for(lambda: not any(alive(p) for p in pids), 5, "every vassal process to die with the emperor")
    # The state file outlives a killed emperor; --emperor-status says it is stale.
    assert "NOT RUNNING: state as of" in status_text(vassal_dir).splitlines()[0]


def start_busy_vassal(
    tmp_path: Path, vassal_dir: Path, app: Path, emperor: StartEmperor, *args: str, extra: str = ""
) -> tuple[EmperorProcess, set[int | None]]:
    """An emperor with one vassal whose only worker is 30 s into a request; it and the vassal's pids."""
    sock = tmp_path / "a.sock"
    write_vassal(vassal_dir, "a", sock, app, processes=1, extra=extra)
    emp = emperor(vassal_dir, *args)
    emp.wait_serving("a", sock)
    pids = {emp.master("a"), *emp.workers("a")}
    assert len(pids) == 2
    threading.Thread(target=get, args=(sock, "/a/slow", "30", 60), daemon=True).start()
    wait_for(lambda: (tmp_path / "slow-started").exists(), 10, "the slow request to start")
    return emp, pids


def test_sigterm_deadline_kills_the_workers_of_a_vassal_that_overstays(
    tmp_path: Path, vassal_dir: Path, app: Path, emperor: StartEmperor
) -> None:
    """The emperor's deadline (worker-reload-mercy, 1 s here) ends the whole vassal, busy workers included.

    The vassal's own mercy is its default (60 s), so the emperor's SIGKILL is what ends it; when
    the emperor exits saying every vassal has exited, none of the vassal's processes may remain.
    """
    emp, pids = start_busy_vassal(tmp_path, vassal_dir, app, emperor, "--worker-reload-mercy", "1")
    os.kill(emp.pid, signal.SIGTERM)
    assert emp.proc.wait(10) == 0
    assert "every vassal has exited" in emp.log()
    wait_for(lambda: not any(alive(p) for p in pids), 2, "the vassal's master and busy worker to be gone")


def test_a_busy_worker_does_not_outlive_a_killed_emperor(
    tmp_path: Path, vassal_dir: Path, app: Path, emperor: StartEmperor
) -> None:
    """SIGKILL to the emperor mid-request: the vassal's worker is gone within its mercy (1 s) + 5 s."""
    emp, pids = start_busy_vassal(tmp_path, vassal_dir, app, emperor, extra="worker-reload-mercy = 1\n")
    os.kill(emp.pid, signal.SIGKILL)
    emp.proc.wait(5)
    wait_for(lambda: not any(alive(p) for p in pids), 6, "the vassal's master and busy worker to die")


# -- vassals-inherit --------------------------------------------------------------------------------
def test_vassals_inherit_applies_a_template_to_every_vassal(
    tmp_path: Path, vassal_dir: Path, app: Path, emperor: StartEmperor
) -> None:
    template = tmp_path / "template.ini"
    template.write_text("[uwsgi]\nenv = FROM_TEMPLATE=1\nprocesses = 3\n")
    socks = {name: tmp_path / f"{name}.sock" for name in ("a", "b")}
    for name, sock in socks.items():
        path = write_vassal(vassal_dir, name, sock, app)
        path.write_text("\n".join(line for line in path.read_text().splitlines() if "processes" not in line))
    emp = emperor(vassal_dir, "--vassals-inherit", str(template))
    for name, sock in socks.items():
        emp.wait_serving(name, sock, timeout=10)
        status, body = get(sock, f"/{name}")
        assert status == 200 and body.split()[0] == name and body.split()[3] == "1", body
        # The first worker may answer while the master is still forking the third.
        wait_for(lambda name=name: len(emp.workers(name)) == 3, 10, f"{name}'s three workers")


# -- emperor-tyrant -----------------------------------------------------------------------------------
TYRANT_USER = "binserve-t1"


@pytest.fixture
def tyrant_user() -> Iterator[pwd.struct_passwd]:
    with system_users(TYRANT_USER) as (user,):
        yield user


def test_emperor_tyrant_runs_each_vassal_as_its_files_owner_and_refuses_root(
    tyrant_user: pwd.struct_passwd, open_dir: Path, tmp_path: Path, emperor: StartEmperor
) -> None:
    # The user and directory fixtures come first, so they are torn down after the emperor.
    uid, gid = tyrant_user.pw_uid, tyrant_user.pw_gid
    vassals, home = open_dir / "vassals", open_dir / "user"
    vassals.mkdir()
    home.mkdir()
    (home / "app.py").write_text(APP)
    user_sock, root_sock = home / "user.sock", open_dir / "root.sock"
    user_ini = write_vassal(vassals, "user", user_sock, home / "app.py")
    root_ini = write_vassal(vassals, "root", root_sock, home / "app.py")
    for path in (home, home / "app.py", user_ini):
        os.chown(path, uid, gid)

    wrap = reachable_prefix(tmp_path)  # the vassals' user must reach the interpreter
    emp = emperor(vassals, "--emperor-tyrant", wrap=wrap)

    emp.wait_serving("user", user_sock)
    status, body = get(user_sock, "/user")
    assert status == 200 and body.split()[0] == "user" and int(body.split()[2]) == uid, body
    master = emp.master("user")
    assert master is not None
    processes = [psutil.Process(p) for p in (master, *emp.workers("user"))]
    assert len(processes) == 3
    assert all(p.uids().real == uid and p.gids().real == gid for p in processes)

    refusal = emp.wait_log(r"^.*\[emperor-tyrant\] invalid permissions.*$")
    assert str(root_ini) in refusal.group(0), refusal.group(0)
    log = emp.log()
    assert log.count("[emperor-tyrant] invalid permissions") == 1, log
    assert "spawned vassal root.ini" not in log and not root_sock.exists()
    assert emp.vassal("root") is None

    # A vassal running as another user still dies with its emperor.
    pids = [p.pid for p in processes]
    os.kill(emp.pid, signal.SIGKILL)
    emp.proc.wait(5)
    wait_for(lambda: not any(alive(p) for p in pids), 5, "the tyrant's vassal to die with it")


# -- the executor ---------------------------------------------------------------------------------------
@pytest.mark.process
def test_a_vassal_that_cannot_be_started_waits_out_its_throttle(tmp_path: Path, app: Path) -> None:
    """A failed start (missing wrapper, unreachable interpreter...) must be throttled like a crash.

    The emperor runs in-process here: three scans 50 ms apart, well inside the first 1 s wait.
    """
    vassals = tmp_path / "vassals"
    vassals.mkdir()
    path = str(write_vassal(vassals, "a", tmp_path / "a.sock", app))
    missing = str(tmp_path / "no-such-program")
    config = load(["--emperor", str(vassals), "--emperor-wrapper", missing, "--emperor-freq", "0.05"])
    emp = Emperor(config)
    for _ in range(3):
        emp.step()
    vassal = emp.vassals[path]
    assert vassal.state == "waiting" and vassal.pid is None
    assert vassal.failures == 1, f"respawned {vassal.failures} times within 0.15 s of a 1 s throttle"
    desired, _ = scan([str(vassals)], tyrant=False)
    assert plan(desired, emp.vassals, time.monotonic()) == [
        Wait(path, vassal.next_attempt, vassal.waiting_why)
    ]


def test_emperor_stats_list_vassals_and_binserve_top_drills_into_one(
    tmp_path: Path, vassal_dir: Path, app: Path, emperor: StartEmperor
) -> None:
    """A real emperor's stats: each vassal with its state and stats address, read by binserve-top."""
    stats = tmp_path / "emperor.stats"
    sock = tmp_path / "a.sock"
    write_vassal(vassal_dir, "a", sock, app, extra=f"stats = {tmp_path / 'a.stats'}\n")
    emp = emperor(vassal_dir, "--emperor-stats", str(stats))
    emp.wait_serving("a", sock)
    wait_for(stats.exists, 10, "the emperor's stats socket")
    rows: list[str] = []
    top = executable("binserve-top")

    def vassal_row() -> bool:
        out = subprocess.run([top, str(stats), "--once"], capture_output=True, text=True)
        rows[:] = [line for line in out.stdout.splitlines() if line.startswith("a.ini")]
        return bool(rows) and "running" in rows[0]

    wait_for(vassal_row, 10, "a.ini running in the emperor's stats")
    assert str(emp.master("a")) in rows[0].split() and str(tmp_path / "a.stats") in rows[0]
    out = subprocess.run([top, str(tmp_path / "a.stats"), "--once"], capture_output=True, text=True)
    workers = [line.split() for line in out.stdout.splitlines() if line[:2] in ("1 ", "2 ")]
    assert {int(w[1]) for w in workers} == emp.workers("a"), out.stdout


def test_inotify_picks_up_a_new_file_long_before_the_next_scan(
    tmp_path: Path, vassal_dir: Path, app: Path, emperor: StartEmperor
) -> None:
    """With scans 30 s apart, a new vassal file still serves within 2 s: inotify woke the emperor."""
    emp = emperor(vassal_dir, "--emperor-freq", "30")
    wait_for(lambda: "inotify" in emp.log(), 10, "the emperor to start watching")
    # The state file is written after the first scan: what comes next only inotify can report.
    wait_for((vassal_dir / ".binserve-emperor.json").exists, 10, "the emperor's first scan")
    sock = tmp_path / "late.sock"
    created = time.monotonic()
    write_vassal(vassal_dir, "late", sock, app)
    emp.wait_serving("late", sock)
    assert time.monotonic() - created < 2.0

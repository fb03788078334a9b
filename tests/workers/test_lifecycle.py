"""The lifecycle an app relies on in each worker: the postfork hooks once it is forked, its
``finally`` blocks, and on every graceful exit the atexit hooks and Python's atexit handlers,
each exactly once per worker; the ``import`` option. Real processes, real signals, nginx in
front where requests are involved.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from binserve.testing import Nginx, Serve, Server, StartEmperor, StartNginx, alive, wait_for

from support import APPS, AppFile, get, write_vassal

LIFECYCLE_APP = (APPS / "lifecycle_app.py").read_text()
Lifecycle = Callable[..., tuple[Server, Nginx]]  # the lifecycle fixture


def records(out: Path) -> list[tuple[str, int]]:
    """What the app noted, in order: (what, pid)."""
    if not out.exists():
        return []
    return [(what, int(pid)) for what, pid in (line.split() for line in out.read_text().splitlines())]


def count(out: Path, pid: int) -> Counter[str]:
    return Counter(what for what, by in records(out) if by == pid)


def exited_gracefully(out: Path, pid: int) -> None:
    """Worker ``pid`` ran its postfork hook, its atexit hook, then Python's atexit handler, once each."""
    assert count(out, pid) == {"postfork": 1, "hook-atexit": 1, "atexit": 1, **_requests(out, pid)}, records(
        out
    )
    mine = [what for what, by in records(out) if by == pid]
    assert mine.index("hook-atexit") < mine.index("atexit"), mine


def _requests(out: Path, pid: int) -> Counter[str]:
    return Counter({what: n for what, n in count(out, pid).items() if what in ("begin", "finally")})


def slow_request(
    pool: ThreadPoolExecutor, front: Nginx, out: Path
) -> tuple[Future[tuple[int, dict[str, str], bytes]], int]:
    """A streamed response in flight (its generator has begun); the pid of the worker serving it."""
    before = len([1 for what, _ in records(out) if what == "begin"])
    answer = pool.submit(front.request, "GET", "/slow")
    wait_for(lambda: len([1 for what, _ in records(out) if what == "begin"]) > before, 10, "the slow request")
    pid = [by for what, by in records(out) if what == "begin"][-1]
    return answer, pid


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "lifecycle.txt"


@pytest.fixture
def lifecycle(serve: Serve, nginx: StartNginx, app_file: AppFile, out: Path) -> Lifecycle:
    """The lifecycle app served with ``args``, recording into ``out``, nginx in front."""

    def start(*args: str, env: dict[str, str] | None = None) -> tuple[Server, Nginx]:
        app = app_file(LIFECYCLE_APP)
        server = serve("--wsgi-file", str(app), "--env", f"LIFECYCLE_OUT={out}", *args, env=env)
        return server, nginx(server)

    return start


def test_a_graceful_stop_runs_finally_the_atexit_hooks_and_python_s_atexit_once_per_worker(
    lifecycle: Lifecycle,
    out: Path,
) -> None:
    server, front = lifecycle("--processes", "2")
    workers = server.wait_workers(2)
    wait_for(lambda: all(count(out, pid)["postfork"] == 1 for pid in workers), 10, "the postfork hooks")
    with ThreadPoolExecutor(1) as pool:
        answer, serving = slow_request(pool, front, out)
        os.kill(server.pid, signal.SIGTERM)
        status, _, body = answer.result(15)
    assert (status, body) == (200, b"first second")
    assert server.proc.wait(15) == 0, server.log()
    for pid in workers:
        exited_gracefully(out, pid)
    assert _requests(out, serving) == {"begin": 1, "finally": 1}
    # The master imported the app: its own exit runs Python's atexit handlers, never the workers' hooks.
    assert count(out, server.pid) == {"import": 1, "atexit": 1}, records(out)


TRIGGERS = {
    "graceful reload (SIGHUP to the master)": ((), "master-hup"),
    "recycled by hand (SIGHUP to the worker)": ((), "worker-hup"),
    "max-requests": (("--max-requests", "1", "--min-worker-lifetime", "0"), ""),
    "max-worker-lifetime": (("--max-worker-lifetime", "1"), ""),
}


@pytest.mark.parametrize(("args", "signal_to"), TRIGGERS.values(), ids=TRIGGERS)
def test_a_replaced_worker_finishes_its_response_and_runs_its_exit_hooks_once(
    lifecycle: Lifecycle,
    out: Path,
    args: tuple[str, ...],
    signal_to: str,
) -> None:
    server, front = lifecycle(*args)
    (old,) = server.wait_workers(1)
    with ThreadPoolExecutor(1) as pool:
        answer, serving = slow_request(pool, front, out)
        assert serving == old
        if signal_to:
            os.kill(server.pid if signal_to == "master-hup" else old, signal.SIGHUP)
        status, _, body = answer.result(15)
    assert (status, body) == (200, b"first second")
    wait_for(lambda: not alive(old), 15, "the old worker to leave")
    exited_gracefully(out, old)
    assert _requests(out, old) == {"begin": 1, "finally": 1}
    new = server.wait_workers(1)
    assert new != {old} and get(server.socket)[0] == 200
    # The reload's probe imported the app but runs none of its exit handlers.
    probes = {pid for what, pid in records(out) if what == "import"} - {server.pid}
    assert all(count(out, pid) == {"import": 1} for pid in probes), records(out)


def test_the_emperor_s_vassal_stop_runs_the_workers_exit_hooks(
    emperor: StartEmperor, app_file: AppFile, tmp_path: Path, out: Path
) -> None:
    vassals = tmp_path / "vassals"
    vassals.mkdir()
    sock = tmp_path / "vassal.sock"
    app = app_file(LIFECYCLE_APP)
    ini = write_vassal(vassals, "one", sock, app, extra=f"env = LIFECYCLE_OUT={out}\n")
    emperor(vassals)
    wait_for(lambda: get(sock)[0] == 200, 20, "the vassal to serve")
    workers = {pid for what, pid in records(out) if what == "postfork"}
    assert len(workers) == 2, records(out)
    ini.unlink()
    wait_for(lambda: not any(alive(pid) for pid in workers), 20, "the vassal's workers to leave")
    for pid in workers:
        exited_gracefully(out, pid)


def test_hooks_that_raise_are_logged_and_the_worker_serves_on(lifecycle: Lifecycle, out: Path) -> None:
    server, front = lifecycle("--env", "LIFECYCLE_BROKEN_HOOKS=1")
    (worker,) = server.wait_workers(1)
    assert front.request("GET", "/")[0] == 200
    assert server.stop() == 0
    log = server.log()
    assert f"worker 1 (pid {worker}): postfork hook broken_postfork raised; going on:\nTraceback" in log, log
    assert "RuntimeError: the postfork hook failed" in log
    assert f"worker 1 (pid {worker}): atexit hook broken_atexit raised; going on:\nTraceback" in log, log
    # Python's own atexit handler that raised is logged in one entry, its traceback under it.
    assert f"worker 1 (pid {worker}): Exception ignored in atexit callback: <function <lambda>" in log, log
    assert "ZeroDivisionError" in log
    exited_gracefully(out, worker)  # the hooks registered before the broken ones still ran


def test_a_process_a_postfork_hook_starts_has_no_signal_blocked(lifecycle: Lifecycle, out: Path) -> None:
    server, _ = lifecycle("--env", "LIFECYCLE_HELPER=1")
    wait_for(lambda: any(what.startswith("helper-") for what, _ in records(out)), 10, "the helper")
    helper = next(int(what[len("helper-") :]) for what, _ in records(out) if what.startswith("helper-"))
    try:
        status = Path(f"/proc/{helper}/status").read_text()
        blocked = next(line.split()[1] for line in status.splitlines() if line.startswith("SigBlk:"))
        assert int(blocked, 16) == 0, status  # a SIGTERM sent to it ends it
    finally:
        os.kill(helper, signal.SIGKILL)


def test_a_worker_killed_on_harakiri_runs_no_exit_hook(lifecycle: Lifecycle, out: Path) -> None:
    server, front = lifecycle("--harakiri", "1")
    (worker,) = server.wait_workers(1)
    assert front.request("GET", "/hang")[0] == 502
    wait_for(lambda: not alive(worker), 10, "the worker killed")
    assert count(out, worker) == {"postfork": 1}, records(out)


IMPORTED = """
import os
from binserve import hooks

with open(os.environ["LIFECYCLE_OUT"], "a") as out:
    out.write(f"imported-{__name__} {os.getpid()}\\n")


@hooks.postfork
def after_fork():
    with open(os.environ["LIFECYCLE_OUT"], "a") as out:
        out.write(f"postfork-{__name__} {os.getpid()}\\n")
"""


@pytest.mark.parametrize("lazy", [False, True], ids=["app in the master", "lazy-apps"])
def test_import_loads_modules_in_each_worker_after_fork(
    lifecycle: Lifecycle, out: Path, tmp_path: Path, lazy: bool
) -> None:
    (tmp_path / "extra_one.py").write_text(IMPORTED)
    (tmp_path / "extra_two.py").write_text(IMPORTED)
    args = [
        "--pythonpath",
        str(tmp_path),
        "--import",
        "extra_one",
        "--import",
        "extra_two",
        "--processes",
        "2",
    ]
    server, front = lifecycle(*args, *(["--lazy-apps"] if lazy else []))
    workers = server.wait_workers(2)
    wait_for(lambda: all(count(out, pid)["postfork"] == 1 for pid in workers), 10, "the postfork hooks")
    assert front.request("GET", "/")[0] == 200
    for pid in workers:
        mine = [what for what, by in records(out) if by == pid]
        # The app, then the modules in order, then the postfork hooks (the app's registered first).
        expected = [
            "imported-extra_one",
            "imported-extra_two",
            "postfork",
            "postfork-extra_one",
            "postfork-extra_two",
        ]
        assert mine == (["import"] if lazy else []) + expected, records(out)
    assert not any(what.startswith("imported") for what, pid in records(out) if pid == server.pid)


def test_a_module_that_cannot_be_imported_fails_the_boot_naming_the_option(
    serve: Serve, app_file: AppFile
) -> None:
    server = serve(
        "--wsgi-file",
        str(app_file("def application(e, s): pass\n")),
        "--import",
        "no_such_module",
        ready=False,
    )
    assert server.proc.wait(20) == 3, server.log()
    log = server.log()
    assert "worker 1 failed to boot:" in log, log
    assert "AppLoadError: option 'import': cannot import no_such_module: ModuleNotFoundError" in log, log

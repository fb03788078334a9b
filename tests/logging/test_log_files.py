"""Where the log lines go and how log files are rotated, with real processes, signals and nginx.

A log file renamed as logrotate does, then reopened (SIGUSR1 to the master or to the emperor,
touch-logreopen, a reload, log-maxsize), loses no line: every request sent appears exactly once
across the old and the new file, and those sent after the reopen are in the new one. logger and
req-logger split the request lines from the rest; a syslog logger sends datagrams to the
/dev/log of a private mount namespace, a socket the test owns. The app's output reaches the log
in whole lines, from several workers and threads printing long lines at once.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from binserve.testing import (
    Process,
    Serve,
    StartEmperor,
    StartNginx,
    location,
    ping,
    touch_ahead,
    wait_for,
)

from support import APPS, REPO

APP = str(APPS / "logging_app.py")
LINE_SHAPE = re.compile(r"<(?P<name>[\w-]+):(?P<xs>x*):(?P<end>[\w-]+)>")


def request_ids(text: str) -> list[int]:
    """The ``req=N`` of every request line in ``text``."""
    return [int(n) for n in re.findall(r"[?&]req=(\d+)", text)]


def printed(text: str) -> list[int]:
    """The N of every ``printed N`` line the app wrote."""
    return [int(n) for n in re.findall(r"^printed (\d+)$", text, re.MULTILINE)]


def send(front: object, numbers: range) -> None:
    for n in numbers:
        status, _, _ = front.request("GET", f"/?req={n}")  # type: ignore[attr-defined]
        assert status == 200


def logged(*paths: Path, count: int) -> None:
    """Wait until ``count`` request lines are in ``paths``: a line is written once the answer is sent."""
    every = lambda: sum(len(request_ids(read(path))) for path in paths)  # noqa: E731
    wait_for(lambda: every() >= count, 10, f"{count} request lines in {[p.name for p in paths]}")


def reopened_workers(path: Path) -> set[str]:
    """The worker ids that logged reopening their log files in ``path``."""
    return set(re.findall(r"worker (\d+) \(pid \d+\): log files reopened", read(path)))


def read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def wait_reopened(path: Path, workers: int) -> None:
    wait_for(lambda: len(reopened_workers(path)) == workers, 15, f"{workers} workers reopening into {path}")


@pytest.mark.parametrize("how", ["SIGUSR1", "touch-logreopen"])
def test_a_renamed_log_file_is_reopened_everywhere_and_no_request_is_lost(
    serve: Serve, nginx: StartNginx, tmp_path: Path, how: str
) -> None:
    log, rotated, touched = tmp_path / "app.log", tmp_path / "app.log.1", tmp_path / "reopen"
    touched.touch()
    args = ["--processes", "2", "--threads", "2", "--logto", str(log), "--stats", str(tmp_path / "stats")]
    server = serve("--wsgi-file", APP, *args, "--touch-logreopen", str(touched))
    front = nginx(server)
    server.wait_workers(2)
    send(front, range(10))
    logged(log, count=10)
    log.rename(rotated)  # logrotate's move; its postrotate then signals, or touches
    if how == "SIGUSR1":
        os.kill(server.pid, signal.SIGUSR1)
    else:
        touch_ahead(touched)
    wait_reopened(log, 2)
    send(front, range(10, 20))
    logged(rotated, log, count=20)
    old, new = read(rotated), read(log)
    assert sorted(request_ids(old) + request_ids(new)) == list(range(20))
    assert sorted(request_ids(new)) == list(range(10, 20))
    assert sorted(printed(old)) == list(range(10)) and sorted(printed(new)) == list(range(10, 20))
    assert new.count("complained") == 10
    why = "SIGUSR1" if how == "SIGUSR1" else f"{touched} was touched"
    summary = rf"{why}: log files reopened; 2 workers \(0 busy, 10 requests served\), listen queue 0, "
    assert re.search(summary + r"workers' rss [\d.]+ MB, up \d+ s$", new, re.MULTILINE), new
    assert server.log() == ""


def test_sigusr1_to_a_worker_reopens_that_worker_only(serve: Serve, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    server = serve("--wsgi-file", APP, "--processes", "2", "--logto", str(log))
    first, *_ = sorted(server.wait_workers(2))
    log.rename(tmp_path / "app.log.1")
    os.kill(first, signal.SIGUSR1)
    wait_for(lambda: f"(pid {first}): log files reopened" in read(log), 15, "the worker's reopen")
    assert len(reopened_workers(log)) == 1
    assert "SIGUSR1: log files reopened;" not in read(log)


def test_sigusr1_to_the_emperor_reopens_its_log_and_every_vassals(
    emperor: StartEmperor, nginx: StartNginx, tmp_path: Path
) -> None:
    vassals = tmp_path / "vassals"
    vassals.mkdir()
    sock, vassal_log, emperor_log = tmp_path / "one.sock", tmp_path / "one.log", tmp_path / "emperor.log"
    (vassals / "one.ini").write_text(
        f"[uwsgi]\nsocket = {sock}\nwsgi-file = {APP}\nprocesses = 2\nlogto = {vassal_log}\n"
    )
    boss = emperor(vassals, "--logto", str(emperor_log))
    wait_for(lambda: ping(sock), 20, "the vassal")
    wait_for(lambda: len(boss.workers("one")) == 2, 15, "the vassal's workers")
    front = nginx(location(sock))
    send(front, range(10))
    logged(vassal_log, count=10)
    vassal_log.rename(tmp_path / "one.log.1")
    emperor_log.rename(tmp_path / "emperor.log.1")
    os.kill(boss.pid, signal.SIGUSR1)
    wait_reopened(vassal_log, 2)
    send(front, range(10, 20))
    logged(tmp_path / "one.log.1", vassal_log, count=20)
    old, new = read(tmp_path / "one.log.1"), read(vassal_log)
    assert sorted(request_ids(old) + request_ids(new)) == list(range(20))
    assert sorted(request_ids(new)) == list(range(10, 20))
    assert "SIGUSR1: log files reopened; 2 workers" in new
    master = boss.master("one")
    line = (
        "emperor: SIGUSR1: log files reopened, SIGUSR1 passed to 1 vassals; "
        f"1 vassals: one.ini running (pid {master})"
    )
    wait_for(lambda: line in read(emperor_log), 10, "the emperor's summary in its new log")


def test_a_reload_reopens_the_log_files(serve: Serve, nginx: StartNginx, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    server = serve("--wsgi-file", APP, "--processes", "2", "--logto", str(log), "--worker-reload-mercy", "5")
    front = nginx(server)
    send(front, range(5))
    logged(log, count=5)
    log.rename(tmp_path / "app.log.1")
    os.kill(server.pid, signal.SIGHUP)
    wait_for(lambda: "master ready" in read(log), 20, "the reloaded master in the new file")
    send(front, range(5, 10))
    logged(tmp_path / "app.log.1", log, count=10)
    old, new = read(tmp_path / "app.log.1"), read(log)
    assert sorted(request_ids(old) + request_ids(new)) == list(range(10))
    assert sorted(request_ids(new)) == list(range(5, 10))


def test_req_logger_takes_the_request_lines_and_only_them(
    serve: Serve, nginx: StartNginx, tmp_path: Path
) -> None:
    main, requests = tmp_path / "main.log", tmp_path / "req.log"
    server = serve(
        "--wsgi-file", APP, "--processes", "2", "--logger", f"file:{main}", "--req-logger", f"file:{requests}"
    )
    send(nginx(server), range(8))
    wait_for(lambda: len(request_ids(read(requests))) == 8, 10, "the request lines")
    main_text, request_text = read(main), read(requests)
    assert sorted(request_ids(request_text)) == list(range(8))
    assert request_ids(main_text) == []
    assert sorted(printed(main_text)) == list(range(8)) and main_text.count("complained") == 8
    assert "master ready: 2 workers" in main_text
    assert "printed" not in request_text and "[binserve pid" not in request_text
    assert server.log() == ""


def test_req_logger_stdio_is_stderr_which_a_log_file_replaces(
    serve: Serve, nginx: StartNginx, tmp_path: Path
) -> None:
    # As in uWSGI: logto makes the log file the process's stderr, so stdio then means that file.
    main = tmp_path / "main.log"
    server = serve("--wsgi-file", APP, "--logto", str(main), "--req-logger", "stdio")
    send(nginx(server), range(3))
    wait_for(lambda: len(request_ids(read(main))) == 3, 10, "the request lines in the log file")
    assert "master ready" in read(main) and server.log() == ""


def test_log_maxsize_renames_a_file_both_loggers_name_once(
    serve: Serve, nginx: StartNginx, tmp_path: Path
) -> None:
    log = tmp_path / "app.log"
    same = ["--logger", f"file:{log}", "--req-logger", f"file:{log}", "--log-maxsize", "2k"]
    server = serve("--wsgi-file", APP, *same)
    front = nginx(server)
    send(front, range(30))
    wait_for(lambda: "log-maxsize 2048 bytes: renamed" in read(log), 15, "a rotation")
    send(front, range(30, 31))
    wait_for(lambda: 30 in request_ids(read(log)), 10, "a request line after the rotation")
    every = "".join(read(path) for path in tmp_path.glob("app.log*"))
    assert "cannot rotate" not in every, every


def test_a_rotation_that_fails_is_logged_once_until_it_succeeds(
    serve: Serve, nginx: StartNginx, tmp_path: Path
) -> None:
    """log-maxsize is checked every second: a lasting failure must not add a line every second."""
    log, backup = tmp_path / "app.log", tmp_path / "later" / "app.log.old"
    rotation = ["--logto", str(log), "--log-maxsize", "1k", "--log-backupname", str(backup)]
    server = serve("--wsgi-file", APP, *rotation)
    front = nginx(server)
    send(front, range(10))
    failure = f"log-maxsize: cannot rotate {log}: No such file or directory (not logged again until it can)"
    wait_for(lambda: failure in read(log), 15, "the failed rotation")
    time.sleep(2.5)  # two more checks at least, each finding the file still too big
    assert read(log).count("cannot rotate") == 1, read(log)
    backup.parent.mkdir()
    wait_for(lambda: backup.exists(), 15, "the rotation once it can be done")
    assert read(backup).count("cannot rotate") == 1


@pytest.mark.parametrize("backup", [None, "app.log.old"])
def test_log_maxsize_renames_the_file_and_loses_nothing(
    serve: Serve, nginx: StartNginx, tmp_path: Path, backup: str | None
) -> None:
    log = tmp_path / "app.log"
    named = ["--log-backupname", str(tmp_path / backup)] if backup else []
    server = serve("--wsgi-file", APP, "--processes", "2", "--logto", str(log), "--log-maxsize", "4k", *named)
    front = nginx(server)
    send(front, range(60))
    wait_for(lambda: "log-maxsize 4096 bytes: renamed" in read(log), 15, "a rotation")
    wait_reopened(log, 2)
    send(front, range(60, 63))
    wait_for(lambda: {60, 61, 62} <= set(request_ids(read(log))), 10, "the last request lines")
    rotated = sorted(set(tmp_path.glob("app.log.*")))
    assert rotated, os.listdir(tmp_path)
    for path in rotated:
        assert re.fullmatch(re.escape(backup) if backup else r"app\.log\.\d+(\.\d+)?", path.name)
    every = Counter(request_ids(read(log)) + [n for path in rotated for n in request_ids(read(path))])
    if backup is None:  # a fixed backup name is replaced at each rotation, as uWSGI's
        assert sorted(every) == list(range(63)) and set(every.values()) == {1}


SYSLOG_NAMESPACE = """
set -e
stage=$1; sock=$2; shift 2
mkdir -p "$stage/dev"
for name in null zero urandom random; do
  touch "$stage/dev/$name"; mount --bind "/dev/$name" "$stage/dev/$name"
done
ln -s /proc/self/fd "$stage/dev/fd"
ln -s "$sock" "$stage/dev/log"
mount --rbind "$stage/dev" /dev
exec "$@"
"""


def datagrams(receiver: socket.socket, until: str) -> list[str]:
    """What ``receiver`` got, up to the first datagram containing ``until``."""
    got: list[str] = []
    while not got or until not in got[-1]:
        got.append(receiver.recv(1 << 17).decode())
    return got


def reopened(lines: list[str]) -> set[str]:
    return set(re.findall(r"worker (\d+) \(pid \d+\): log files reopened", "".join(lines)))


def test_a_syslog_logger_sends_datagrams_to_dev_log(nginx: StartNginx, tmp_path: Path) -> None:
    """In a private mount namespace, /dev/log is the test's own socket: the host's is never touched."""
    sock, app_sock = tmp_path / "log.sock", tmp_path / "app.sock"
    host_has_dev_log = os.path.lexists("/dev/log")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(sock))
    receiver.settimeout(15)
    command = [sys.executable, "-m", "binserve", "--socket", str(app_sock), "--wsgi-file", APP]
    command += ["--processes", "2", "--logger", "syslog:myapp,local3"]
    wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c", SYSLOG_NAMESPACE, "sh"]
    server = Process([*wrap, str(tmp_path / "stage"), str(sock), *command], tmp_path / "server.log")
    try:
        started = datagrams(receiver, "master ready")
        assert all(re.match(r"<158>\w{3} [ \d]\d \d\d:\d\d:\d\d myapp\[\d+\]: ", line) for line in started)
        assert f"myapp[{server.pid}]: " in started[-1]
        front = nginx(location(app_sock))
        send(front, range(1))
        (request,) = datagrams(receiver, "req=0")
        assert "GET /?req=0" in request and not request.endswith("\n")
        # The syslog daemon restarts: a new socket at the name; SIGUSR1 connects again.
        receiver.close()
        sock.unlink()
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(str(sock))
        receiver.settimeout(15)
        os.kill(server.pid, signal.SIGUSR1)
        got: list[str] = []
        while not ("SIGUSR1: log files reopened" in "".join(got) and len(reopened(got)) == 2):
            got.append(receiver.recv(1 << 17).decode())
        send(front, range(1, 2))
        assert "req=1" in datagrams(receiver, "req=1")[-1]
        assert "printed 0" in server.log() and "printed 1" in server.log()  # the app's output: stderr
        assert os.path.lexists("/dev/log") == host_has_dev_log
    finally:
        server.stop()
        receiver.close()


@pytest.mark.process
def test_a_syslog_logger_without_dev_log_names_it(tmp_path: Path) -> None:
    """No syslog daemon (/dev/log a dangling link here): the start fails saying where it connects."""
    command = [sys.executable, "-m", "binserve", "--socket", str(tmp_path / "app.sock"), "--wsgi-file", APP]
    wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c", SYSLOG_NAMESPACE, "sh"]
    stage, missing = str(tmp_path / "stage"), str(tmp_path / "no-daemon.sock")
    server = Process([*wrap, stage, missing, *command, "--logger", "syslog:myapp"], tmp_path / "server.log")
    try:
        assert server.proc.wait(20) == 2
        expected = "binserve: logger syslog:myapp: cannot connect to /dev/log: No such file or directory\n"
        assert server.log() == expected, server.log()
    finally:
        server.stop()


def test_a_syslog_reader_that_stops_reading_holds_up_nothing(nginx: StartNginx, tmp_path: Path) -> None:
    """A stuck syslog daemon (its queue full before binserve starts): a line waits 1 s for it at
    most, later lines are dropped without waiting, and they flow again once it reads."""
    sock, app_sock = tmp_path / "log.sock", tmp_path / "app.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(sock))
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    with pytest.raises(BlockingIOError):
        for _ in range(100_000):
            filler.sendto(b"filler", str(sock))
    command = [sys.executable, "-m", "binserve", "--socket", str(app_sock), "--wsgi-file", APP]
    command += ["--processes", "2", "--logger", "syslog:myapp"]
    wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c", SYSLOG_NAMESPACE, "sh"]
    server = Process([*wrap, str(tmp_path / "stage"), str(sock), *command], tmp_path / "server.log")
    try:
        wait_for(lambda: ping(str(app_sock)), 15, "a worker answering")
        front = nginx(location(app_sock))
        started = time.monotonic()
        send(front, range(10))
        assert time.monotonic() - started < 8  # 10 request lines, none waiting its second
        receiver.setblocking(False)
        with pytest.raises(BlockingIOError):
            while True:
                receiver.recv(1 << 17)
        receiver.settimeout(15)
        send(front, range(10, 11))
        assert "req=10" in datagrams(receiver, "req=10")[-1]
        assert server.stop() == 0
    finally:
        server.stop()
        filler.close()
        receiver.close()


def test_the_apps_output_reaches_the_log_in_whole_lines(
    serve: Serve, nginx: StartNginx, tmp_path: Path
) -> None:
    """2 workers of 2 threads, each request printing from 3 threads at once, lines up to 70 kB."""
    log = tmp_path / "app.log"
    server = serve("--wsgi-file", APP, "--processes", "2", "--threads", "2", "--logto", str(log))
    answers = nginx(server).burst(8, "/shout?tag=t&lines=6&threads=3", concurrency=4)
    assert [status for status, _, _ in answers] == [200] * 8
    expected = 8 * 3 * 6

    def shouted() -> list[str]:
        return [line for line in read(log).splitlines() if "xxxxxxxx" in line]

    wait_for(lambda: len(shouted()) >= expected, 15, f"{expected} lines")
    names: Counter[str] = Counter()
    for line in shouted():
        whole = LINE_SHAPE.fullmatch(line)
        assert whole and whole["name"] == whole["end"], line[:200]
        index = int(whole["name"].rsplit("-", 1)[1])
        assert len(whole["xs"]) == (80, 9000, 70000)[index % 3]
        names[whole["name"]] += 1
    assert len(names) == 3 * 6 and set(names.values()) == {8}


def test_the_readme_logrotate_postrotate_reopens_the_log(
    serve: Serve, nginx: StartNginx, tmp_path: Path
) -> None:
    """The README's logrotate block, run as logrotate would: rename, then its postrotate script."""
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index("/var/log/app/*.log {") :]
    script = block[block.index("postrotate\n") + len("postrotate\n") : block.index("endscript")]
    pidfile, log = tmp_path / "app.pid", tmp_path / "app.log"
    server = serve("--wsgi-file", APP, "--processes", "2", "--logto", str(log), "--pidfile", str(pidfile))
    front = nginx(server)
    send(front, range(3))
    logged(log, count=3)
    log.rename(tmp_path / "app.log.1")
    subprocess.run(["sh", "-c", script.replace("/run/app.pid", str(pidfile))], check=True)
    wait_reopened(log, 2)
    send(front, range(3, 6))
    logged(log, count=3)
    assert sorted(request_ids(read(log))) == [3, 4, 5]


def test_a_log_file_that_cannot_be_reopened_is_named_and_kept(serve: Serve, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    server = serve("--wsgi-file", APP, "--logto", str(log))
    log.rename(tmp_path / "app.log.1")
    log.mkdir()  # nothing can be opened for appending at the name
    os.kill(server.pid, signal.SIGUSR1)
    line = f"SIGUSR1: cannot reopen {log}: Is a directory; logging on to the file as it was"
    wait_for(lambda: line in read(tmp_path / "app.log.1"), 10, "the refusal in the old file")
    assert "SIGUSR1: 1 log file(s) not reopened (above); 1 workers (" in read(tmp_path / "app.log.1")
    wait_for(lambda: "worker 1: cannot reopen" in read(tmp_path / "app.log.1"), 10, "the worker's refusal")
    assert server.request("/?req=7").status == 200
    logged(tmp_path / "app.log.1", count=1)

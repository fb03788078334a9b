"""Processes of the benchmark: nginx and the servers under test, their readiness, their CPU time.

Every child runs in its own session with its output in a log file, and is always stopped: its stop
signal to the main process, a deadline, then SIGKILL to its process group. CPU time is sampled over
a process and all its descendants with psutil.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psutil

from binserve.testing.processes import Process, executable, nginx_executable
from binserve.tools import bench_app

READY_DEADLINE = 30.0  # seconds for a server (or nginx) to answer after it was started
STOP_GRACE = 10.0  # seconds between the polite stop signal and SIGKILL to the process group
POLL_INTERVAL = 0.05  # readiness polling period; the deadline, not this, bounds the wait
PROBE_TIMEOUT = 10.0  # one urllib request through nginx
LOG_TAIL_LINES = 30
WORKERS = 2  # worker processes of every server; each tree is its master plus these

# nginx's conf/uwsgi_params: the 14 standard params in nginx's order.
UWSGI_PARAMS = """\
uwsgi_param  QUERY_STRING       $query_string;
uwsgi_param  REQUEST_METHOD     $request_method;
uwsgi_param  CONTENT_TYPE       $content_type;
uwsgi_param  CONTENT_LENGTH     $content_length;

uwsgi_param  REQUEST_URI        $request_uri;
uwsgi_param  PATH_INFO          $document_uri;
uwsgi_param  DOCUMENT_ROOT      $document_root;
uwsgi_param  SERVER_PROTOCOL    $server_protocol;
uwsgi_param  REQUEST_SCHEME     $scheme;
uwsgi_param  HTTPS              $https if_not_empty;

uwsgi_param  REMOTE_ADDR        $remote_addr;
uwsgi_param  REMOTE_PORT        $remote_port;
uwsgi_param  SERVER_PORT        $server_port;
uwsgi_param  SERVER_NAME        $server_name;
"""


class BenchError(Exception):
    """A step failed for one server or workload; the message says which and why."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


# --------------------------------------------------------------------------------------------------------
# processes


def _console_script(name: str) -> str:
    """The console script ``name`` next to this interpreter (pyenv's shims would slow every start)."""
    try:
        return executable(name)
    except FileNotFoundError as exc:
        raise BenchError(str(exc)) from None


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


class Managed(Process):
    """A child process in its own session, with its output in a log file, that can always be stopped."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        cwd: Path,
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> None:
        self.name = name
        with open(log_path, "ab") as log:
            log.write(f"$ {shlex.join(argv)}\n".encode())
        super().__init__(argv, log_path, cwd=cwd, stdin=subprocess.DEVNULL, stop_signal=stop_signal)

    def alive(self) -> bool:
        """True while the main process has not exited."""
        return self.proc.poll() is None

    def check_alive(self) -> None:
        """Raise BenchError, with the log tail, when the main process has exited."""
        code = self.proc.poll()
        if code is not None:
            raise BenchError(f"{self.name} exited with status {code}", _tail(self.log_path))

    def tail(self) -> str:
        """The last lines of the log."""
        return _tail(self.log_path)

    def stop(self, grace: float | None = None) -> None:
        """Stop signal to the main process, wait up to STOP_GRACE, then SIGKILL the whole group.

        Unlike a test's stop, it never fails: the run goes on to the next server.
        """
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(self.stop_signal)
                self.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                sig = signal.Signals(self.stop_signal).name
                print(f"bench: {self.name} ignored {sig} for {STOP_GRACE:.0f} s; killing it", file=sys.stderr)
        # Always, even after a clean exit: a worker that outlived its master is still in the group.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            print(f"bench: {self.name} (pid {self.pid}) survived SIGKILL", file=sys.stderr)
        self._log.close()


CpuSample = dict[int, tuple[psutil.Process, float]]


def sample_cpu(root_pid: int) -> CpuSample:
    """user+system CPU seconds of ``root_pid`` and all its descendants, by pid."""
    try:
        root = psutil.Process(root_pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    sample: CpuSample = {}
    for proc in tree:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue  # exited between the listing and the reading: nothing left to count
        sample[proc.pid] = (proc, times.user + times.system)
    return sample


def cpu_delta(before: CpuSample, after: CpuSample) -> tuple[float, list[str]]:
    """CPU seconds the tree used between two samples, and notes when its membership changed.

    A process born during the run counts from zero. A process that died during the run is lost from
    its first sample on (its parent's ``children_*`` times would count its whole life, not the run), so
    the figure is flagged instead of silently corrected.
    """
    total = 0.0
    for pid, (proc, seconds) in after.items():
        earlier = before.get(pid)
        # psutil.Process equality includes the creation time, which guards against a reused pid.
        total += seconds - (earlier[1] if earlier is not None and earlier[0] == proc else 0.0)
    notes = []
    gone = sorted(set(before) - set(after))
    born = sorted(set(after) - set(before))
    if gone:
        notes.append(f"pids {gone} exited during the run; their CPU is undercounted")
    if born:
        notes.append(f"pids {born} started during the run")
    return total, notes


# --------------------------------------------------------------------------------------------------------
# nginx


def nginx_conf(workdir: Path, port: int, sock_path: Path) -> str:
    """The nginx.conf text: one worker, no access log, uwsgi_pass to ``sock_path``."""
    # nginx's workers run as nobody unless told otherwise, and nobody cannot connect to a root-owned socket.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = {kind: workdir / kind for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    return f"""{user}worker_processes 1;
daemon off;
pid {workdir / "nginx.pid"};
error_log {workdir / "nginx-error.log"} warn;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    client_max_body_size 2m;

    # Debian's build points these at /var/lib/nginx; keep every file the run makes in its temp dir.
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};

    # Keep the 64 KB request bodies and the 1 MB responses in memory: a temp file per request would add
    # disk I/O to nginx's figures and noise to everyone's req/s. Same for every server compared.
    client_body_buffer_size 128k;
    uwsgi_buffer_size 64k;
    uwsgi_buffers 32 64k;
    uwsgi_max_temp_file_size 0;

    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        location / {{
            include {workdir / "uwsgi_params"};
            uwsgi_pass unix:{sock_path};
        }}
    }}
}}
"""


def start_nginx(workdir: Path, port: int, sock_path: Path) -> Managed:
    """Write the config and uwsgi_params into ``workdir``, start nginx, wait until it listens."""
    (workdir / "uwsgi_params").write_text(UWSGI_PARAMS)
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_conf(workdir, port, sock_path))
    nginx = nginx_executable()
    # -e: nginx opens its compiled-in error log before it reads the config unless told where to write.
    argv = [nginx, "-p", str(workdir), "-e", str(workdir / "nginx-error.log"), "-c", str(conf)]
    # SIGQUIT: graceful stop, so the workers close their connections before they exit.
    proc = Managed("nginx", argv, workdir / "nginx.log", workdir, stop_signal=signal.SIGQUIT)
    deadline = time.monotonic() + READY_DEADLINE
    try:
        while True:
            proc.check_alive()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                    return proc
            except OSError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise BenchError(f"nginx not listening on {port} after {READY_DEADLINE:.0f} s")
            time.sleep(POLL_INTERVAL)
    except BenchError as exc:
        proc.stop()
        raise BenchError(f"nginx: {exc}", _tail(workdir / "nginx-error.log")) from None
    except BaseException:
        proc.stop()  # interrupted while waiting: the caller never gets the handle, so stop it here
        raise


# --------------------------------------------------------------------------------------------------------
# servers


# An Apache "combined"-like access line, the kind of log-format users write.
LOG_FORMAT = (
    '%(addr) - %(user) [%(ltime)] "%(method) %(uri) %(proto)" %(status) %(size) "%(referer)" '
    '"%(uagent)" %(msecs)'
)


def server_command(
    name: str, sock_path: Path, extra_binserve: Sequence[str]
) -> tuple[list[str], signal.Signals]:
    """The argv serving bench_app on ``sock_path`` (2 workers, no request log) and its stop signal."""
    app_file = str(Path(bench_app.__file__).resolve())
    if name.startswith("binserve"):
        stats = ["--stats", str(sock_path.with_suffix(".stats"))] if name == "binserve-stats" else []
        if name in ("binserve-log", "binserve-logformat"):
            # The request log on, into a file as in production (the later option wins).
            stats = ["--disable-logging=false", "--logto", str(sock_path.with_suffix(".log"))]
            if name == "binserve-logformat":
                stats += ["--log-format", LOG_FORMAT]
        argv = [
            _console_script("binserve"),
            "--socket",
            str(sock_path),
            "--wsgi-file",
            app_file,
            "--processes",
            str(WORKERS),
            "--master",
            "--disable-logging",
            *stats,
            *extra_binserve,
        ]
        return argv, signal.SIGTERM
    if name in ("uwsgi", "uwsgi-log"):
        log = ["--disable-logging"] if name == "uwsgi" else ["--logto", str(sock_path.with_suffix(".log"))]
        argv = [
            _console_script("uwsgi"),
            "--socket",
            str(sock_path),
            "--wsgi-file",
            app_file,
            "--processes",
            str(WORKERS),
            "--master",
            *log,
            "--buffer-size",
            "65535",
            "--need-app",
        ]
        # uWSGI 2.0 takes SIGTERM as "brutal reload" and keeps running; SIGINT is its shutdown.
        return argv, signal.SIGINT
    if name == "gunicorn":
        # gunicorn >= 27 opens a control socket in ~/.gunicorn by default: a file outside the temp dir and an
        # extra listener in the arbiter that neither other server has.
        argv = [
            _console_script("gunicorn"),
            "--protocol",
            "uwsgi",
            "--bind",
            f"unix:{sock_path}",
            "--workers",
            str(WORKERS),
            "--no-control-socket",
            f"{bench_app.__name__}:application",
        ]
        return argv, signal.SIGTERM
    raise ValueError(f"unknown server {name!r}")


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never route 127.0.0.1 via a proxy


def http_request(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    """Status and body of one request through nginx (non-2xx statuses are returned, not raised)."""
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        request.add_header("Content-Type", "application/octet-stream")
    try:
        with _OPENER.open(request, timeout=PROBE_TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(server: Managed, sock_path: Path, base_url: str) -> float:
    """Poll until a GET through nginx answers 200 and every worker exists; the seconds it took.

    One worker answering is not enough: gunicorn forks its workers one by one, and a worker still
    booting when the measured run starts would charge its start-up to the requests.
    """
    start = time.monotonic()
    last = "socket not created"
    while True:
        server.check_alive()
        if sock_path.exists():
            try:
                status, _ = http_request(base_url + "/")
            except OSError as exc:
                last = f"GET /: {exc}"
            else:
                processes = len(sample_cpu(server.pid))
                if status == 200 and processes > WORKERS:
                    return time.monotonic() - start
                # 502 while nothing accepts on the socket yet
                last = f"GET / answered {status}, {processes} of {WORKERS + 1} processes up"
        if time.monotonic() - start > READY_DEADLINE:
            raise BenchError(f"not ready after {READY_DEADLINE:.0f} s ({last})", server.tail())
        time.sleep(POLL_INTERVAL)


@contextmanager
def running_server(
    name: str, sock_path: Path, workdir: Path, repeat: int, extra_binserve: Sequence[str]
) -> Iterator[Managed]:
    """A started server whose socket nothing else holds, stopped on the way out whatever happened."""
    # The path is nginx's fixed uwsgi_pass target, shared by the servers in turn: a stale socket file
    # would make the readiness check pass before the new server bound it.
    sock_path.unlink(missing_ok=True)
    argv, stop_signal = server_command(name, sock_path, extra_binserve)
    server = Managed(name, argv, workdir / f"{name}-{repeat}.log", workdir, stop_signal)
    try:
        yield server
    finally:
        server.stop()
        sock_path.unlink(missing_ok=True)

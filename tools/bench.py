"""Benchmark binserve against uWSGI and gunicorn, each behind the same real nginx, loaded by wrk.

Run ``python -m binserve.tools.bench --help``. For every server (binserve, uWSGI via pyuwsgi, gunicorn's
``--protocol uwsgi``; two worker processes, request logging off) and every workload (hello world, a 1 MB
response, a 64 KB POST echo) the harness

1. starts the server on a unix socket that one nginx (started once, config in a temp dir) passes to,
2. polls until a GET through nginx answers 200 (deadline 30 s),
3. checks each workload's response once with urllib (status, exact body), so a broken server is not "fast",
4. runs wrk for a warm-up, then for the measured run, sampling the CPU time of every process of the
   server's tree (master and workers) and of nginx just before and just after the measured run,
5. stops the server: its stop signal to the main process, a deadline, then SIGKILL to its process group.

The figure to compare is CPU microseconds per request: req/s on a shared 2-core machine mostly says how
the cores were split between wrk, nginx and the workers, while CPU per request is the server's own cost.

Longer than our other modules because it is one program whose parts share its records: the
workloads, the measured run, and the report that divides binserve's figures by the references'.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

from binserve.testing.processes import free_port, nginx_executable
from binserve.tools import bench_app
from binserve.tools.bench_procs import (
    BenchError,
    Managed,
    cpu_delta,
    http_request,
    running_server,
    sample_cpu,
    start_nginx,
    wait_ready,
)

POST_SIZE = 65536
WRK = "/usr/bin/wrk"  # Debian's
# binserve-stats: binserve with a stats server, so its counters are kept on every request.
# binserve-log / binserve-logformat / uwsgi-log (run when named): the request log on, written
# to a file: uWSGI's default line, a log-format, and uWSGI itself writing its default line.
DEFAULT_SERVERS = ("binserve", "binserve-stats", "uwsgi", "gunicorn")
SERVERS = (*DEFAULT_SERVERS, "binserve-log", "binserve-logformat", "uwsgi-log")
REFERENCES = ("uwsgi", "gunicorn")  # the servers binserve's figures are divided by
LABELS = {
    "binserve": "binserve",
    "binserve-stats": "binserve+stats",
    "binserve-log": "binserve+log",
    "binserve-logformat": "binserve+log-format",
    "uwsgi-log": "uWSGI+log",
    "uwsgi": "uWSGI",
    "gunicorn": "gunicorn",
}

# wrk's done() hook prints the summary as one JSON line, so nothing depends on wrk's human-readable text.
WRK_DONE_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, '
    .. '"write": %d, "status": %d, "timeout": %d, "p50_us": %.0f, "p99_us": %.0f}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""
RESULT_MARKER = "BENCH_RESULT "


@dataclass(frozen=True)
class Workload:
    """One kind of request wrk sends over and over."""

    name: str
    path: str
    method: str
    body_size: int
    expected: bytes | None  # the response body; None means "echo of the request body"

    def lua(self) -> str:
        """The wrk script for this workload: request setup plus the JSON summary hook."""
        setup = ""
        if self.method != "GET":
            setup = (
                f'wrk.method = "{self.method}"\n'
                f'wrk.body = string.rep("x", {self.body_size})\n'
                'wrk.headers["Content-Type"] = "application/octet-stream"\n'
            )
        return setup + WRK_DONE_LUA


WORKLOADS: dict[str, Workload] = {
    "hello": Workload("hello", "/", "GET", 0, bench_app.HELLO),
    "1m": Workload("1m", "/1m", "GET", 0, bench_app.ONE_MB),
    "post64k": Workload("post64k", "/echo", "POST", POST_SIZE, None),
}


@dataclass
class Measurement:
    """One measured wrk run of one workload against one server."""

    server: str
    workload: str
    repeat: int
    requests: int
    duration_s: float
    req_per_s: float
    server_cpu_s: float
    server_processes: int  # master + workers sampled after the run: 3 for the configurations here
    cpu_us_per_req: float
    nginx_cpu_us_per_req: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]
    notes: list[str] = field(default_factory=list)

    @property
    def error_count(self) -> int:
        """All wrk errors: socket errors plus non-2xx/3xx responses."""
        return sum(self.errors.values())


@dataclass
class Failure:
    """A server that did not start, a response that was wrong, a run that broke."""

    server: str
    workload: str | None
    repeat: int
    stage: str
    message: str
    log_tail: str = ""


# --------------------------------------------------------------------------------------------------------
# wrk


def validate(base_url: str, workload: Workload) -> None:
    """One request of ``workload`` through nginx; BenchError unless it is 200 with exactly the right body."""
    sent = os.urandom(workload.body_size) if workload.body_size else None
    expected = workload.expected if workload.expected is not None else sent
    try:
        status, body = http_request(base_url + workload.path, sent)
    except OSError as exc:
        raise BenchError(f"{workload.method} {workload.path}: {exc}") from None
    if status != 200:
        raise BenchError(f"{workload.method} {workload.path} answered {status}: {body[:200]!r}")
    if body != expected:
        size = len(expected) if expected is not None else 0
        raise BenchError(
            f"{workload.method} {workload.path}: body of {len(body)} bytes differs from the "
            f"expected {size} bytes (first bytes {body[:40]!r})"
        )


def run_wrk(url: str, script: Path, connections: int, duration: float) -> dict[str, Any]:
    """Run wrk once and return the summary its done() hook printed."""
    argv = [
        WRK,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish within {duration + 60:.0f} s") from None
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            return dict(json.loads(line[len(RESULT_MARKER) :]))
    raise BenchError(
        f"wrk exited with {done.returncode} without a summary", (done.stdout + done.stderr)[-2000:]
    )


def measure(
    server: Managed,
    nginx: Managed,
    name: str,
    workload: Workload,
    script: Path,
    url: str,
    args: argparse.Namespace,
    repeat: int,
) -> Measurement:
    """Warm up, then one measured wrk run with the CPU of the server's tree and nginx's sampled around it."""
    if args.warmup > 0:
        run_wrk(url, script, args.connections, args.warmup)
    server.check_alive()
    server_before, nginx_before = sample_cpu(server.pid), sample_cpu(nginx.pid)
    summary = run_wrk(url, script, args.connections, args.duration)
    server_after, nginx_after = sample_cpu(server.pid), sample_cpu(nginx.pid)
    server.check_alive()
    requests = int(summary["requests"])
    if requests == 0:
        raise BenchError("wrk completed no request", server.tail())
    server_cpu, notes = cpu_delta(server_before, server_after)
    nginx_cpu, _ = cpu_delta(nginx_before, nginx_after)
    duration_s = summary["duration_us"] / 1e6
    errors = {key: int(summary[key]) for key in ("connect", "read", "write", "timeout", "status")}
    return Measurement(
        server=name,
        workload=workload.name,
        repeat=repeat,
        requests=requests,
        duration_s=duration_s,
        req_per_s=requests / duration_s,
        server_cpu_s=server_cpu,
        server_processes=len(server_after),
        cpu_us_per_req=server_cpu / requests * 1e6,
        nginx_cpu_us_per_req=nginx_cpu / requests * 1e6,
        p50_ms=summary["p50_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        errors=errors,
        notes=notes,
    )


# --------------------------------------------------------------------------------------------------------
# the run


@dataclass
class Run:
    """Everything measured so far; printed even when the run is interrupted."""

    measurements: list[Measurement] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def fail(self, server: str, workload: str | None, repeat: int, stage: str, exc: BenchError) -> None:
        """Record a failure and tell the operator now, with the log tail."""
        self.failures.append(Failure(server, workload, repeat, stage, str(exc), exc.log_tail))
        where = f"{server}/{workload}" if workload else server
        print(f"bench: FAILED {where} ({stage}, repeat {repeat}): {exc}", file=sys.stderr)
        if exc.log_tail:
            print("  " + exc.log_tail.replace("\n", "\n  "), file=sys.stderr)


def bench_server(
    run: Run,
    name: str,
    nginx: Managed,
    base_url: str,
    sock_path: Path,
    workdir: Path,
    scripts: dict[str, Path],
    args: argparse.Namespace,
    repeat: int,
) -> None:
    """Start one server, validate and measure every workload against it, stop it."""
    try:
        with running_server(name, sock_path, workdir, repeat, args.extra_binserve_args) as server:
            try:
                ready = wait_ready(server, sock_path, base_url)
            except BenchError as exc:
                run.fail(name, None, repeat, "start", exc)
                return
            print(f"bench: [{repeat}] {name} ready in {ready:.2f} s (pid {server.pid})", file=sys.stderr)
            for wname in args.workloads:
                workload = WORKLOADS[wname]
                try:
                    validate(base_url, workload)
                except BenchError as exc:
                    exc.log_tail = exc.log_tail or server.tail()
                    run.fail(name, wname, repeat, "validate", exc)
                    continue
                try:
                    result = measure(
                        server, nginx, name, workload, scripts[wname], base_url + workload.path, args, repeat
                    )
                except BenchError as exc:
                    run.fail(name, wname, repeat, "measure", exc)
                    if not server.alive():
                        return
                    continue
                run.measurements.append(result)
                print(
                    f"bench: [{repeat}] {name:8} {wname:8} {result.req_per_s:9.0f} req/s "
                    f"{result.cpu_us_per_req:9.1f} us/req  errors {result.error_count}",
                    file=sys.stderr,
                )
    except BenchError as exc:  # the command could not be built (console script missing)
        run.fail(name, None, repeat, "start", exc)


def execute(args: argparse.Namespace, workdir: Path) -> Run:
    """Start nginx, then rotate through servers and workloads ``args.repeat`` times."""
    run = Run()
    sock_path = workdir / "app.sock"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    scripts = {}
    for wname in args.workloads:
        scripts[wname] = workdir / f"{wname}.lua"
        scripts[wname].write_text(WORKLOADS[wname].lua())
    nginx = start_nginx(workdir, port, sock_path)
    try:
        for repeat in range(1, args.repeat + 1):
            for name in args.servers:
                bench_server(run, name, nginx, base_url, sock_path, workdir, scripts, args, repeat)
    except KeyboardInterrupt:
        print("bench: interrupted; reporting what was measured", file=sys.stderr)
        run.failures.append(Failure("-", None, 0, "interrupted", "KeyboardInterrupt"))
    finally:
        nginx.stop()
    return run


# --------------------------------------------------------------------------------------------------------
# report


@dataclass
class Row:
    """The median of one (server, workload) over the repeats."""

    server: str
    workload: str
    runs: int
    req_per_s: float
    cpu_us_per_req: float
    nginx_cpu_us_per_req: float
    errors: int
    cpu_us_per_req_runs: list[float]


def summarize(run: Run, servers: Sequence[str], workloads: Sequence[str]) -> dict[tuple[str, str], Row]:
    """Median req/s and CPU/req per (server, workload); errors are summed over the repeats."""
    rows = {}
    for server in servers:
        for workload in workloads:
            ms = [m for m in run.measurements if m.server == server and m.workload == workload]
            if not ms:
                continue
            cpu = [m.cpu_us_per_req for m in ms]
            rows[server, workload] = Row(
                server,
                workload,
                len(ms),
                statistics.median(m.req_per_s for m in ms),
                statistics.median(cpu),
                statistics.median(m.nginx_cpu_us_per_req for m in ms),
                sum(m.error_count for m in ms),
                cpu,
            )
    return rows


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def ratios(rows: dict[tuple[str, str], Row], workloads: Sequence[str]) -> list[dict[str, Any]]:
    """binserve / uWSGI and binserve / gunicorn per workload, for CPU per request and for req/s."""
    out = []
    for workload in workloads:
        mine = rows.get(("binserve", workload))
        entry: dict[str, Any] = {"workload": workload}
        for ref in REFERENCES:
            theirs = rows.get((ref, workload))
            if mine is None or theirs is None:
                entry[f"cpu_vs_{ref}"] = entry[f"rps_vs_{ref}"] = None
            else:
                entry[f"cpu_vs_{ref}"] = mine.cpu_us_per_req / theirs.cpu_us_per_req
                entry[f"rps_vs_{ref}"] = mine.req_per_s / theirs.req_per_s
        out.append(entry)
    return out


# The CPU-per-request goals binserve is held to: (workload, reference) -> highest ratio allowed.
TARGETS = {
    ("hello", "uwsgi"): 1.5,
    ("hello", "gunicorn"): 0.3,
    ("1m", "uwsgi"): 1.5,
    ("post64k", "uwsgi"): 1.5,
}
# Keeping per-worker stats must not slow the request path measurably.
STATS_TARGETS = {"hello": 1.05}
LOG_FORMAT_TARGETS = {"hello": 1.10}  # a log-format line against the default one


Verdict = tuple[str, float | None, bool]


def verdicts(rows: dict[tuple[str, str], Row], workloads: Sequence[str]) -> list[Verdict]:
    """Each goal measured in this run: its description, the measured ratio, whether it is met."""
    out: list[Verdict] = []
    by_workload = {entry["workload"]: entry for entry in ratios(rows, workloads)}
    for (workload, ref), limit in TARGETS.items():
        if workload not in by_workload:
            continue
        value = by_workload[workload][f"cpu_vs_{ref}"]
        met = value is not None and value <= limit
        out.append((f"{workload}: CPU/req <= {limit}x {LABELS[ref]}", value, met))
    for workload, limit in STATS_TARGETS.items():
        with_stats, without = rows.get(("binserve-stats", workload)), rows.get(("binserve", workload))
        if with_stats is None or without is None or workload not in workloads:
            continue
        value = with_stats.cpu_us_per_req / without.cpu_us_per_req
        out.append((f"{workload}: CPU/req with stats <= {limit}x without", value, value <= limit))
    for workload, limit in LOG_FORMAT_TARGETS.items():
        formatted, default = rows.get(("binserve-logformat", workload)), rows.get(("binserve-log", workload))
        if formatted is None or default is None or workload not in workloads:
            continue
        value = formatted.cpu_us_per_req / default.cpu_us_per_req
        goal = f"{workload}: CPU/req with a log-format <= {limit}x the default line"
        out.append((goal, value, value <= limit))
    return out


def markdown(run: Run, rows: dict[tuple[str, str], Row], args: argparse.Namespace) -> str:
    """The results table, the binserve ratios and the failures, as markdown."""
    lines = [
        f"wrk -t1 -c{args.connections} -d{args.duration:g}s through nginx, {args.repeat} repeat(s), "
        "medians. CPU = user+sys of the server's master and workers over the measured run. "
        "×uWSGI / ×gunicorn = CPU us/req divided by theirs (lower is cheaper).",
        "",
        "| server | workload | req/s | CPU us/req | ×uWSGI | ×gunicorn | nginx us/req | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    failed = {(f.server, f.workload) for f in run.failures}
    for server in args.servers:
        for workload in args.workloads:
            row = rows.get((server, workload))
            if row is None:
                why = (
                    "not measured"
                    if (server, workload) not in failed and (server, None) not in failed
                    else "FAILED (see below)"
                )
                lines.append(f"| {LABELS[server]} | {workload} | {why} | | | | | |")
                continue
            refs = [
                _ratio(row.cpu_us_per_req, rows[ref, workload].cpu_us_per_req)
                if (ref, workload) in rows
                else None
                for ref in REFERENCES
            ]
            lines.append(
                f"| {LABELS[server]} | {workload} | {row.req_per_s:,.0f} | {row.cpu_us_per_req:,.1f} | "
                f"{_fmt(refs[0])} | {_fmt(refs[1])} | {row.nginx_cpu_us_per_req:,.1f} | {row.errors} |"
            )
    if "binserve" in args.servers:
        lines += [
            "",
            "| workload | binserve/uWSGI CPU | binserve/uWSGI req/s | binserve/gunicorn CPU | "
            "binserve/gunicorn req/s |",
            "|---|---:|---:|---:|---:|",
        ]
        for entry in ratios(rows, args.workloads):
            lines.append(
                f"| {entry['workload']} | {_fmt(entry['cpu_vs_uwsgi'])} | {_fmt(entry['rps_vs_uwsgi'])} | "
                f"{_fmt(entry['cpu_vs_gunicorn'])} | {_fmt(entry['rps_vs_gunicorn'])} |"
            )
        goals = verdicts(rows, args.workloads)
        if goals:
            lines += ["", "Goals:"]
            lines += [f"- {what}: {_fmt(value)} {'met' if ok else 'MISSED'}" for what, value, ok in goals]
    if run.failures:
        lines += ["", "Failures:"]
        for f in run.failures:
            where = f"{f.server}/{f.workload}" if f.workload else f.server
            lines.append(f"- {where}, repeat {f.repeat}, {f.stage}: {f.message}")
    notes = sorted({f"{m.server}/{m.workload}: {note}" for m in run.measurements for note in m.notes})
    if notes:
        lines += ["", "Notes:", *(f"- {note}" for note in notes)]
    return "\n".join(lines)


def _version(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError as exc:
        return f"unavailable ({exc})"
    return (done.stdout + done.stderr).strip().splitlines()[0] if (done.stdout + done.stderr).strip() else "?"


def environment() -> dict[str, str]:
    """Versions of everything in the measurement, for the JSON record."""
    env = {
        "python": sys.version.split()[0],
        "cpus": str(os.cpu_count()),
        "nginx": _version([nginx_executable(), "-v"]),
        "wrk": _version([WRK, "--version"]),
    }
    for dist in ("binserve", "pyuwsgi", "gunicorn"):
        try:
            env[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            env[dist] = "not installed"
    return env


def to_json(run: Run, rows: dict[tuple[str, str], Row], args: argparse.Namespace) -> dict[str, Any]:
    """The whole run as a JSON-able document: config, environment, medians, ratios, raw runs, failures."""
    return {
        "config": {
            "duration": args.duration,
            "warmup": args.warmup,
            "connections": args.connections,
            "repeat": args.repeat,
            "servers": args.servers,
            "workloads": args.workloads,
            "extra_binserve_args": args.extra_binserve_args,
        },
        "environment": environment(),
        "summary": [asdict(row) for row in rows.values()],
        "ratios": ratios(rows, args.workloads) if "binserve" in args.servers else [],
        "measurements": [asdict(m) for m in run.measurements],
        "failures": [asdict(f) for f in run.failures],
    }


# --------------------------------------------------------------------------------------------------------
# command line


def _csv(choices: Sequence[str]) -> Any:
    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in items if item not in choices]
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(choices)} (got {text!r})")
        return items

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    summary = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m binserve.tools.bench", description=summary)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each measured wrk run [10]")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk warm-up, 0 = none [2]")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (wrk -c) [8]")
    parser.add_argument(
        "--servers",
        type=_csv(SERVERS),
        default=list(DEFAULT_SERVERS),
        help=(
            "comma-separated, in run order [binserve,binserve-stats,uwsgi,gunicorn]; also "
            "binserve-log, binserve-logformat, uwsgi-log (the request log on, to a file)"
        ),
    )
    parser.add_argument(
        "--workloads",
        type=_csv(list(WORKLOADS)),
        default=list(WORKLOADS),
        help="comma-separated [hello,1m,post64k]",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the whole server/workload rotation N times and report medians [1]",
    )
    parser.add_argument(
        "--extra-binserve-args",
        type=shlex.split,
        default=[],
        help="more binserve arguments, one shell-quoted string: --extra-binserve-args='...'",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this path")
    parser.add_argument(
        "--keep-temp",
        action="store_true",
        help="keep the temp dir (configs, server and nginx logs) and print its path",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 3 when binserve misses one of its CPU-per-request goals (see Goals in the report)",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.connections < 1 or args.duration < 1:
        parser.error("--repeat and --connections must be >= 1 and --duration >= 1 s")
    return args


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # A SIGTERM to the harness must still stop the servers and nginx: turn it into the exception the
    # finally blocks already handle.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the markdown report; 1 if anything failed, 0 otherwise."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="binserve-bench-"))
    try:
        run = execute(args, workdir)
    except BenchError as exc:  # nginx itself did not start: nothing can be measured
        print(f"bench: {exc}\n{exc.log_tail}", file=sys.stderr)
        return 1
    finally:
        if args.keep_temp:
            print(f"bench: temp dir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    rows = summarize(run, args.servers, args.workloads)
    print(markdown(run, rows, args))
    if args.json:
        args.json.write_text(json.dumps(to_json(run, rows, args), indent=2) + "\n")
    if run.failures:
        return 1
    if args.check and "binserve" in args.servers:
        return 0 if all(ok for _, _, ok in verdicts(rows, args.workloads)) else 3
    return 0


if __name__ == "__main__":
    sys.exit(main())

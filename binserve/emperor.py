"""The emperor: one vassal (a binserve master with its workers) per ini file in a directory.

Each step compares the desired state (the ``*.ini`` files: name, content digest, owner) with
the actual one (the vassals running) in ``plan``, a pure function, and carries out what it
returns. uWSGI's semantics: a new file spawns a vassal, a changed file
reloads it gracefully, a removed file stops it, a vassal that dies is respawned; one that
died without ever serving a request waits first, 1 s, 2 s, 4 s ... up to a cap. A file has
changed when its mtime moved forward (``touch`` reloads, as uWSGI users expect) or when its
content differs, which uWSGI misses when a deploy tool keeps an older mtime.

Vassal files are their users' input. The scan reads them bounded and non-blocking; the emperor
executes one (its includes, ``@(file)``, ``%(math)``, to learn its stats address) only in a
forked child bounded in time and memory. A tyrant refuses links that could make it run another
user's file as that user, gives vassals a minimal environment, and keeps its state file out of
the directory its users write.

Vassals speak uWSGI's emperor byte protocol over a socketpair named by ``UWSGI_EMPEROR_FD``
(one byte per message), so real uWSGI vassals run under this emperor and binserve vassals under uWSGI's.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import json
import os
import pwd
import resource
import selectors
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, NoReturn

from . import safefile, signals
from .config import Config, ConfigError, load
from .log import log, printable
from .signals import kill_quietly
from .sockets import SocketError, absolute
from .stats import VERSION, StatsServer, bind_stats
from .vassal_link import (
    CMD_GRACEFUL_STOP,
    CMD_RELOAD,
    EMPEROR_FD_ENV,
    MSG_ACCEPTING,
    MSG_LOYAL,
    MSG_SPAWNED,
    MSG_VOLUNTARY,
)

STATE_NAME = ".binserve-emperor.json"
# A tyrant's vassal directories are writable by its users: its state lives where only root writes.
RUN_DIR = "/run/binserve"
# A state file lists every vassal in a few hundred bytes each: this bound is thousands of them.
MAX_STATE_BYTES = 16 << 20
# What a tyrant vassal gets from the emperor's environment; the rest (secrets included) stays.
TYRANT_ENV = ("PATH", "LANG", "LC_ALL", "TZ")

# A vassal file is executed (includes, @(file), %(math)) only in a child bounded by these.
PROBE_SECONDS = 2.0
PROBE_MEMORY = 256 << 20  # beyond the emperor's own address space, which the child starts with
PROBE_OUTPUT = 4096

USAGE_ERROR = 2  # as the command's: the emperor's own configuration cannot work


@dataclass(frozen=True)
class VassalFile:
    """A vassal as the directory describes it."""

    path: str
    digest: str
    uid: int
    gid: int
    mtime: float = 0.0
    real: str = ""  # the file itself, the link resolved: its directory is the vassal's cwd


@dataclass
class Vassal:
    """A vassal as the emperor knows it."""

    path: str
    digest: str = ""
    mtime: float = 0.0
    uid: int = 0
    gid: int = 0
    pid: int | None = None
    state: str = "new"  # starting, running, reloading, stopping, waiting, stopped
    born: float = 0.0
    last_reload: float = 0.0
    respawns: int = 0
    loyal: bool = False
    accepting: bool = False
    failures: int = 0
    next_attempt: float = 0.0  # monotonic time before which it is not respawned
    waiting_why: str = ""
    stop_deadline: float = 0.0
    stats: str | None = None  # the vassal's stats address, when its file names one
    first_failure: float = 0.0  # epoch of the first of the failures in a row
    unreadable: str = ""  # the digest whose stats address could not be read (logged once)
    last_attempt: float = 0.0  # epoch of the latest spawn attempt
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    pipe: socket.socket | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Spawn:
    """Start a vassal for this file."""

    path: str


@dataclass(frozen=True)
class Reload:
    """The file changed: reload the vassal gracefully."""

    path: str


@dataclass(frozen=True)
class Stop:
    """The file is gone (or now belongs to someone else): stop the vassal gracefully."""

    path: str


@dataclass(frozen=True)
class Wait:
    """A failing vassal is throttled until ``until`` (monotonic seconds)."""

    path: str
    until: float
    why: str


Action = Spawn | Reload | Stop | Wait


@dataclass
class Probe:
    """A child reading a vassal file's stats address; it answers on ``pipe`` before ``deadline``."""

    vassal: Vassal
    digest: str
    pid: int
    pipe: int
    deadline: float
    output: bytes = b""


LIVE = ("starting", "running", "reloading")


def plan(desired: dict[str, VassalFile], actual: dict[str, Vassal], now: float) -> list[Action]:
    """What to do to make the running vassals match the files. Pure: no I/O, no clock.

    A vassal being stopped is left alone until it has exited; one whose process died is
    respawned at once if it was loyal (had served a request), else after its throttle.
    """
    actions: list[Action] = []
    for path, wanted in desired.items():
        vassal = actual.get(path)
        if vassal is None or vassal.state == "stopped":
            actions.append(Spawn(path))
        elif vassal.state == "waiting":
            # A fixed file is worth trying at once; an unchanged one waits out its throttle.
            if now >= vassal.next_attempt or wanted.digest != vassal.digest:
                actions.append(Spawn(path))
            else:
                actions.append(Wait(path, vassal.next_attempt, vassal.waiting_why))
        elif vassal.state in LIVE and (wanted.uid, wanted.gid) != (vassal.uid, vassal.gid):
            actions.append(Stop(path))
        elif vassal.state in LIVE and (wanted.digest != vassal.digest or wanted.mtime > vassal.mtime):
            actions.append(Reload(path))
    for path, vassal in actual.items():
        if path not in desired and vassal.state in (*LIVE, "waiting"):
            actions.append(Stop(path))
    return actions


def throttle(failures: int, base_ms: int, max_ms: int) -> float:
    """Seconds to wait before respawning a vassal that failed ``failures`` times in a row."""
    return min(base_ms * 2 ** max(failures - 1, 0), max_ms) / 1000.0


# What tells a file changed without reading it: a write moves its ctime, a swap its inode.
FileKey = tuple[int, int, int, int, int]
# An editor saving a file may replace it between two lookups once; a user flipping it does so always.
LOOKUP_TRIES = 3


def scan(
    patterns: list[str], tyrant: bool, digests: dict[str, tuple[FileKey, str]] | None = None
) -> tuple[dict[str, VassalFile], list[str]]:
    """The vassal files matching ``patterns`` (a directory means its *.ini), and problems found.

    ``digests`` (kept by the caller between scans) spares reading a file that has not changed.
    """
    found: dict[str, VassalFile] = {}
    problems = []
    known = {} if digests is None else digests
    seen = set()
    for pattern in patterns:
        paths = glob.glob(os.path.join(pattern, "*.ini")) if os.path.isdir(pattern) else glob.glob(pattern)
        for path in sorted(paths):
            path = os.path.abspath(path)
            seen.add(path)
            wanted, problem = _vassal_file(path, tyrant, known)
            if wanted is not None:
                found[path] = wanted
            else:
                problems.append(problem)
    for gone in set(known) - seen:
        del known[gone]
    return found, problems


def _lookup(path: str) -> tuple[os.stat_result, os.stat_result, str]:
    """``lstat``, ``stat`` and ``realpath`` of ``path`` that agree, tried again if the name changed."""
    for _ in range(LOOKUP_TRIES):
        link, info, real = os.lstat(path), os.stat(path), os.path.realpath(path)
        # A user swapping their own file for a link to another's between the lookups must not
        # have the scan take the other's file (and owner) for theirs.
        if stat.S_ISLNK(link.st_mode) or (info.st_dev, info.st_ino) == (link.st_dev, link.st_ino):
            return link, info, real
    raise safefile.UnsafeFile(path, "changed at each look: left for the next scan")


def _vassal_file(
    path: str, tyrant: bool, digests: dict[str, tuple[FileKey, str]]
) -> tuple[VassalFile | None, str]:
    """One vassal file as the directory describes it, or why it is refused."""
    if not os.path.basename(path).isprintable():
        # Its name would go into every line about it: whoever may write the directory could forge lines.
        return None, f"{printable(path)}: refused: a vassal file name with control characters"
    try:
        link, info, real = _lookup(path)
        key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        if path not in digests or digests[path][0] != key:
            # Bounded, non-blocking, regular files only: a FIFO, a device or a sparse 4 GB file
            # named *.ini must not hang the emperor or fill its memory.
            digests[path] = (key, hashlib.sha256(safefile.read_bounded(path)).hexdigest())
    except OSError as exc:
        return None, f"{path}: cannot read vassal file: {exc.strerror}"
    digest = digests[path][1]
    if tyrant and (info.st_uid == 0 or info.st_gid == 0):
        return None, f"[emperor-tyrant] invalid permissions for vassal {path}: owned by root"
    # Whoever may write the directory could otherwise run another user's file as that user.
    if tyrant and stat.S_ISLNK(link.st_mode) and link.st_uid != info.st_uid:
        return None, (
            f"[emperor-tyrant] vassal {path} is a symbolic link owned by uid {link.st_uid} to a file"
            f" owned by uid {info.st_uid}: refused"
        )
    if tyrant and info.st_nlink != 1:
        return None, (
            f"[emperor-tyrant] vassal {path} has {info.st_nlink} hard links: refused"
            " (a hard link does not say who made it)"
        )
    return VassalFile(path, digest, info.st_uid, info.st_gid, info.st_mtime, real), ""


# inotify events that can mean a vassal file appeared, changed or went (inotify(7)).
IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = (
    0x2,
    0x4,
    0x8,
    0x40,
    0x80,
    0x100,
    0x200,
)
WATCHED = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE


class DirectoryWatch:
    """inotify on the vassal directories (Linux), through libc: a change wakes the emperor at once.

    The periodic scan stays as the fallback, for systems or patterns inotify cannot watch.
    """

    def __init__(self, patterns: list[str]) -> None:
        self.fd: int | None = None
        libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(libc, "inotify_init1"):
            return
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            log(f"emperor: inotify unavailable ({os.strerror(ctypes.get_errno())}): scanning only")
            return
        watched = 0
        for pattern in patterns:
            directory = pattern if os.path.isdir(pattern) else os.path.dirname(pattern)
            if glob.has_magic(directory) or not os.path.isdir(directory):
                continue
            if libc.inotify_add_watch(fd, os.fsencode(directory), WATCHED) >= 0:
                watched += 1
            else:
                log(f"emperor: cannot watch {directory} ({os.strerror(ctypes.get_errno())}): scanning it")
        if watched:
            self.fd = fd
        else:
            os.close(fd)

    def changed(self) -> bool:
        """Read the pending events; whether there were any."""
        assert self.fd is not None
        seen = False
        while True:
            try:
                seen = bool(os.read(self.fd, 65536)) or seen
            except BlockingIOError:
                return seen


def _die_with_parent() -> None:
    """In the vassal before exec: be told to stop if the emperor dies (Linux).

    uWSGI sends SIGKILL; SIGTERM lets a binserve master stop its workers within its mercy and
    remove its socket, where a killed master would leave a busy worker running behind it.
    """
    signals.die_with_parent(signal.SIGTERM)


class Emperor:
    """The reconcile loop and the processes it carries the plan out on."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.patterns = [os.path.abspath(p) for p in config.emperor]
        first_dir = next((p for p in self.patterns if os.path.isdir(p)), os.getcwd())
        self.state_path: str | None = config.emperor_state or _default_state(first_dir, config.emperor_tyrant)
        self.vassals: dict[str, Vassal] = {}
        self.stopping = False
        self.deadline = 0.0
        self.selector = selectors.DefaultSelector()
        self.last_problems: set[str] = set()
        self.next_scan = 0.0
        self.dirty = True
        self.stats: StatsServer | None = None
        self.watch: DirectoryWatch | None = None
        self.probes: dict[int, Probe] = {}  # by pipe
        self.digests: dict[str, tuple[FileKey, str]] = {}  # what the scans read, by path
        self.unreaped: set[int] = set()  # probes that answered or were killed, not waited for yet

    def run(self) -> int:
        """Run until SIGTERM/SIGINT and every vassal has stopped."""
        if self.config.emperor_stats:
            try:
                listener = bind_stats(self.config.emperor_stats, "emperor-stats")
            except SocketError as exc:
                log(str(exc))
                return USAGE_ERROR
            self.stats = StatsServer(
                listener, self.config.stats_format, self.config.stats_http, self.config.uwsgi_allow_from
            )
            self.selector.register(self.stats.sock, selectors.EVENT_READ, self.stats)
        wake = signals.WakePipe(signals.EMPEROR)
        signals.unblock(signals.EMPEROR)  # those that arrived during the start are logged now
        self.selector.register(wake, selectors.EVENT_READ, wake)
        self.watch = DirectoryWatch(self.patterns)
        if self.watch.fd is not None:
            self.selector.register(self.watch.fd, selectors.EVENT_READ, self.watch)
        if self.config.emperor_tyrant:
            for directory in self.patterns:
                _warn_if_replaceable(directory)
        how = "inotify, and a scan" if self.watch.fd is not None else "a scan"
        log(f"emperor watching {', '.join(self.patterns)} ({how} every {self.config.emperor_freq:g} s)")
        while not (self.stopping and not self._alive()):
            self.step()
        for probe in list(self.probes.values()):
            self._end_probe(probe, "")
        for pid in self.unreaped:
            _reaped(pid, 0)
        self._write_state()
        if self.stats is not None:
            self.stats.close()
        log("emperor stopped: every vassal has exited")
        return 0

    def step(self) -> None:
        """Wait for a signal, a vassal message or the next scan, then reconcile."""
        now = time.monotonic()
        if self.stopping:
            # No scans while stopping: wake for the deadline, and for the SIGCHLDs meanwhile.
            timeout = min(max(0.0, self.deadline - now), 0.5)
        else:
            timeout = max(0.0, self.next_scan - now)
        if self.probes:
            timeout = min(timeout, max(0.0, min(p.deadline for p in self.probes.values()) - now))
        for key, _ in self.selector.select(timeout):
            if isinstance(key.data, signals.WakePipe):
                for signum in key.data.read():
                    self._on_signal(signum)
            elif key.data is self.stats:
                self.stats.answer(self.stats_document)
            elif key.data is self.watch:
                if self.watch.changed():
                    self.next_scan = 0.0  # something moved in a watched directory: look now
            elif isinstance(key.data, Probe):
                self._on_probe(key.data)
            else:
                self._on_message(key.data)
        self._reap()
        now = time.monotonic()
        for probe in [p for p in self.probes.values() if p.deadline <= now]:
            self._end_probe(probe, f"took more than {PROBE_SECONDS:g} s")
        if self.stopping:
            self._escalate(now)
        else:
            self._overstayed(now)
        if not self.stopping and now >= self.next_scan:
            self.next_scan = now + self.config.emperor_freq
            self._reconcile(now)
        if self.dirty:
            self._write_state()

    # -- signals and messages --------------------------------------------------------------
    def _on_signal(self, signum: int) -> None:
        if not signals.has_effect(signals.EMPEROR, signum):
            log(f"emperor: {signals.received(signals.EMPEROR, signum)}")
        elif signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT) and not self.stopping:
            mercy = self.config.worker_reload_mercy
            log(f"emperor: {signal.Signals(signum).name}, stopping every vassal gracefully ({mercy:g} s)")
            self.stopping = True
            self.deadline = time.monotonic() + mercy
            for vassal in self.vassals.values():
                if vassal.pid is not None:
                    self._command(vassal, CMD_GRACEFUL_STOP, signal.SIGTERM)
                    vassal.state = "stopping"
            self.dirty = True
        elif signum == signal.SIGHUP and not self.stopping:
            log("emperor: SIGHUP, reloading every vassal")
            for vassal in self.vassals.values():
                if vassal.state in ("starting", "running"):
                    self._reload(vassal)

    def _on_message(self, vassal: Vassal) -> None:
        assert vassal.pipe is not None
        try:
            data = vassal.pipe.recv(64)
        except OSError:
            data = b""
        if not data:
            self.selector.unregister(vassal.pipe)
            vassal.pipe.close()
            vassal.pipe = None
            return
        name = os.path.basename(vassal.path)
        for byte in data:
            if byte == MSG_SPAWNED:
                log(f"vassal {name} has been spawned")
            elif byte == MSG_ACCEPTING:
                if not vassal.accepting:
                    log(f"vassal {name} is ready to accept requests")
                vassal.accepting = True
                if vassal.state in ("starting", "reloading"):
                    vassal.state = "running"
            elif byte == MSG_LOYAL:
                if not vassal.loyal:
                    log(f"vassal {name} is now loyal")
                vassal.loyal = True
                vassal.failures = 0
            elif byte == MSG_VOLUNTARY:
                log(f"vassal {name} asked to be stopped")
                self._stop(vassal)
        self.dirty = True

    # -- carrying out the plan -------------------------------------------------------------
    def _reconcile(self, now: float) -> None:
        desired, problems = scan(self.patterns, self.config.emperor_tyrant, self.digests)
        for problem in set(problems) - self.last_problems:
            log(problem)
        self.last_problems = set(problems)
        for action in plan(desired, self.vassals, now):
            if isinstance(action, Spawn):
                self._spawn(desired[action.path])
            elif isinstance(action, Reload):
                vassal = self.vassals[action.path]
                vassal.digest, vassal.mtime = desired[action.path].digest, desired[action.path].mtime
                log(f"vassal {os.path.basename(action.path)} changed: graceful reload")
                self._reload(vassal)
            elif isinstance(action, Stop):
                vassal = self.vassals[action.path]
                if vassal.state == "waiting":
                    del self.vassals[action.path]
                    self.dirty = True
                else:
                    log(f"vassal {os.path.basename(action.path)} removed or reowned: stopping it")
                    self._stop(vassal)
        for path in [p for p, v in self.vassals.items() if v.state == "stopped" and p not in desired]:
            del self.vassals[path]
            self.dirty = True

    def _command_line(self, path: str) -> list[str]:
        wrapper = self.config.emperor_wrapper
        program = [wrapper] if wrapper else [sys.executable, "-m", "binserve"]
        args = [*program, "--ini", path]
        for template in self.config.vassals_inherit:
            args += ["--inherit", os.path.abspath(template)]
        return args

    def _spawn(self, wanted: VassalFile) -> None:
        vassal = self.vassals.get(wanted.path) or Vassal(wanted.path)
        self.vassals[wanted.path] = vassal
        vassal.last_attempt = time.time()
        # Recorded before the attempt: a vassal that cannot even start must not look "changed".
        vassal.digest, vassal.mtime = wanted.digest, wanted.mtime
        vassal.uid, vassal.gid = wanted.uid, wanted.gid
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        kwargs: dict[str, Any] = {}
        if self.config.emperor_tyrant:
            kwargs.update(user=wanted.uid, group=wanted.gid, extra_groups=[])
            env = _tyrant_environment(wanted.uid)
        else:
            env = dict(os.environ)
            env.pop("NOTIFY_SOCKET", None)
        env[EMPEROR_FD_ENV] = str(theirs.fileno())
        # The file's own directory, not the link's: a link planted in the vassal directory must
        # not make a relative wsgi-file load the planter's code.
        cwd = os.path.dirname(wanted.real or wanted.path)
        try:
            proc = subprocess.Popen(
                self._command_line(wanted.path),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                # Its own process group: a kill past the deadline takes the workers with the master.
                process_group=0,
                preexec_fn=_die_with_parent,
                **kwargs,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            ours.close()
            theirs.close()
            vassal.loyal = False  # it served nothing this time: throttle it
            log(f"vassal {os.path.basename(wanted.path)}: cannot start: {exc}")
            self._died(vassal, time.monotonic())
            return
        theirs.close()
        ours.setblocking(False)
        if vassal.born:
            vassal.respawns += 1
        vassal.proc, vassal.pid, vassal.pipe = proc, proc.pid, ours
        vassal.stats = None
        # Reading a tyrant vassal's file would expand its @(file) and $(ENV) as root.
        if not self.config.emperor_tyrant:
            self._probe(vassal, cwd)
        vassal.state, vassal.born, vassal.accepting = "starting", time.time(), False
        vassal.loyal = False
        self.selector.register(ours, selectors.EVENT_READ, vassal)
        log(f"spawned vassal {os.path.basename(wanted.path)} (pid {proc.pid})")
        self.dirty = True

    def _probe(self, vassal: Vassal, cwd: str) -> None:
        """Read the vassal's stats address in a bounded child: its file may crash or block a reader.

        A relative address is taken from ``cwd``, where the vassal starts.
        """
        if any(p.vassal is vassal for p in self.probes.values()):
            return
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(read_end)
            os.close(write_end)
            log(f"vassal {os.path.basename(vassal.path)}: no stats address: cannot fork ({exc.strerror})")
            return
        if pid == 0:
            os.close(read_end)
            _probe_child(vassal.path, cwd, write_end)
        os.close(write_end)
        os.set_blocking(read_end, False)
        probe = Probe(vassal, vassal.digest, pid, read_end, time.monotonic() + PROBE_SECONDS)
        self.probes[read_end] = probe
        self.selector.register(read_end, selectors.EVENT_READ, probe)

    def _on_probe(self, probe: Probe) -> None:
        try:
            data = os.read(probe.pipe, PROBE_OUTPUT + 1)
        except BlockingIOError:
            return
        probe.output += data
        if len(probe.output) > PROBE_OUTPUT:
            self._end_probe(probe, "answered too much")
        elif not data:
            answer = probe.output.decode(errors="replace")
            if answer[:1] == "+":
                probe.vassal.stats = answer[1:] or None
                self.dirty = True
            # Nothing written: the reader was killed (a signal, its alarm) before it could answer.
            self._end_probe(probe, "" if answer[:1] == "+" else answer[1:] or "it exited without answering")

    def _end_probe(self, probe: Probe, failure: str) -> None:
        """Forget a probe, killed if still running; a failure is logged once per file content."""
        del self.probes[probe.pipe]
        self.selector.unregister(probe.pipe)
        os.close(probe.pipe)
        kill_quietly(probe.pid, signal.SIGKILL)
        self.unreaped.add(probe.pid)
        if failure and probe.vassal.unreadable != probe.digest:
            probe.vassal.unreadable = probe.digest
            name = os.path.basename(probe.vassal.path)
            log(f"vassal {name}: no stats address: reading its file failed ({failure})")

    def _reload(self, vassal: Vassal) -> None:
        vassal.state, vassal.accepting = "reloading", False
        vassal.last_reload = time.time()
        self._command(vassal, CMD_RELOAD, signal.SIGHUP)
        self.dirty = True

    def _stop(self, vassal: Vassal) -> None:
        if vassal.state == "stopping":
            return  # asked again (a vassal repeating MSG_VOLUNTARY): the first deadline stands
        vassal.state = "stopping"
        vassal.stop_deadline = time.monotonic() + self.config.worker_reload_mercy
        self._command(vassal, CMD_GRACEFUL_STOP, signal.SIGTERM)
        self.dirty = True

    def _command(self, vassal: Vassal, command: bytes, fallback: int) -> None:
        """Tell the vassal over its pipe; by signal when the pipe is gone."""
        try:
            if vassal.pipe is None:
                raise BrokenPipeError
            vassal.pipe.send(command)
        except OSError:
            if vassal.pid is not None:
                kill_quietly(vassal.pid, fallback)

    def _reap(self) -> None:
        self.unreaped = {pid for pid in self.unreaped if not _reaped(pid, os.WNOHANG)}
        now = time.monotonic()
        for vassal in self.vassals.values():
            if vassal.proc is None or vassal.proc.poll() is None:
                continue
            code = vassal.proc.returncode
            how = f"exited with code {code}" if code >= 0 else f"killed by signal {-code}"
            name = os.path.basename(vassal.path)
            while vassal.pipe is not None and _pending_message(vassal.pipe):
                self._on_message(vassal)  # a "loyal" sent just before dying still counts
            if vassal.pipe is not None:
                self.selector.unregister(vassal.pipe)
                vassal.pipe.close()
                vassal.pipe = None
            vassal.proc, vassal.pid = None, None
            if vassal.state == "stopping" or self.stopping:
                log(f"vassal {name} stopped ({how})")
                vassal.state = "stopped"
            else:
                log(f"vassal {name} died ({how})")
                self._died(vassal, now)
            self.dirty = True

    def _died(self, vassal: Vassal, now: float) -> None:
        name = os.path.basename(vassal.path)
        if vassal.loyal:
            vassal.failures = 0
            vassal.state, vassal.next_attempt, vassal.waiting_why = "waiting", now, ""
            return
        vassal.failures += 1
        if vassal.failures == 1:
            vassal.first_failure = time.time()
        delay = throttle(vassal.failures, self.config.emperor_throttle, self.config.emperor_max_throttle)
        vassal.state, vassal.next_attempt = "waiting", now + delay
        vassal.waiting_why = f"died {vassal.failures} time(s) without serving a request"
        log(f"vassal {name} {vassal.waiting_why}: throttled, next attempt in {delay:g} s")

    def _escalate(self, now: float) -> None:
        if now < self.deadline:
            return
        for vassal in self.vassals.values():
            if vassal.pid is not None:
                log(f"vassal {os.path.basename(vassal.path)} still running past the deadline: SIGKILL")
                _kill_group(vassal.pid)
        self.deadline = now + 5  # once more later, not on every pass, if one is stuck in the kernel

    def _overstayed(self, now: float) -> None:
        """Vassals stopped for a removed file that are still running past their mercy."""
        for vassal in self.vassals.values():
            if vassal.state == "stopping" and vassal.pid is not None and 0 < vassal.stop_deadline <= now:
                log(f"vassal {os.path.basename(vassal.path)} still running past its mercy: SIGKILL")
                vassal.stop_deadline = now + 5
                _kill_group(vassal.pid)

    def _alive(self) -> bool:
        return any(v.pid is not None for v in self.vassals.values())

    # -- state -------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The emperor's state as a JSON-able document."""
        now_mono, now = time.monotonic(), time.time()
        vassals = []
        for vassal in self.vassals.values():
            entry: dict[str, Any] = {
                "id": os.path.basename(vassal.path),
                "path": vassal.path,
                "pid": vassal.pid,
                "state": vassal.state,
                "born": round(vassal.born),
                "last_reload": round(vassal.last_reload),
                "respawns": vassal.respawns,
                "loyal": vassal.loyal,
                "accepting": vassal.accepting,
                "failures": vassal.failures,
            }
            if vassal.state == "waiting":
                entry["throttled_until"] = round(now + max(0.0, vassal.next_attempt - now_mono), 1)
                entry["why"] = vassal.waiting_why
            vassals.append(entry)
        return {"pid": os.getpid(), "emperor": self.patterns, "time": round(now), "vassals": vassals}

    def stats_document(self) -> dict[str, Any]:
        """The emperor's stats in uWSGI's emperor layout, plus each vassal's state and stats address."""
        now_mono, now = time.monotonic(), time.time()
        base, cap = self.config.emperor_throttle, self.config.emperor_max_throttle
        vassals, blacklist = [], []
        for vassal in self.vassals.values():
            name = os.path.basename(vassal.path)
            waiting = vassal.state == "waiting"
            vassals.append(
                {
                    "id": name,
                    "pid": vassal.pid,
                    "born": int(vassal.born),
                    "last_mod": int(vassal.mtime),
                    "loyal": int(vassal.loyal),
                    "ready": int(vassal.pid is not None),
                    "accepting": int(vassal.accepting),
                    "respawns": vassal.respawns,
                    "uid": vassal.uid,
                    "gid": vassal.gid,
                    "monitor": os.path.dirname(vassal.path),
                    "state": vassal.state,
                    "last_reload": int(vassal.last_reload),
                    "throttled_until": now + max(0.0, vassal.next_attempt - now_mono) if waiting else None,
                    "why": vassal.waiting_why if waiting else "",
                    "stats": vassal.stats,
                }
            )
            if waiting:
                blacklist.append(
                    {
                        "id": name,
                        "throttle_level": int(1000 * throttle(vassal.failures, base, cap)),
                        "attempt": vassal.failures,
                        "first_attempt": int(vassal.first_failure),
                        "last_attempt": int(vassal.last_attempt),
                    }
                )
        return {
            "version": VERSION,
            "pid": os.getpid(),
            "uid": os.getuid(),
            "gid": os.getgid(),
            "cwd": os.getcwd(),
            "emperor": self.patterns,
            "emperor_tyrant": int(self.config.emperor_tyrant),
            "throttle_level": 0,
            "vassals": vassals,
            "blacklist": blacklist,
        }

    def _write_state(self) -> None:
        """Replace the state file atomically, so a reader never sees half of it."""
        self.dirty = False
        if self.state_path is None:
            return
        data = json.dumps(self.snapshot(), indent=1).encode()
        try:
            safefile.write_replace(self.state_path, data, 0o644)
        except OSError as exc:
            log(f"emperor: cannot write its state to {self.state_path}: {exc.strerror}")


def tyrant_state_path(directory: str) -> str:
    """Where a tyrant emperor watching ``directory`` keeps its state: a root-only directory."""
    key = hashlib.sha256(os.fsencode(os.path.realpath(directory))).hexdigest()[:16]
    return os.path.join(RUN_DIR, f"emperor-{key}.json")


def _default_state(directory: str, tyrant: bool) -> str | None:
    """The state file's default path; None (and a log line) when there is no safe place for it."""
    if not tyrant:
        return os.path.join(directory, STATE_NAME)
    try:
        safefile.private_directory(RUN_DIR)
    except OSError as exc:
        log(f"emperor: no state file (--emperor-status will not see it): {RUN_DIR}: {exc.strerror}")
        return None
    return tyrant_state_path(directory)


def _warn_if_replaceable(directory: str) -> None:
    """Warn when users may replace each other's files in a tyrant's vassal directory.

    Between a scan and the vassal reading its file, such a user could swap in a file of their
    own, which the vassal would then run as the first file's owner.
    """
    try:
        info = os.stat(directory)
    except OSError:
        return  # a glob, or a directory that comes later: nothing to say yet
    if info.st_uid != 0:
        why = f"owned by uid {info.st_uid}"
    elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
        why = "writable by others without the sticky bit"
    else:
        return
    log(
        f"emperor: warning: {directory} is {why}: a user may replace another's vassal file between"
        " the scan and its start; make it root's, and sticky (chmod 1777) if users drop files in it"
    )


def _probe_child(path: str, cwd: str, pipe: int) -> NoReturn:
    """In a forked child: write ``+ADDRESS`` or ``-WHY`` to ``pipe`` and exit, within the bounds."""
    try:
        # The fork gave this child default signal dispositions and no wakeup pipe (signals.py).
        _die_with_parent()
        signal.alarm(int(PROBE_SECONDS) + 1)  # in case the emperor is gone before it kills us
        with open("/proc/self/statm") as statm:
            size = int(statm.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (size + PROBE_MEMORY, size + PROBE_MEMORY))
        answer = "+" + (_stats_address(path, cwd) or "")
    except BaseException as exc:  # whatever the file does to the reader is only a failed read
        answer = f"-{type(exc).__name__}: {exc}"
    try:
        os.write(pipe, answer.encode(errors="replace")[:PROBE_OUTPUT])
    finally:
        os._exit(0)


def _reaped(pid: int, options: int) -> bool:
    """Wait for a child of ours; whether it is gone (reaped now or before)."""
    try:
        return os.waitpid(pid, options)[0] != 0
    except ChildProcessError:
        return True


def _stats_address(path: str, cwd: str) -> str | None:
    """The stats address a binserve vassal file names (relative ones from ``cwd``), if any."""
    try:
        config = load(["--ini", path], {})
    except ConfigError:
        return None  # not a binserve file (a uWSGI vassal's, say): no address to offer
    return absolute(config.stats, cwd) if config.stats else None


def _state_of(directory: str) -> str:
    """The state file of the emperor watching ``directory``: a tyrant's first, as no user can forge it."""
    tyrant = tyrant_state_path(directory)
    return tyrant if os.path.exists(tyrant) else os.path.join(directory, STATE_NAME)


def _pending_message(pipe: socket.socket) -> bool:
    """Whether a vassal's pipe holds a byte not read yet (or its end-of-file)."""
    try:
        pipe.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    except OSError:
        return True  # an error is what _on_message reads next, and closes on
    return True


def _tyrant_environment(uid: int) -> dict[str, str]:
    """A tyrant vassal's environment: the locale and PATH, and who it is; none of root's secrets."""
    env = {name: os.environ[name] for name in TYRANT_ENV if name in os.environ}
    env.setdefault("PATH", os.defpath)
    try:
        user = pwd.getpwuid(uid)
        env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
    except KeyError:
        env["HOME"] = "/"
    return env


def _kill_group(pid: int) -> None:
    """SIGKILL a vassal's whole process group: its master and every worker."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def print_status(target: str) -> int:
    """``binserve --emperor-status DIR|FILE``: print the vassals' state; 1 if there is none."""
    path = _state_of(target) if os.path.isdir(target) else target
    try:
        state = json.loads(safefile.read_bounded(path, MAX_STATE_BYTES))
    except (OSError, ValueError) as exc:
        print(f"binserve: no emperor state in {path}: {exc}", file=sys.stderr)
        return 1
    try:
        lines = _status_lines(state)
    except (LookupError, TypeError, ValueError, OverflowError) as exc:
        # Whoever may write the watched directory may have written this file, not an emperor.
        print(f"binserve: {path} is not an emperor state: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def _status_lines(state: Any) -> list[str]:
    """The status table of a state document; raises on a document no emperor wrote."""
    try:
        os.kill(state["pid"], 0)
        alive = ""
    except ProcessLookupError:
        alive = (
            f" (NOT RUNNING: state as of {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(state['time']))})"
        )
    except PermissionError:
        alive = ""
    lines = [
        f"emperor pid {state['pid']} watching {', '.join(state['emperor'])}{alive}",
        f"{'VASSAL':<24} {'PID':>7} {'STATE':<10} {'RESPAWNS':>8} {'LOYAL':<5} NOTE",
    ]
    for vassal in state["vassals"]:
        note = ""
        if vassal["state"] == "waiting":
            left = max(0.0, vassal["throttled_until"] - time.time())
            note = f"throttled for {left:.1f} s more: {vassal['why']}"
        pid = vassal["pid"] if vassal["pid"] is not None else "-"
        lines.append(
            f"{vassal['id']:<24} {pid:>7} {vassal['state']:<10} {vassal['respawns']:>8} "
            f"{'yes' if vassal['loyal'] else 'no':<5} {note}".rstrip()
        )
    return lines

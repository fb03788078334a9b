"""The emperor's loop: wait for something to happen, plan, act.

It waits for a signal, a vassal's message, a change in a watched directory, a stats reader's
answer or the next periodic scan; asks ``plan`` what the vassals need; and carries that out on
real processes. Vassals speak uWSGI's emperor byte protocol over a socketpair named by
``UWSGI_EMPEROR_FD`` (one byte per message), so real uWSGI vassals run under this emperor and
binserve vassals under uWSGI's.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import time
from typing import Any

from .. import safefile, signals
from ..config import Config
from ..log import log, reopen
from ..notify import Notifier
from ..signals import kill_quietly
from ..sockets import SocketError
from ..stats import StatsServer, bind_stats
from ..vassal_link import (
    CMD_GRACEFUL_STOP,
    CMD_RELOAD,
    EMPEROR_FD_ENV,
    MSG_ACCEPTING,
    MSG_LOYAL,
    MSG_SPAWNED,
    MSG_VOLUNTARY,
)
from .plan import (
    Action,
    Reload,
    Spawn,
    State,
    Stop,
    Vassal,
    VassalFile,
    after_death,
    overdue,
    plan,
    wake_timeout,
)
from .probe import PROBE_OUTPUT, PROBE_SECONDS, Probe, probe_child, reaped
from .spawn import command_line, die_with_parent, environment, identity, kill_group, warn_if_replaceable
from .status import default_state_path, state_document, stats_document
from .watch import DirectoryWatch, FileKey, scan

USAGE_ERROR = 2  # as the command's: the emperor's own configuration cannot work


class Emperor:
    """The reconcile loop and the processes it carries the plan out on."""

    def __init__(self, config: Config, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier(None)
        self.scanned = False  # the first scan has spawned the vassals there were
        self.notified_ready = False
        self.patterns = [os.path.abspath(p) for p in config.emperor]
        first_dir = next((p for p in self.patterns if os.path.isdir(p)), os.getcwd())
        self.state_path: str | None = config.emperor_state or default_state_path(
            first_dir, config.emperor_tyrant
        )
        self.vassals: dict[str, Vassal] = {}
        self.stopping = False
        self.deadline = 0.0
        self.selector = selectors.DefaultSelector()
        self.last_problems: set[str] = set()
        self.next_scan = 0.0
        self.dirty = True
        self.stats: StatsServer | None = None
        self.watch: DirectoryWatch | None = None
        self.wake: signals.WakePipe | None = None
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
        self.wake = wake = signals.WakePipe(signals.EMPEROR)
        signals.unblock(signals.EMPEROR)  # those that arrived during the start are logged now
        self.selector.register(wake, selectors.EVENT_READ, wake)
        self.watch = DirectoryWatch(self.patterns)
        if self.watch.fd is not None:
            self.selector.register(self.watch.fd, selectors.EVENT_READ, self.watch)
        if self.config.emperor_tyrant:
            for directory in self.patterns:
                warn_if_replaceable(directory)
        how = "inotify, and a scan" if self.watch.fd is not None else "a scan"
        log(f"emperor watching {', '.join(self.patterns)} ({how} every {self.config.emperor_freq:g} s)")
        while not (self.stopping and not self._alive()):
            self.step()
        for probe in list(self.probes.values()):
            self._end_probe(probe, "")
        for pid in self.unreaped:
            reaped(pid, 0)
        self._write_state()
        if self.stats is not None:
            self.stats.close()
        log("emperor stopped: every vassal has exited")
        signals.block(signals.EMPEROR)  # as the master does: a late signal must not change the exit
        return 0

    def step(self) -> None:
        """Wait for a signal, a vassal message or the next scan, then plan and act."""
        self._wait()
        self._reap()
        now = time.monotonic()
        for probe in [p for p in self.probes.values() if p.deadline <= now]:
            self._end_probe(probe, f"took more than {PROBE_SECONDS:g} s")
        self._kill_overdue(now)
        if not self.stopping and now >= self.next_scan:
            self.next_scan = now + self.config.emperor_freq
            desired = self._scan()
            self._act(plan(desired, self.vassals, now), desired)
            self.scanned = True
        self._notify()
        if self.dirty:
            self._write_state()

    def _notify(self) -> None:
        """systemd: READY=1 once the vassals of the first scan have started (or failed to), then
        the vassals' states in STATUS= now and then."""
        if not self.notifier.active:
            return
        counts: dict[str, int] = {}
        for vassal in self.vassals.values():
            counts[vassal.state.value] = counts.get(vassal.state.value, 0) + 1
        status = f"{len(self.vassals)} vassals" + "".join(
            f", {number} {state}" for state, number in sorted(counts.items())
        )
        if self.notified_ready or not self.scanned or self.stopping:
            self.notifier.status(status)
        elif State.STARTING not in counts:
            self.notified_ready = True
            self.notifier.ready(status)

    def _wait(self) -> None:
        """Handle the events until the loop has something to do on its own."""
        deadlines = [p.deadline for p in self.probes.values()]
        timeout = wake_timeout(time.monotonic(), self.stopping, self.deadline, self.next_scan, deadlines)
        for key, _ in self.selector.select(0.0 if signals.waiting() else timeout):
            if isinstance(key.data, signals.WakePipe):
                for signum, times in key.data.take().items():
                    self._on_signal(signum, times)
            elif key.data is self.stats:
                self.stats.answer(self._stats_document)
            elif key.data is self.watch:
                if self.watch.changed():
                    self.next_scan = 0.0  # something moved in a watched directory: look now
            elif isinstance(key.data, Probe):
                self._on_probe(key.data)
            else:
                self._on_message(key.data)
        # Caught after the pipe was last read: through the pipe's own count, which also counts
        # their bytes when they come (a record taken apart from it would count them twice).
        if self.wake is not None:
            for signum, times in self.wake.take().items():
                self._on_signal(signum, times)

    # -- signals and messages --------------------------------------------------------------
    def _on_signal(self, signum: int, times: int = 1) -> None:
        if not signals.has_effect(signals.EMPEROR, signum):
            log(f"emperor: {signals.received(signals.EMPEROR, signum, times)}")
        elif signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT) and not self.stopping:
            mercy = self.config.worker_reload_mercy
            log(f"emperor: {signal.Signals(signum).name}, stopping every vassal gracefully ({mercy:g} s)")
            self.stopping = True
            self.notifier.stopping(f"stopping every vassal ({signal.Signals(signum).name})")
            self.deadline = time.monotonic() + mercy
            for vassal in self.vassals.values():
                if vassal.pid is not None:
                    self._command(vassal, CMD_GRACEFUL_STOP, signal.SIGTERM)
                    vassal.state = State.STOPPING
            self.dirty = True
        elif signum == signal.SIGUSR1:
            self._reopen_logs()
        elif signum == signal.SIGHUP and not self.stopping:
            log("emperor: SIGHUP, reloading every vassal")
            for vassal in self.vassals.values():
                if vassal.state in (State.STARTING, State.RUNNING):
                    self._reload(vassal)

    def _reopen_logs(self) -> None:
        """SIGUSR1: reopen the emperor's logs, then every vassal's (one signal rotates a whole host)."""
        for problem in reopen():
            log(f"emperor: SIGUSR1: cannot reopen {problem}; logging on to the file as it was")
        running = [vassal.pid for vassal in self.vassals.values() if vassal.pid is not None]
        for pid in running:
            kill_quietly(pid, signal.SIGUSR1)
        states = ", ".join(
            f"{os.path.basename(v.path)} {v.state.value}" + (f" (pid {v.pid})" if v.pid else "")
            for v in sorted(self.vassals.values(), key=lambda v: v.path)
        )
        log(
            f"emperor: SIGUSR1: log files reopened, SIGUSR1 passed to {len(running)} vassals; "
            f"{len(self.vassals)} vassals: {states or 'none'}"
        )

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
                if vassal.state in (State.STARTING, State.RELOADING):
                    vassal.state = State.RUNNING
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
    def _scan(self) -> dict[str, VassalFile]:
        """The vassal files; their problems are logged once, not at every scan."""
        desired, problems = scan(self.patterns, self.config.emperor_tyrant, self.digests)
        for problem in set(problems) - self.last_problems:
            log(problem)
        self.last_problems = set(problems)
        return desired

    def _act(self, actions: list[Action], desired: dict[str, VassalFile]) -> None:
        """Carry the plan out; a vassal stopped for a file now gone is forgotten once it has exited."""
        for action in actions:
            if isinstance(action, Spawn):
                self._spawn(desired[action.path])
            elif isinstance(action, Reload):
                vassal = self.vassals[action.path]
                vassal.digest, vassal.mtime = desired[action.path].digest, desired[action.path].mtime
                log(f"vassal {os.path.basename(action.path)} changed: graceful reload")
                self._reload(vassal)
            elif isinstance(action, Stop):
                vassal = self.vassals[action.path]
                if vassal.state == State.WAITING:
                    del self.vassals[action.path]
                    self.dirty = True
                else:
                    log(f"vassal {os.path.basename(action.path)} removed or reowned: stopping it")
                    self._stop(vassal)
        for path in [p for p, v in self.vassals.items() if v.state == State.STOPPED and p not in desired]:
            del self.vassals[path]
            self.dirty = True

    def _spawn(self, wanted: VassalFile) -> None:
        vassal = self.vassals.get(wanted.path) or Vassal(wanted.path)
        self.vassals[wanted.path] = vassal
        vassal.last_attempt = time.time()
        # Recorded before the attempt: a vassal that cannot even start must not look "changed".
        vassal.digest, vassal.mtime = wanted.digest, wanted.mtime
        vassal.uid, vassal.gid = wanted.uid, wanted.gid
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = environment(wanted, self.config.emperor_tyrant)
        env[EMPEROR_FD_ENV] = str(theirs.fileno())
        # The file's own directory, not the link's: a link planted in the vassal directory must
        # not make a relative wsgi-file load the planter's code.
        cwd = os.path.dirname(wanted.real or wanted.path)
        try:
            proc = subprocess.Popen(
                command_line(self.config, wanted.path),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                # Its own process group: a kill past the deadline takes the workers with the master.
                process_group=0,
                preexec_fn=die_with_parent,
                **identity(wanted, self.config.emperor_tyrant),
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
        vassal.state, vassal.born, vassal.accepting = State.STARTING, time.time(), False
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
            probe_child(vassal.path, cwd, write_end)
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
        vassal.state, vassal.accepting = State.RELOADING, False
        vassal.last_reload = time.time()
        self._command(vassal, CMD_RELOAD, signal.SIGHUP)
        self.dirty = True

    def _stop(self, vassal: Vassal) -> None:
        if vassal.state == State.STOPPING:
            return  # asked again (a vassal repeating MSG_VOLUNTARY): the first deadline stands
        vassal.state = State.STOPPING
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
        self.unreaped = {pid for pid in self.unreaped if not reaped(pid, os.WNOHANG)}
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
            if vassal.state == State.STOPPING or self.stopping:
                log(f"vassal {name} stopped ({how})")
                vassal.state = State.STOPPED
            else:
                log(f"vassal {name} died ({how})")
                self._died(vassal, now)
            self.dirty = True

    def _died(self, vassal: Vassal, now: float) -> None:
        base, cap = self.config.emperor_throttle, self.config.emperor_max_throttle
        respawn = after_death(vassal.loyal, vassal.failures, base, cap)
        if respawn.failures == 1:
            vassal.first_failure = time.time()
        vassal.failures = respawn.failures
        vassal.state, vassal.next_attempt, vassal.waiting_why = (
            State.WAITING,
            now + respawn.delay,
            respawn.why,
        )
        if respawn.failures:
            name = os.path.basename(vassal.path)
            log(f"vassal {name} {vassal.waiting_why}: throttled, next attempt in {respawn.delay:g} s")

    def _kill_overdue(self, now: float) -> None:
        """SIGKILL the vassals past their mercy.

        Once more 5 s later, not on every pass, if one is stuck in the kernel.
        """
        for path in overdue(self.vassals, now, self.stopping, self.deadline):
            vassal = self.vassals[path]
            assert vassal.pid is not None
            past = "the deadline" if self.stopping else "its mercy"
            log(f"vassal {os.path.basename(path)} still running past {past}: SIGKILL")
            if not self.stopping:
                vassal.stop_deadline = now + 5
            kill_group(vassal.pid)
        if self.stopping and now >= self.deadline:
            self.deadline = now + 5

    def _alive(self) -> bool:
        return any(v.pid is not None for v in self.vassals.values())

    # -- state -------------------------------------------------------------------------------
    def _stats_document(self) -> dict[str, Any]:
        base, cap = self.config.emperor_throttle, self.config.emperor_max_throttle
        return stats_document(self.vassals.values(), self.patterns, self.config.emperor_tyrant, base, cap)

    def _write_state(self) -> None:
        """Replace the state file atomically, so a reader never sees half of it."""
        self.dirty = False
        if self.state_path is None:
            return
        data = json.dumps(state_document(self.vassals.values(), self.patterns), indent=1).encode()
        try:
            safefile.write_replace(self.state_path, data, 0o644)
        except OSError as exc:
            log(f"emperor: cannot write its state to {self.state_path}: {exc.strerror}")


def _pending_message(pipe: socket.socket) -> bool:
    """Whether a vassal's pipe holds a byte not read yet (or its end-of-file)."""
    try:
        pipe.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    except OSError:
        return True  # an error is what _on_message reads next, and closes on
    return True

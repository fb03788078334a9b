"""Every binserve option, declared once.

The CLI flags, the ini reader, validation, ``binserve --help`` and the options table in
the README all come from ``OPTIONS``. Names are uWSGI's wherever binserve offers the
feature, so an existing uwsgi.ini keeps working; uWSGI options binserve does not offer are
listed in ``UWSGI_ONLY`` so the error can say so by name instead of "unknown".

Longer than our other modules because it is that table: one entry per option, with its type,
default, policy and help; the code around it is short.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .log import DEFAULT_DATE, parse_logger, to_log_date
from .requestlog import to_log_format, to_req_encoder

MASTER, WORKER, EMPEROR = "master", "worker", "emperor"

TRUE_WORDS = frozenset({"1", "true", "yes", "on", "y", "t", "enable", "enabled"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", "n", "f", "disable", "disabled"})


def to_bool(text: str) -> bool:
    """A boolean as uWSGI configs write it; an empty value (a bare key) means true."""
    word = text.strip().lower()
    if word == "" or word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"expected a boolean (true/false, yes/no, 1/0), got {text!r}")


# Plain ASCII numbers only: float() and int() would also take "nan", "inf", "1_0" and other scripts' digits.
WHOLE = re.compile(r"[+-]?[0-9]+", re.ASCII)
_DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)
_SIZES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
DAY = 86400
YEAR = 365 * DAY


class Number:
    """The one converter of numeric options: a finite number within ``low..high``, else one clear error.

    ``whole`` numbers are integers; ``sizes`` take uWSGI's k/m/g suffixes (multiples of 1024);
    ``unit`` names what is counted in the message (``a whole number of bytes in 0..1024g``).
    """

    def __init__(
        self, low: float, high: float, *, whole: bool = True, unit: str = "", sizes: bool = False
    ) -> None:
        self.low, self.high, self.whole, self.sizes = low, high, whole, sizes
        kind = "a whole number" if whole else "a number"
        self.expected = f"{kind} of {unit}" if unit else kind
        self.__doc__ = f"{self.expected} in {self.span}"

    @property
    def span(self) -> str:
        """The accepted range as written in messages and in the options table."""
        return f"{self._show(self.low)}..{self._show(self.high)}"

    def _show(self, value: float) -> str:
        if self.sizes and value:
            for suffix, scale in reversed(_SIZES.items()):
                if value % scale == 0:
                    return f"{int(value) // scale}{suffix}"
        return str(int(value)) if float(value).is_integer() else str(value)

    def __call__(self, text: str) -> Any:
        value = self._parse(text.strip().lower())
        if value is None or not self.low <= value <= self.high:
            raise ValueError(f"expected {self.expected} in {self.span}, got {text!r}")
        return value

    def _parse(self, word: str) -> float | None:
        scale = _SIZES.get(word[-1:], 1) if self.sizes else 1
        if scale != 1:
            word = word[:-1]
        if self.whole:
            # Twenty digits are beyond any range here; longer ones would only cost time to convert.
            return int(word) * scale if WHOLE.fullmatch(word) and len(word) <= 20 else None
        if not _DECIMAL.fullmatch(word):
            return None
        value = float(word)
        return value if math.isfinite(value) else None


def to_stats_format(text: str) -> str:
    """msgpack or json."""
    word = text.strip().lower()
    if word not in ("msgpack", "json"):
        raise ValueError(f"expected msgpack or json, got {text!r}")
    return word


def to_cheaper_algo(text: str) -> str:
    """spare or busyness (uWSGI's cheaper algorithms that binserve offers)."""
    word = text.strip().lower()
    if word not in ("spare", "busyness"):
        raise ValueError(f"expected spare or busyness, got {text!r}")
    return word


def to_mode(text: str) -> int:
    """A unix permission mode in octal (``660``); a bare key means 666, as in uWSGI."""
    word = text.strip() or "666"
    # Octal digits only: int(word, 8) would also take "0o660", "6_60" and other scripts' digits.
    if not re.fullmatch(r"[0-7]{1,4}", word, re.ASCII):
        raise ValueError(f"expected an octal mode such as 660 (0..7777), got {text!r}")
    return int(word, 8)


def to_env(text: str) -> str:
    """``NAME=value``, as uWSGI's env option takes it."""
    if "=" not in text or not text.split("=", 1)[0].strip():
        raise ValueError(f"expected NAME=value, got {text!r}")
    return text


def to_network(text: str) -> str:
    """An IP address or a network in CIDR form (``10.0.0.5``, ``10.0.0.0/8``, ``fd00::/8``)."""
    word = text.strip()
    try:
        ipaddress.ip_network(word, strict=False)
    except ValueError:
        raise ValueError(
            f"expected an IP address or a network in CIDR form (such as 10.0.0.5 or 10.0.0.0/8), got {text!r}"
        ) from None
    return word


def to_str(text: str) -> str:
    """Any text, stripped."""
    return text.strip()


@dataclass(frozen=True)
class Option:
    """One option: its uWSGI-style name, how to read it, its default, who uses it, its help."""

    name: str
    convert: Callable[[str], Any]
    default: Any
    scope: str
    help: str
    repeatable: bool = False
    flag: bool = False
    metavar: str = "VALUE"

    @property
    def description(self) -> str:
        """The help text, with the accepted range of a number."""
        if isinstance(self.convert, Number):
            return f"{self.help} ({self.convert.span})"
        return self.help

    @property
    def attr(self) -> str:
        """The attribute name on a Config: dashes become underscores."""
        return self.name.replace("-", "_")


_OPTIONS = [
    Option(
        "ini",
        to_str,
        [],
        MASTER,
        "load options from an ini file (FILE or FILE:section)",
        repeatable=True,
        metavar="FILE",
    ),
    Option(
        "include",
        to_str,
        [],
        MASTER,
        "read another ini file (FILE or FILE:section) at this point; in a file, relative to that file",
        repeatable=True,
        metavar="FILE",
    ),
    Option(
        "inherit",
        to_str,
        [],
        MASTER,
        "use an ini file as a template: its values are defaults that the config's own values override",
        repeatable=True,
        metavar="FILE",
    ),
    Option(
        "set-placeholder",
        to_env,
        [],
        MASTER,
        "define NAME=value for %(NAME) references in ini files (repeatable)",
        repeatable=True,
        metavar="NAME=VALUE",
    ),
    Option(
        "socket",
        to_str,
        [],
        MASTER,
        "uwsgi socket to listen on: a unix path or HOST:PORT (repeatable)",
        repeatable=True,
        metavar="ADDR",
    ),
    Option(
        "chmod-socket",
        to_mode,
        None,
        MASTER,
        "chmod unix sockets to this octal mode (bare: 666)",
        metavar="MODE",
    ),
    Option("listen", Number(1, 65535), 100, MASTER, "listen backlog of each socket", metavar="N"),
    Option(
        "buffer-size",
        Number(1, 65535, unit="bytes", sizes=True),
        65535,
        WORKER,
        "largest vars block accepted, in bytes (uWSGI's default is 4096; nginx sends up to 65535)",
        metavar="BYTES",
    ),
    Option(
        "socket-timeout",
        Number(0.001, DAY, whole=False, unit="seconds"),
        4.0,
        WORKER,
        "seconds a read of the request or a write of the response may wait",
        metavar="SECONDS",
    ),
    Option(
        "limit-post",
        Number(0, 1 << 40, unit="bytes", sizes=True),
        0,
        WORKER,
        "refuse bodies larger than this many bytes with 413 (0: no limit)",
        metavar="BYTES",
    ),
    Option("processes", Number(1, 1024), 1, MASTER, "number of worker processes", metavar="N"),
    Option(
        "cheaper",
        Number(0, 1023),
        0,
        MASTER,
        "adaptive workers: the fewest workers to keep running, below processes, which is the most "
        "(0: off, every worker runs)",
        metavar="N",
    ),
    Option(
        "cheaper-initial",
        Number(0, 1024),
        0,
        MASTER,
        "workers started at first with cheaper, within cheaper..processes (0: cheaper's value)",
        metavar="N",
    ),
    Option(
        "cheaper-step",
        Number(1, 1024),
        1,
        MASTER,
        "workers added at once when the cheaper algorithm wants more",
        metavar="N",
    ),
    Option(
        "cheaper-overload",
        Number(1, DAY, unit="seconds"),
        3,
        MASTER,
        "spare: seconds every worker must be busy before more are added; busyness: its window",
        metavar="SECONDS",
    ),
    Option(
        "cheaper-idle",
        Number(1, DAY, unit="seconds"),
        10,
        MASTER,
        "spare: seconds more than one worker must be idle before one is retired",
        metavar="SECONDS",
    ),
    Option(
        "cheaper-algo",
        to_cheaper_algo,
        "spare",
        MASTER,
        "how the count adapts: spare (by busy and idle workers) or busyness (by the share of time "
        "spent in requests)",
        metavar="spare|busyness",
    ),
    Option(
        "cheaper-busyness-max",
        Number(1, 100, unit="percent"),
        50,
        MASTER,
        "busyness: above this share of time in requests over a window, cheaper-step workers more",
        metavar="PERCENT",
    ),
    Option(
        "cheaper-busyness-min",
        Number(0, 99, unit="percent"),
        25,
        MASTER,
        "busyness: below this share, a window counts as idle; below cheaper-busyness-max",
        metavar="PERCENT",
    ),
    Option(
        "cheaper-busyness-multiplier",
        Number(1, 10**6),
        10,
        MASTER,
        "busyness: idle windows in a row before a worker is retired",
        metavar="N",
    ),
    Option(
        "cheaper-busyness-penalty",
        Number(0, 10**6),
        1,
        MASTER,
        "busyness: added to the multiplier when a retired worker is needed again within it",
        metavar="N",
    ),
    Option(
        "master",
        to_bool,
        True,
        MASTER,
        "no effect: binserve always runs a master that supervises the workers",
        flag=True,
    ),
    Option("pidfile", to_str, None, MASTER, "write the master's pid to this file", metavar="FILE"),
    Option(
        "vacuum",
        to_bool,
        True,
        MASTER,
        "remove unix sockets and the pidfile on exit (on by default; uWSGI's default is off)",
        flag=True,
    ),
    Option("chdir", to_str, None, MASTER, "chdir to this directory before loading the app", metavar="DIR"),
    Option(
        "pythonpath",
        to_str,
        [],
        MASTER,
        "add a directory to sys.path (repeatable)",
        repeatable=True,
        metavar="DIR",
    ),
    Option(
        "env",
        to_env,
        [],
        MASTER,
        "set an environment variable NAME=value (repeatable)",
        repeatable=True,
        metavar="NAME=VALUE",
    ),
    Option(
        "module",
        to_str,
        None,
        MASTER,
        "load the WSGI app from a module: pkg.mod or pkg.mod:callable",
        metavar="MODULE",
    ),
    Option("wsgi-file", to_str, None, MASTER, "load the WSGI app from a Python file", metavar="FILE"),
    Option(
        "callable",
        to_str,
        "application",
        MASTER,
        "name of the WSGI callable in the module or file",
        metavar="NAME",
    ),
    Option("disable-logging", to_bool, False, WORKER, "do not log each request", flag=True),
    Option(
        "log-format",
        to_log_format,
        None,
        WORKER,
        "request line format with uWSGI's %(name) variables (see Request log); default: uWSGI's line",
        metavar="FORMAT",
    ),
    Option(
        "log-req-encoder",
        to_req_encoder,
        None,
        WORKER,
        "json: each request line is one JSON object (keys: the log-format's variables, or a default set)",
        metavar="ENCODER",
    ),
    Option("log-4xx", to_bool, False, WORKER, "log 4xx responses, even with disable-logging", flag=True),
    Option("log-5xx", to_bool, False, WORKER, "log 5xx responses, even with disable-logging", flag=True),
    Option(
        "log-slow",
        Number(0, 100 * DAY * 1000, unit="milliseconds"),
        0,
        WORKER,
        "log requests that took at least this long, even with disable-logging (0: off)",
        metavar="MSECS",
    ),
    Option(
        "log-big",
        Number(0, 1 << 40, unit="bytes", sizes=True),
        0,
        WORKER,
        "log requests whose response body is at least this big, even with disable-logging (0: off)",
        metavar="BYTES",
    ),
    Option("log-zero", to_bool, False, WORKER, "log empty responses, even with disable-logging", flag=True),
    Option(
        "log-x-forwarded-for",
        to_bool,
        False,
        WORKER,
        "log the X-Forwarded-For header as the client's address (when the request has one)",
        flag=True,
    ),
    Option(
        "log-micros",
        to_bool,
        False,
        WORKER,
        "the default request line gives the response time in microseconds",
        flag=True,
    ),
    Option(
        "logto",
        to_str,
        None,
        MASTER,
        "append all logging (and the app's stdout/stderr) to this file (as logger = file:FILE)",
        metavar="FILE",
    ),
    Option(
        "logger",
        parse_logger,
        None,
        MASTER,
        "where binserve's lines (and the request lines, without req-logger) go: file:PATH (with the "
        "app's stdout/stderr, as logto), stdio, or syslog[:ID[,FACILITY]] (datagrams to /dev/log)",
        metavar="SPEC",
    ),
    Option(
        "req-logger",
        parse_logger,
        None,
        MASTER,
        "where the request lines go, and only there: file:PATH, stdio or syslog[:ID[,FACILITY]]",
        metavar="SPEC",
    ),
    Option(
        "log-date",
        to_log_date,
        DEFAULT_DATE,
        MASTER,
        "strftime format of the date starting binserve's own lines (false: no date; request lines and "
        "the app's output are not changed)",
        metavar="FORMAT",
    ),
    Option(
        "touch-logreopen",
        to_str,
        [],
        MASTER,
        "reopen the log files when this file's mtime changes (repeatable), as SIGUSR1 does",
        repeatable=True,
        metavar="FILE",
    ),
    Option(
        "log-maxsize",
        Number(0, 1 << 50, unit="bytes", sizes=True),
        0,
        MASTER,
        "rename a log file larger than this to FILE.<epoch seconds> (or log-backupname) and reopen it "
        "(0: never); checked every second",
        metavar="BYTES",
    ),
    Option(
        "log-backupname",
        to_str,
        None,
        MASTER,
        "the name log-maxsize renames the log file to (replaced at each rotation)",
        metavar="FILE",
    ),
    Option(
        "log-reopen",
        to_bool,
        True,
        MASTER,
        "no effect: a reload always reopens the log files (the new image opens them afresh)",
        flag=True,
    ),
    Option(
        "worker-reload-mercy",
        Number(0, DAY, whole=False, unit="seconds"),
        60.0,
        MASTER,
        "seconds a worker may take to finish its request on reload or stop before it is killed",
        metavar="SECONDS",
    ),
    Option(
        "emperor",
        to_str,
        [],
        EMPEROR,
        "run as an emperor: one vassal (its own master and workers) per *.ini file in DIR or matching GLOB",
        repeatable=True,
        metavar="DIR|GLOB",
    ),
    Option(
        "emperor-wrapper",
        to_str,
        None,
        EMPEROR,
        "program run for each vassal file as PROGRAM --ini FILE (default: this binserve; uwsgi works too)",
        metavar="PROGRAM",
    ),
    Option(
        "vassals-inherit",
        to_str,
        [],
        EMPEROR,
        "a template ini applied to every vassal (passed as --inherit FILE)",
        repeatable=True,
        metavar="FILE",
    ),
    Option(
        "emperor-tyrant",
        to_bool,
        False,
        EMPEROR,
        "run each vassal as the owner of its file; refuse files owned by root (needs root)",
        flag=True,
    ),
    Option(
        "emperor-freq",
        Number(0.01, 3600, whole=False, unit="seconds"),
        0.5,
        EMPEROR,
        "seconds between scans of the vassal files; inotify wakes the emperor at once too (uWSGI: 3 s)",
        metavar="SECONDS",
    ),
    Option(
        "emperor-throttle",
        Number(1, 3600 * 1000, unit="milliseconds"),
        1000,
        EMPEROR,
        "milliseconds to wait before respawning a vassal that died without serving; doubles each time",
        metavar="MS",
    ),
    Option(
        "emperor-max-throttle",
        Number(1, DAY * 1000, unit="milliseconds"),
        60000,
        EMPEROR,
        "the longest wait, in milliseconds, between respawns of a failing vassal",
        metavar="MS",
    ),
    Option(
        "emperor-state",
        to_str,
        None,
        EMPEROR,
        "file where the emperor keeps its vassals' state (default: .binserve-emperor.json in the first DIR; "
        "with emperor-tyrant, /run/binserve/emperor-HASH.json, out of the users' reach)",
        metavar="FILE",
    ),
    Option(
        "emperor-status",
        to_str,
        None,
        EMPEROR,
        "print the state of the emperor watching DIR (or kept in FILE) and exit",
        metavar="DIR|FILE",
    ),
    Option(
        "stats",
        to_str,
        None,
        MASTER,
        "serve the stats document on this unix path or HOST:PORT (one document per connection)",
        metavar="ADDR",
    ),
    Option(
        "stats-format",
        to_stats_format,
        "msgpack",
        MASTER,
        "encoding of the stats document: msgpack, or json in uWSGI's layout (for uwsgitop)",
        metavar="msgpack|json",
    ),
    Option("stats-http", to_bool, False, MASTER, "wrap the stats document in an HTTP response", flag=True),
    Option(
        "emperor-stats",
        to_str,
        None,
        EMPEROR,
        "serve the emperor's stats document (its vassals) on this unix path or HOST:PORT",
        metavar="ADDR",
    ),
    Option(
        "harakiri",
        Number(0, DAY, unit="seconds"),
        0,
        MASTER,
        "seconds a request may run before the master kills its worker (0: never); checked every second",
        metavar="SECONDS",
    ),
    Option(
        "harakiri-graceful-timeout",
        Number(0, DAY, whole=False, unit="seconds"),
        0.0,
        MASTER,
        "on harakiri, send SIGTERM first and SIGKILL only this many seconds later (0: SIGKILL at once)",
        metavar="SECONDS",
    ),
    Option(
        "harakiri-verbose",
        to_bool,
        False,
        MASTER,
        "on harakiri, log every thread's stack, not only the stuck request's, and the stuck thread's "
        "kernel wait channel and system call from /proc (as uWSGI's)",
        flag=True,
    ),
    Option(
        "max-requests",
        Number(0, 10**9),
        0,
        WORKER,
        "recycle a worker after this many requests (0: never); it finishes its request first",
        metavar="N",
    ),
    Option(
        "max-requests-delta",
        Number(0, 10**9),
        0,
        WORKER,
        "add a random 0..N to each worker's max-requests, so workers do not all recycle at once",
        metavar="N",
    ),
    Option(
        "lazy-apps",
        to_bool,
        False,
        MASTER,
        "load the app in each worker after fork, not once in the master (for apps that open "
        "connections or threads at import)",
        flag=True,
    ),
    Option(
        "import",
        to_str,
        [],
        WORKER,
        "import this Python module in each worker after fork, after the app (repeatable); a module "
        "that fails to import fails the worker's boot, as the app would",
        repeatable=True,
        metavar="MODULE",
    ),
    Option(
        "touch-reload",
        to_str,
        [],
        MASTER,
        "gracefully reload when this file's mtime changes (repeatable); checked every second",
        repeatable=True,
        metavar="FILE",
    ),
    Option(
        "touch-chain-reload",
        to_str,
        [],
        MASTER,
        "when this file's mtime changes, replace the workers one at a time, the next only once the new "
        "one accepts (repeatable; with lazy-apps the new workers load the new code)",
        repeatable=True,
        metavar="FILE",
    ),
    Option(
        "min-worker-lifetime",
        Number(0, YEAR, whole=False, unit="seconds"),
        10.0,
        WORKER,
        "seconds a worker runs before max-requests or reload-on-rss may recycle it (as uWSGI: 10)",
        metavar="SECONDS",
    ),
    Option(
        "max-worker-lifetime",
        Number(0, YEAR, whole=False, unit="seconds"),
        0.0,
        MASTER,
        "recycle a worker after this many seconds (0: never); it finishes its request first",
        metavar="SECONDS",
    ),
    Option(
        "reload-on-rss",
        Number(0, 1 << 20, unit="MB"),
        0,
        WORKER,
        "recycle a worker whose resident memory exceeds this many MB, checked after each request (0: never)",
        metavar="MB",
    ),
    Option(
        "evil-reload-on-rss",
        Number(0, 1 << 20, unit="MB"),
        0,
        MASTER,
        "the master SIGKILLs a worker whose resident memory exceeds this many MB, even mid-request; "
        "checked every second (0: never)",
        metavar="MB",
    ),
    Option(
        "threads",
        Number(1, 1024),
        1,
        WORKER,
        "threads serving requests in each worker (wsgi.multithread is true when above 1)",
        metavar="N",
    ),
    Option(
        "post-buffering",
        Number(0, 1 << 30, unit="bytes", sizes=True),
        0,
        WORKER,
        "read the whole body before calling the app: in memory when smaller than this many bytes, "
        "else in a temporary file (0: the app reads it from the socket)",
        metavar="BYTES",
    ),
    Option(
        "uid",
        to_str,
        None,
        MASTER,
        "after binding the sockets, run as this user (name or number); needs root",
        metavar="USER",
    ),
    Option(
        "gid",
        to_str,
        None,
        MASTER,
        "after binding the sockets, run as this group (name or number); needs root",
        metavar="GROUP",
    ),
    Option(
        "chown-socket",
        to_str,
        None,
        MASTER,
        "give unix sockets to this owner: USER, USER:GROUP or :GROUP (names or numbers)",
        metavar="USER[:GROUP]",
    ),
    Option(
        "uwsgi-allow-from",
        to_network,
        [],
        MASTER,
        "the only addresses or networks (CIDR) that TCP uwsgi sockets and TCP stats servers answer "
        "(repeatable; loopback too only if listed; default: loopback and private networks, i.e. "
        "127.0.0.0/8, ::1, 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, "
        "169.254.0.0/16, fc00::/7, fe80::/10)",
        repeatable=True,
        metavar="ADDR",
    ),
    # Accepted for uWSGI compatibility, with no effect: binserve already behaves as they ask.
    Option(
        "enable-threads",
        to_bool,
        True,
        WORKER,
        "no effect: Python threads are always enabled",
        flag=True,
    ),
    Option(
        "die-on-term",
        to_bool,
        True,
        MASTER,
        "no effect: SIGTERM always stops binserve gracefully",
        flag=True,
    ),
    Option(
        "need-app",
        to_bool,
        True,
        MASTER,
        "no effect: binserve always exits if the app fails to load",
        flag=True,
    ),
    Option(
        "strict",
        to_bool,
        True,
        MASTER,
        "no effect: unknown options are always errors",
        flag=True,
    ),
    Option(
        "single-interpreter",
        to_bool,
        True,
        MASTER,
        "no effect: binserve runs one interpreter",
        flag=True,
    ),
    Option(
        "plugins",
        to_str,
        [],
        MASTER,
        "no effect: the Python plugin is built in",
        repeatable=True,
        metavar="NAMES",
    ),
]

OPTIONS: dict[str, Option] = {opt.name: opt for opt in _OPTIONS}

# option -> the option it is another name for
ALIASES = {
    "uwsgi-socket": "socket",
    "workers": "processes",
    "wsgi": "module",
    "file": "wsgi-file",
    "reload-mercy": "worker-reload-mercy",
    "plugin": "plugins",
    "stats-server": "stats",
    "set-ph": "set-placeholder",
    "logdate": "log-date",
    "logformat": "log-format",
}

# uWSGI options that binserve does not implement (yet): named in the error instead of "unknown".
UWSGI_ONLY = frozenset(
    """
    http http-socket https https-socket fastcgi-socket scgi-socket shared-socket http-to
    reload-on-as lazy
    idle touch-workers-reload
    offload-threads static-map static-map2
    route route-if spooler mule mules cron attach-daemon attach-daemon2 smart-attach-daemon
    virtualenv home venv pyhome py-autoreload python-autoreload thunder-lock daemonize daemonize2
    memory-report add-header
    del-header manage-script-name mount socket-protocol protocol procname procname-prefix
    procname-prefix-spaced auto-procname master-fifo hook-pre-app exec-pre-app shared-import
    cache cache2 async ugreen gevent enable-metrics carbon subscribe-to fastrouter
    """.split()
)


def resolve(name: str) -> Option:
    """The option a name (or an alias) stands for; KeyError if binserve has none."""
    return OPTIONS[ALIASES.get(name, name)]


def options_table() -> str:
    """The options as a markdown table, for the README and ``binserve --help-options``."""
    rows = ["| option | aliases | default | scope | meaning |", "| --- | --- | --- | --- | --- |"]
    for opt in _OPTIONS:
        default = "" if opt.default in (None, []) else str(opt.default)
        aliases = ", ".join(f"`{a}`" for a, target in ALIASES.items() if target == opt.name)
        rows.append(f"| `{opt.name}` | {aliases} | {default} | {opt.scope} | {opt.description} |")
    return "\n".join(rows)

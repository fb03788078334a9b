"""``binserve-top ADDR``: a live, top-like view of a binserve (or uWSGI) stats server.

ADDR is a unix socket path (``@name`` for an abstract one), ``HOST:PORT``, or ``http://HOST:PORT/``
for a stats server wrapped in HTTP (``stats-http``). Each refresh opens a connection, reads the one
document the server writes and closes it. The document may be msgpack (binserve's default), JSON
(``stats-format = json``, or a real uWSGI's ``--stats``) or either wrapped in an HTTP response.

An instance document shows a header (version, uptime, requests, req/s, the listen queue of every
socket, tx) and a row per worker; an emperor document (one with ``vassals``) shows a row per vassal,
and Enter opens the selected vassal's own stats server (Esc comes back).

Keys: ``r``/``m``/``c``/``a`` sort workers by requests / memory (rss) / cpu / average response time,
descending (the same key again reverses), ``i`` back to worker id order; up/down or ``j``/``k``
select (or scroll), Enter drills into a vassal, Esc (or left) goes back, ``q`` quits.

``--once`` prints one snapshot as plain text and exits: a header line or two, the column names, then
one whitespace-separated row per worker (or vassal) beginning with its id. Exit status 1, with one
error line on stderr, when the address cannot be reached or the document cannot be parsed.

Longer than our other modules because of ``TopApp``: the screen's levels, keys, sorting and
drawing share one state, and split apart they would pass it around whole.
"""

from __future__ import annotations

import argparse
import curses
import locale
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from binserve.tools.statsdoc import (
    Doc,
    EmperorSummary,
    InstanceSummary,
    Sampler,
    StatsError,
    VassalRow,
    WorkerRow,
    clock,
    emperor_view,
    fetch,
    human_duration,
    human_size,
    instance_view,
    is_emperor,
    parse_address,
    sort_workers,
)

#: Sort names accepted by ``--sort``, and the key that selects each one in the curses view.
SORT_KEYS = {"r": "requests", "m": "memory", "c": "cpu", "a": "avg"}
MIN_WIDTH = 40
MIN_HEIGHT = 6


# ----------------------------------------------------------------------------------------- formatting

#: (title, width, right-aligned); the last column takes the rest of the line.
WORKER_COLUMNS: list[tuple[str, int, bool]] = [
    ("WID", 4, False),
    ("PID", 8, True),
    ("REQ", 9, True),
    ("RPS", 7, True),
    ("EXC", 5, True),
    ("STATUS", 8, False),
    ("AVG", 8, True),
    ("RSS", 8, True),
    ("CPU%", 6, True),
    ("TX", 8, True),
    ("RESPAWN", 7, True),
    ("HARAKIRI", 8, True),
    ("CURRENT", 0, False),
]
VASSAL_COLUMNS: list[tuple[str, int, bool]] = [
    ("VASSAL", 20, False),
    ("PID", 8, True),
    ("STATE", 10, False),
    ("RESPAWNS", 8, True),
    ("LOYAL", 5, True),
    ("STATS", 28, False),
    ("NOTE", 0, False),
]


def format_line(cells: Sequence[str], columns: Sequence[tuple[str, int, bool]]) -> str:
    """Cells padded into columns, one space apart; only the last cell may contain spaces."""
    parts: list[str] = []
    for i, (cell, (_, width, right)) in enumerate(zip(cells, columns, strict=True)):
        last = i == len(columns) - 1
        text = cell if last else ("_".join(cell.split()) or "-")
        parts.append(text if last else (text.rjust(width) if right else text.ljust(width)))
    return " ".join(parts).rstrip()


def worker_cells(row: WorkerRow) -> list[str]:
    """The display strings of a worker row, in :data:`WORKER_COLUMNS` order."""
    avg = f"{row.avg_ms:.1f}ms" if row.avg_ms < 10 else f"{row.avg_ms:.0f}ms"
    return [
        str(row.wid),
        str(row.pid) if row.pid else "-",
        str(row.requests),
        "-" if row.rps is None else f"{row.rps:.1f}",
        str(row.exceptions),
        row.status,
        avg,
        human_size(row.rss) if row.rss else "-",
        "-" if row.cpu is None else f"{row.cpu:.1f}",
        human_size(row.tx),
        str(row.respawns),
        str(row.harakiri),
        row.current,
    ]


def vassal_cells(row: VassalRow) -> list[str]:
    """The display strings of a vassal row, in :data:`VASSAL_COLUMNS` order."""
    return [
        row.vid,
        str(row.pid) if row.pid else "-",
        row.state,
        str(row.respawns),
        "-" if row.loyal is None else str(row.loyal),
        row.stats or "-",
        row.note or "-",
    ]


def titles(columns: Sequence[tuple[str, int, bool]]) -> str:
    """The column-title line."""
    return format_line([c[0] for c in columns], columns)


def display_version(version: str) -> str:
    """binserve's version as is; a bare uWSGI version number as ``uwsgi-2.0.30`` (as uwsgitop shows it)."""
    return f"uwsgi-{version}" if version[:1].isdigit() else version


def instance_header(summary: InstanceSummary) -> list[str]:
    """Two header lines of an instance view."""
    rps = "-" if summary.rps is None else f"{summary.rps:.1f}"
    uptime = "" if summary.uptime is None else f" - up {human_duration(summary.uptime)}"
    first = (
        f"{display_version(summary.version)} - pid {summary.pid or '-'}{uptime} - requests {summary.requests}"
        f" - {rps} req/s - tx {human_size(summary.tx)}"
    )
    second = "listen queue: " + (", ".join(summary.sockets) if summary.sockets else "-")
    return [first, second]


def emperor_header(summary: EmperorSummary) -> list[str]:
    """Two header lines of an emperor view."""
    states = ", ".join(f"{n} {s}" for s, n in sorted(summary.states.items())) or "none"
    version = display_version(summary.version)
    first = f"{version} emperor - pid {summary.pid or '-'} - vassals {summary.vassals} ({states})"
    second = f"dirs: {' '.join(summary.dirs) or '-'} - tyrant: {summary.tyrant}"
    return [first, second]


def snapshot_text(doc: Doc, sort: str | None = None) -> str:
    """The ``--once`` output: header lines, column titles, then one row per worker or vassal."""
    if is_emperor(doc):
        esummary, vrows = emperor_view(doc)
        lines = emperor_header(esummary) + [titles(VASSAL_COLUMNS)]
        lines += [format_line(vassal_cells(r), VASSAL_COLUMNS) for r in vrows]
    else:
        isummary, wrows = instance_view(doc)
        lines = instance_header(isummary) + [titles(WORKER_COLUMNS)]
        lines += [format_line(worker_cells(r), WORKER_COLUMNS) for r in sort_workers(wrows, sort)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- curses


@dataclass
class Level:
    """One screen of the navigation stack: a stats address and what was last read from it."""

    address: str
    label: str = ""
    doc: Doc | None = None
    error: str | None = None
    fetched_at: float | None = None
    sampler: Sampler = field(default_factory=Sampler)
    summary: InstanceSummary | EmperorSummary | None = None
    workers: list[WorkerRow] = field(default_factory=list)
    vassals: list[VassalRow] = field(default_factory=list)
    selected: str | None = None
    offset: int = 0

    def refresh(self, timeout: float) -> None:
        """Fetch a new document; on failure keep the last one and remember the error."""
        try:
            doc = fetch(self.address, timeout)
        except StatsError as exc:
            self.error = str(exc)
            return
        try:
            if is_emperor(doc):
                summary: InstanceSummary | EmperorSummary
                summary, self.vassals = emperor_view(doc)
                self.workers = []
            else:
                summary, self.workers = instance_view(doc, self.sampler)
                self.vassals = []
        except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as exc:
            self.error = f"unexpected stats document: {exc.__class__.__name__}: {exc}"
            return
        self.summary = summary
        self.error = None
        self.doc = doc
        self.fetched_at = time.time()


class TopApp:
    """The curses program: a stack of :class:`Level`, redrawn on every refresh and key."""

    def __init__(self, screen: Any, address: str, interval: float, sort: str | None) -> None:
        self.screen = screen
        self.interval = interval
        self.timeout = max(0.5, min(2.0, interval))
        self.sort = sort
        self.descending = True
        self.stack = [Level(address)]
        self.message = ""
        self.message_until = 0.0
        self.colors: dict[str, int] = {}

    @property
    def level(self) -> Level:
        """The level on screen."""
        return self.stack[-1]

    def setup(self) -> None:
        """Terminal modes: no cursor, keypad, short Esc delay, colours when available."""
        try:
            curses.curs_set(0)
        except curses.error:
            pass
        try:
            curses.set_escdelay(25)
        except (AttributeError, curses.error):
            pass
        self.screen.keypad(True)
        self.screen.timeout(max(20, min(100, int(self.interval * 1000))))
        if curses.has_colors():
            try:
                curses.start_color()
                curses.use_default_colors()
                pairs = {
                    "busy": curses.COLOR_GREEN,
                    "cheap": curses.COLOR_MAGENTA,
                    "sig": curses.COLOR_YELLOW,
                    "pause": curses.COLOR_BLUE,
                    "error": curses.COLOR_RED,
                }
                for n, (name, colour) in enumerate(pairs.items(), start=1):
                    curses.init_pair(n, colour, -1)
                    self.colors[name] = curses.color_pair(n)
            except curses.error:
                self.colors = {}

    def flash(self, text: str, seconds: float = 4.0) -> None:
        """Show ``text`` in the status line for a while."""
        self.message = text
        self.message_until = time.monotonic() + seconds

    def run(self) -> None:
        """Refresh every interval and handle keys until ``q``."""
        self.setup()
        next_fetch = 0.0
        dirty = True
        while True:
            if time.monotonic() >= next_fetch:
                self.level.refresh(self.timeout)
                next_fetch = time.monotonic() + self.interval
                dirty = True
            if self.message and time.monotonic() > self.message_until:
                self.message = ""
                dirty = True
            if dirty:
                self.draw()
                dirty = False
            key = self.screen.getch()
            if key == -1:
                continue
            dirty = True
            result = self.handle_key(key)
            if result == "quit":
                return
            if result == "refetch":
                next_fetch = 0.0

    # keys ----------------------------------------------------------------------------------------

    def handle_key(self, key: int) -> str | None:
        """Act on one key; ``"quit"`` to leave, ``"refetch"`` when the level changed."""
        char = chr(key) if 0 <= key < 256 else ""
        level = self.level
        if char in ("q", "Q"):
            return "quit"
        if key == curses.KEY_RESIZE:
            try:
                curses.update_lines_cols()
            except curses.error:
                pass
            return None
        if char in SORT_KEYS:
            name = SORT_KEYS[char]
            if self.sort == name:
                self.descending = not self.descending
            else:
                self.sort, self.descending = name, True
            if level.vassals:
                self.flash(f"sort keys apply to workers (press Enter on a vassal); sort: {self.sort_text()}")
            return None
        if char == "i":
            self.sort, self.descending = None, True
            return None
        if key in (
            curses.KEY_UP,
            curses.KEY_DOWN,
            curses.KEY_PPAGE,
            curses.KEY_NPAGE,
            curses.KEY_HOME,
            curses.KEY_END,
        ) or char in ("j", "k", "g", "G"):
            self.move(key, char)
            return None
        if key in (curses.KEY_ENTER, 10, 13) or char == "\n":
            return self.drill()
        if key in (27, curses.KEY_LEFT, curses.KEY_BACKSPACE, 127, 8):
            if len(self.stack) > 1:
                self.stack.pop()
                self.message = ""
                return "refetch"
            return None
        return None

    def body_height(self) -> int:
        """Rows available for workers or vassals."""
        height, _ = self.screen.getmaxyx()
        return max(1, height - 5)

    def move(self, key: int, char: str) -> None:
        """Move the vassal selection, or scroll the worker rows."""
        page = self.body_height()
        step = {curses.KEY_UP: -1, curses.KEY_DOWN: 1, curses.KEY_PPAGE: -page, curses.KEY_NPAGE: page}
        delta = step.get(key, {"k": -1, "j": 1}.get(char, 0))
        level = self.level
        if level.vassals:
            ids = [r.vid for r in level.vassals]
            index = ids.index(level.selected) if level.selected in ids else 0
            if key == curses.KEY_HOME or char == "g":
                index = 0
            elif key == curses.KEY_END or char == "G":
                index = len(ids) - 1
            else:
                index = max(0, min(len(ids) - 1, index + delta))
            level.selected = ids[index]
        else:
            most = max(0, len(level.workers) - page)
            if key == curses.KEY_HOME or char == "g":
                level.offset = 0
            elif key == curses.KEY_END or char == "G":
                level.offset = most
            else:
                level.offset = max(0, min(most, level.offset + delta))

    def selected_vassal(self) -> VassalRow | None:
        """The highlighted vassal (the first when none was chosen or it went away)."""
        rows = self.level.vassals
        if not rows:
            return None
        for row in rows:
            if row.vid == self.level.selected:
                return row
        return rows[0]

    def drill(self) -> str | None:
        """Open the selected vassal's stats server."""
        row = self.selected_vassal()
        if row is None:
            return None
        if not row.stats:
            self.flash(f"vassal {row.vid} has no stats address (no 'stats' option, or not a binserve vassal)")
            return None
        address = row.stats
        parent = self.level.doc or {}
        kind, _ = parse_address(address)
        if kind == "unix" and not address.startswith(("/", "@")) and isinstance(parent.get("cwd"), str):
            candidate = os.path.join(parent["cwd"], address)
            if not os.path.exists(address) and os.path.exists(candidate):
                address = candidate
        self.level.selected = row.vid
        self.stack.append(Level(address, label=f"vassal {row.vid}"))
        return "refetch"

    # drawing -------------------------------------------------------------------------------------

    def sort_text(self) -> str:
        """The sort order in words."""
        if not self.sort:
            return "worker id"
        return f"{self.sort} {'desc' if self.descending else 'asc'}"

    def put(self, y: int, text: str, attr: int = 0) -> None:
        """Write one line, cut to the screen width; never raises on the bottom-right cell."""
        height, width = self.screen.getmaxyx()
        if not 0 <= y < height or width <= 1:
            return
        try:
            self.screen.addnstr(y, 0, text.ljust(width - 1) if attr else text, width - 1, attr)
        except curses.error:
            pass

    def follow_terminal_size(self) -> None:
        """Resize curses to the tty's size if a resize went unnoticed (no SIGWINCH seen)."""
        try:
            columns, lines = os.get_terminal_size(sys.__stdout__.fileno() if sys.__stdout__ else 1)
        except (OSError, ValueError):
            return
        if (lines, columns) != self.screen.getmaxyx() and lines > 0 and columns > 0:
            try:
                curses.resizeterm(lines, columns)
            except curses.error:
                pass

    def draw(self) -> None:
        """Redraw the whole screen from the current level."""
        self.follow_terminal_size()
        screen = self.screen
        screen.erase()
        height, width = screen.getmaxyx()
        if height < MIN_HEIGHT or width < MIN_WIDTH:
            self.put(0, f"terminal too small ({width}x{height});")
            self.put(1, f"need {MIN_WIDTH}x{MIN_HEIGHT}. q quits")
            screen.refresh()
            return
        level = self.level
        where = f"stats {level.address}" + (f" ({level.label}, Esc back)" if level.label else "")
        if level.fetched_at is not None:
            where += f" - updated {clock(level.fetched_at)}"
        if level.doc is None:
            self.put(0, "binserve-top", curses.A_BOLD)
            self.put(1, where)
            self.put(3, f"waiting for {level.address} ...")
        elif level.vassals or is_emperor(level.doc):
            self.draw_emperor(level, where)
        else:
            self.draw_instance(level, where)
        self.draw_status(level)
        screen.refresh()

    def draw_instance(self, level: Level, where: str) -> None:
        """Header, column titles and worker rows."""
        assert isinstance(level.summary, InstanceSummary)
        lines = instance_header(level.summary)
        self.put(0, lines[0], curses.A_BOLD)
        self.put(1, lines[1])
        self.put(2, where)
        self.put(3, titles(WORKER_COLUMNS), curses.A_REVERSE)
        rows = sort_workers(level.workers, self.sort, self.descending)
        page = self.body_height()
        level.offset = max(0, min(level.offset, max(0, len(rows) - page)))
        for i, row in enumerate(rows[level.offset : level.offset + page]):
            self.put(4 + i, format_line(worker_cells(row), WORKER_COLUMNS), self.status_attr(row.status))

    def status_attr(self, status: str) -> int:
        """The colour of a worker row, by status (as uwsgitop)."""
        if status == "busy":
            return self.colors.get("busy", curses.A_BOLD)
        if status == "cheap":
            return self.colors.get("cheap", 0)
        if status.startswith("sig"):
            return self.colors.get("sig", 0)
        if status == "pause":
            return self.colors.get("pause", 0)
        return 0

    def draw_emperor(self, level: Level, where: str) -> None:
        """Header, column titles and vassal rows with the selection highlighted."""
        assert isinstance(level.summary, EmperorSummary)
        lines = emperor_header(level.summary)
        self.put(0, lines[0], curses.A_BOLD)
        self.put(1, lines[1])
        self.put(2, where)
        self.put(3, titles(VASSAL_COLUMNS), curses.A_REVERSE)
        rows = level.vassals
        if not rows:
            self.put(4, "(no vassals)")
            return
        selected = self.selected_vassal()
        index = rows.index(selected) if selected else 0
        page = self.body_height()
        if index < level.offset:
            level.offset = index
        elif index >= level.offset + page:
            level.offset = index - page + 1
        level.offset = max(0, min(level.offset, max(0, len(rows) - page)))
        for i, row in enumerate(rows[level.offset : level.offset + page]):
            attr = curses.A_REVERSE | curses.A_BOLD if row is selected else 0
            self.put(4 + i, format_line(vassal_cells(row), VASSAL_COLUMNS), attr)

    def draw_status(self, level: Level) -> None:
        """The bottom line: an error, a message, or the keys."""
        height, _ = self.screen.getmaxyx()
        if level.error:
            since = f" (showing data from {clock(level.fetched_at)})" if level.fetched_at else ""
            self.put(
                height - 1,
                f"error: {level.error} - retrying{since}",
                self.colors.get("error", 0) | curses.A_BOLD,
            )
        elif self.message:
            self.put(height - 1, self.message, curses.A_BOLD)
        elif level.vassals or (level.doc is not None and is_emperor(level.doc)):
            back = " Esc back" if len(self.stack) > 1 else ""
            self.put(height - 1, f"up/down j/k select  Enter workers{back}  q quit")
        else:
            back = "  Esc back" if len(self.stack) > 1 else ""
            self.put(
                height - 1,
                f"sort: {self.sort_text()}  r/m/c/a sort (again reverses)  i id order{back}  q quit",
            )


# ------------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(
        prog="binserve-top",
        description="Live view of a binserve or uWSGI stats server (instance or emperor).",
    )
    parser.add_argument(
        "address", metavar="ADDR", help="unix socket path, @abstract, HOST:PORT or http://..."
    )
    parser.add_argument(
        "--interval", type=float, default=1.0, metavar="SECONDS", help="refresh interval (default 1)"
    )
    parser.add_argument("--once", action="store_true", help="print one snapshot as plain text and exit")
    parser.add_argument(
        "--sort", choices=sorted(SORT_KEYS.values()), default=None, help="initial worker sort (descending)"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, metavar="SECONDS", help="read timeout (default 2 s)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``binserve-top``."""
    args = build_parser().parse_args(argv)
    if not args.interval > 0:
        print("binserve-top: --interval must be positive", file=sys.stderr)
        return 2
    try:
        parse_address(args.address)
    except StatsError as exc:
        print(f"binserve-top: {exc}", file=sys.stderr)
        return 2
    if args.once:
        try:
            doc = fetch(args.address, args.timeout or 2.0)
        except StatsError as exc:
            print(f"binserve-top: {exc}", file=sys.stderr)
            return 1
        try:
            text = snapshot_text(doc, args.sort)
        except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as exc:
            reason = f"{exc.__class__.__name__}: {exc}"
            print(f"binserve-top: unexpected stats document: {reason}", file=sys.stderr)
            return 1
        sys.stdout.write(text)
        return 0
    locale.setlocale(locale.LC_ALL, "")
    # ncurses lets exported LINES/COLUMNS override the real size, even after a resize: follow the tty.
    os.environ.pop("LINES", None)
    os.environ.pop("COLUMNS", None)

    def run(screen: Any) -> None:
        app = TopApp(screen, args.address, args.interval, args.sort)
        if args.timeout:
            app.timeout = args.timeout
        app.run()

    try:
        curses.wrapper(run)
    except KeyboardInterrupt:
        pass
    except curses.error as exc:
        print(f"binserve-top: cannot use the terminal ({exc}); try --once", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

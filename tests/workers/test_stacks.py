"""Reading back the stacks faulthandler writes on harakiri (binserve/stacks.py): pure functions,
from captured dumps and from a dump of this very thread; no process."""

from __future__ import annotations

import faulthandler
import os
import sys
import tempfile
import threading
from pathlib import Path

from binserve.stacks import Frame, Thread, from_app_call, parse, report, source_reader, traceback_lines

DUMP = """\
Thread 0x00007f0000000002 (most recent call first):
  File "/srv/app/helpers.py", line 3 in wait
  File "/usr/lib/python3.11/threading.py", line 1002 in _bootstrap

Current thread 0x00007f0000000001 (most recent call first):
  Garbage-collecting
  File "/srv/app/app.py", line 12 in spin
  File "/srv/app/app.py", line 20 in application
  File "<frozen runpy>", line ??? in _run_code
  ...
"""

STUCK, OTHER = 0x7F0000000001, 0x7F0000000002


def no_source(path: str, line: int) -> str | None:
    return None


def test_parse_reads_every_thread_its_frames_and_faulthandler_s_notes() -> None:
    threads = parse(DUMP)
    assert [t.ident for t in threads] == [OTHER, STUCK]
    assert [t.current for t in threads] == [False, True]
    assert threads[1].frames == [
        Frame("/srv/app/app.py", 12, "spin"),
        Frame("/srv/app/app.py", 20, "application"),
        Frame("<frozen runpy>", 0, "_run_code"),
    ]
    assert threads[1].notes == ["Garbage-collecting", "..."]


def test_a_thread_reads_most_recent_call_last_as_a_traceback() -> None:
    thread = Thread(STUCK, False, [Frame("/a.py", 2, "inner"), Frame("/a.py", 9, "outer")])
    source = {("/a.py", 2): "x = 1 / 0", ("/a.py", 9): "inner()"}
    assert traceback_lines(thread, lambda path, line: source.get((path, line))) == [
        '  File "/a.py", line 9, in outer',
        "    inner()",
        '  File "/a.py", line 2, in inner',
        "    x = 1 / 0",
    ]


def test_the_report_names_the_stuck_thread_only_unless_verbose() -> None:
    lines = report(DUMP, STUCK, verbose=False, source=no_source)
    assert lines[0] == f"the request was stuck in thread 0x{STUCK:x} (most recent call last):"
    assert lines[1:] == [
        "  Garbage-collecting",
        "  ... (older frames not written)",
        '  File "<frozen runpy>", line ?, in _run_code',
        '  File "/srv/app/app.py", line 20, in application',
        '  File "/srv/app/app.py", line 12, in spin',
    ]
    verbose = report(DUMP, STUCK, verbose=True, source=no_source)
    assert verbose[: len(lines)] == lines
    assert verbose[len(lines)] == f"thread 0x{OTHER:x} (most recent call last):"


def test_without_the_stuck_thread_every_thread_written_is_shown() -> None:
    lines = report(DUMP, 0x1234, verbose=False, source=no_source)
    assert lines[0] == "no stack of thread 0x1234 among the 2 written"
    assert sum(line.startswith("thread 0x") for line in lines) == 2
    assert report("", STUCK, verbose=True, source=no_source) == []


def test_source_lines_come_only_from_regular_files(tmp_path: Path) -> None:
    module = tmp_path / "mod.py"
    module.write_text("a = 1\n\n    b = 2\n")
    fifo = tmp_path / "fifo.py"
    os.mkfifo(fifo)  # reading it would block the master: refused, no line
    line = source_reader()
    assert line(str(module), 3) == "b = 2"
    assert line(str(module), 2) is None and line(str(module), 9) is None
    assert line(str(fifo), 1) is None
    assert line(str(tmp_path / "gone.py"), 1) is None


def test_this_python_s_faulthandler_output_is_understood() -> None:
    """Guards the parser against the running Python's own format."""
    with tempfile.TemporaryFile() as dump:
        at = sys._getframe().f_lineno + 1
        faulthandler.dump_traceback(dump, all_threads=True)
        dump.seek(0)
        text = dump.read().decode()
    threads = {t.ident: t for t in parse(text)}
    me = threads[threading.get_ident()]
    assert me.current
    assert me.frames[0] == Frame(__file__, at, "test_this_python_s_faulthandler_output_is_understood")
    lines = report(text, threading.get_ident(), verbose=False)
    assert lines[-1] == "    faulthandler.dump_traceback(dump, all_threads=True)", lines


def test_the_stuck_thread_is_shown_from_the_call_of_the_app_unless_verbose() -> None:
    app_call = ("/srv/app/app.py", "application")
    (_, stuck) = parse(DUMP)
    assert from_app_call(stuck, app_call).frames == stuck.frames[:2]
    assert from_app_call(stuck, ("/elsewhere.py", "run")) is stuck  # not in the stack: all of it
    short = report(DUMP, STUCK, verbose=False, source=no_source, app_call=app_call)
    assert short[1:] == [
        '  File "/srv/app/app.py", line 20, in application',
        '  File "/srv/app/app.py", line 12, in spin',
    ]
    full = report(DUMP, STUCK, verbose=True, source=no_source, app_call=app_call)
    assert '  File "<frozen runpy>", line ?, in _run_code' in full

"""Hostile configuration: every bad file, value or variable is one ``where: reason`` line.

The ini reader's bounds (include depth, files and bytes per load, value length, 64-bit math),
files that are not regular files (a FIFO would block ``open``), numbers that are not finite or
absurd, unknown ``BINSERVE_*`` variables, and app files that cannot be loaded. The last tests
run the ``binserve`` command to check a user sees exactly one line and exit code 2.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from binserve.config import load
from binserve.ini import MAX_DEPTH, MAX_LINES, MAX_NAME, MAX_READS, MAX_TEXT, MAX_VALUE
from binserve.options import OPTIONS, Number
from binserve.testing import Serve, Server, exchange, request_packet, run_binserve

from support import config_error as error

pytestmark = pytest.mark.usefixtures("in_tmp")  # ini files are named relatively, as users see them


def write(name: str, *lines: str) -> str:
    Path(name).write_text("[uwsgi]\n" + "".join(f"{line}\n" for line in lines))
    return name


# -- the ini reader ----------------------------------------------------------------------------------
def test_a_nul_byte_in_a_line_is_an_error() -> None:
    Path("app.ini").write_bytes(b"[uwsgi]\nlisten = 5\nchdir = @(a\0b)\n")
    assert error(["--ini", "app.ini"]) == "app.ini:3: the line contains a NUL byte"


def test_a_nul_byte_in_a_file_read_by_at_is_an_error() -> None:
    Path("secret").write_bytes(b"/srv\0/x")
    write("app.ini", "chdir = @(secret)")
    assert error(["--ini", "app.ini"]) == "app.ini:2: cannot read @(secret): it contains a NUL byte"


@pytest.mark.parametrize(
    ("expression", "result"),
    [
        ("3000000000 * 3000000000", "9000000000000000000"),
        ("0 - 9223372036854775807 - 1", "-9223372036854775808"),
        ("9223372036854775806 + 1", "9223372036854775807"),
    ],
)
def test_math_within_64_bits(expression: str, result: str) -> None:
    write("app.ini", f"n = %({expression})", "chdir = /%(n)")
    assert load(["--ini", "app.ini"], {}).chdir == f"/{result}"


@pytest.mark.parametrize(
    "expression",
    ["4000000000 * 4000000000", "big * big", "9223372036854775807 + 1", "0 - 9223372036854775807 - 2"],
)
def test_math_beyond_64_bits_is_an_error(expression: str) -> None:
    write("app.ini", "set-placeholder = big=" + "9" * 5000, f"n = %({expression})", "chdir = %(n)")
    assert error(["--ini", "app.ini"]) == f"app.ini:3: %({expression}) goes beyond 64-bit integers"


def test_a_long_chain_of_includes_is_cut_at_the_depth_limit() -> None:
    write("app.ini", "include = f1.ini")
    for index in range(1, 1200):
        write(f"f{index}.ini", f"include = f{index + 1}.ini")
    last = MAX_DEPTH - 1
    assert error(["--ini", "app.ini"]) == (
        f"f{last}.ini:2: cannot include 'f{last + 1}.ini': files nested more than {MAX_DEPTH} deep"
    )


def test_fan_out_of_includes_is_cut_at_the_read_limit() -> None:
    for index in range(30):
        write(f"f{index}.ini", f"include = f{index + 1}.ini", f"include = f{index + 1}.ini")
    write("f30.ini", "listen = 5")
    message = error(["--ini", "f0.ini"])
    assert re.fullmatch(
        rf"f\d+\.ini:[23]: cannot include 'f\d+\.ini': more than {MAX_READS} files read in one load",
        message,
    ), message


def test_total_bytes_read_are_bounded() -> None:
    Path("big.ini").write_text("[uwsgi]\n" + "# filler line\n" * 70_000)
    count = MAX_TEXT // Path("big.ini").stat().st_size + 2
    write("app.ini", *["include = big.ini"] * count)
    message = error(["--ini", "app.ini"])
    assert re.fullmatch(
        rf"app\.ini:\d+: cannot include 'big\.ini': more than {MAX_TEXT} bytes of configuration in one load",
        message,
    ), message


def test_option_lines_per_load_are_bounded() -> None:
    write("many.ini", *[f"env = A{i}=x" for i in range(1000)])
    write("app.ini", *["include = many.ini"] * 11)
    message = error(["--ini", "app.ini"])
    assert message == f"app.ini:11: cannot include 'many.ini': more than {MAX_LINES} option lines in one load"


def test_a_long_option_name_is_an_error() -> None:
    write("app.ini", "x" * 300 + " = 1")
    assert error(["--ini", "app.ini"]) == f"app.ini:2: an option name longer than {MAX_NAME} characters"


def test_reference_growth_is_bounded() -> None:
    levels = [f"p{i} = %(p{i + 1})%(p{i + 1})" for i in range(24)]
    write("app.ini", *levels, "p24 = xy", "chdir = %(p0)")
    message = error(["--ini", "app.ini"])
    assert re.fullmatch(rf"app\.ini:\d+: the value of 'p\d+' is longer than {MAX_VALUE} characters", message)


def test_magic_variable_growth_is_bounded() -> None:
    write("app.ini", "chdir = " + "%p" * 100_000)
    message = error(["--ini", "app.ini"])
    assert message == f"app.ini:2: the value of 'chdir' is longer than {MAX_VALUE} characters"


def test_deeply_nested_expansions_are_an_error() -> None:
    write("app.ini", "chdir = " + "$(" * 2000 + "HOME" + ")" * 2000)
    assert (
        error(["--ini", "app.ini"], {"HOME": "/"})
        == "app.ini:2: '$(', '@(' and '%(' nested more than 32 deep"
    )


def test_nested_expansions_are_scanned_once() -> None:
    # 31 levels of $(...) around 60,000 parentheses, on 75 lines: rescanning each level took seconds.
    value = "$(A:-" * 31 + "x" + "(" * 30_000 + ")" * 30_000 + ")" * 31
    write("part.ini", *[f"env = A{i}={value}" for i in range(15)])
    write("app.ini", *["include = part.ini"] * 5)
    started = time.monotonic()
    assert len(load(["--ini", "app.ini"], {}).env) == 75
    assert time.monotonic() - started < 5


def test_a_long_chain_of_references_is_an_error() -> None:
    chain = [f"p{i} = %(p{i + 1})" for i in range(1200)]
    write("app.ini", *chain, "p1200 = x", "chdir = %(p0)")
    message = error(["--ini", "app.ini"])
    assert re.fullmatch(r"app\.ini:\d+: '\$\(', '@\(' and '%\(' nested more than 32 deep", message), message


def make_fifo(name: str) -> str:
    os.mkfifo(name)
    return name


def make_huge(name: str) -> str:
    with open(name, "wb") as handle:
        handle.truncate(4 << 30)  # sparse: costs no disk
    return name


SPECIAL: dict[str, tuple[Callable[[str], str], str]] = {
    "fifo": (make_fifo, "is a FIFO, not a regular file"),
    "directory": (lambda name: os.mkdir(name) or name, "is a directory"),
    "huge": (make_huge, "is 4294967296 bytes, over the limit of 1048576"),
}


@pytest.mark.parametrize("kind", SPECIAL)
def test_only_bounded_regular_files_are_read(kind: str) -> None:
    make, reason = SPECIAL[kind]
    make("special")
    write("inc.ini", "include = special")
    write("at.ini", "chdir = @(special)")
    write("tpl.ini", "inherit = special")
    assert error(["--ini", "inc.ini"]) == f"inc.ini:2: cannot include 'special': {reason}"
    assert error(["--ini", "at.ini"]) == f"at.ini:2: cannot read @(special): {reason}"
    assert error(["--ini", "tpl.ini"]) == f"tpl.ini:2: cannot inherit 'special': {reason}"
    assert error(["--ini", "special"]) == f"special: cannot read ini file: {reason}"


def test_a_device_is_not_read() -> None:
    write("app.ini", "include = /dev/zero")
    assert (
        error(["--ini", "app.ini"])
        == "app.ini:2: cannot include '/dev/zero': is a device, not a regular file"
    )


# -- numbers -----------------------------------------------------------------------------------------
ABSURD = [
    ("socket-timeout", "nan", "a number of seconds in 0.001..86400"),
    ("socket-timeout", "inf", "a number of seconds in 0.001..86400"),
    ("socket-timeout", "1e20", "a number of seconds in 0.001..86400"),
    ("socket-timeout", "0", "a number of seconds in 0.001..86400"),
    ("listen", "3g", "a whole number in 1..65535"),
    ("processes", "1g", "a whole number in 1..1024"),
    ("emperor-freq", "nan", "a number of seconds in 0.01..3600"),
    ("emperor-freq", "0", "a number of seconds in 0.01..3600"),  # the scan loop would spin
    ("worker-reload-mercy", "nan", "a number of seconds in 0..86400"),
    ("worker-reload-mercy", "-1", "a number of seconds in 0..86400"),
    ("harakiri", "1.5", "a whole number of seconds in 0..86400"),
    ("limit-post", "2048g", "a whole number of bytes in 0..1024g"),
]


@pytest.mark.parametrize(("option", "raw", "expected"), ABSURD)
def test_absurd_numbers_from_every_source(option: str, raw: str, expected: str) -> None:
    message = f"option '{option}': expected {expected}, got '{raw}'"
    variable = "BINSERVE_" + option.upper().replace("-", "_")
    assert error([f"--{option}", raw]) == f"--{option}: {message}"
    assert error([], {variable: raw}) == f"{variable}: {message}"
    write("app.ini", f"{option} = {raw}")
    assert error(["--ini", "app.ini"]) == f"app.ini:2: {message}"


NUMERIC = [opt for opt in OPTIONS.values() if isinstance(opt.convert, Number)]


@pytest.mark.parametrize("option", NUMERIC, ids=[opt.name for opt in NUMERIC])
@pytest.mark.parametrize("raw", ["nan", "-inf", "inf", "-1", "1e400", "9" * 5000, "99999999999g", "١", "1_0"])
def test_every_numeric_option_is_range_checked(option: object, raw: str) -> None:
    assert isinstance(option, type(NUMERIC[0]))
    message = error([f"--{option.name}={raw}"])
    assert message.startswith(f"--{option.name}: option '{option.name}': expected ")
    assert message.endswith(f", got {raw!r}")


def test_every_number_option_shows_its_range_in_the_table() -> None:
    for opt in NUMERIC:
        assert isinstance(opt.convert, Number)
        assert f"({opt.convert.span})" in opt.description, opt.name


def test_every_number_default_is_within_its_range() -> None:
    for opt in NUMERIC:
        assert opt.convert(str(opt.default)) == opt.default, opt.name


def test_sizes_keep_their_suffixes_and_counts_do_not_take_them() -> None:
    config = load(["--buffer-size", "32k", "--limit-post", "1024g", "--post-buffering", "1m"], {})
    assert (config.buffer_size, config.limit_post, config.post_buffering) == (32768, 1 << 40, 1 << 20)
    assert (
        error(["--processes", "2k"])
        == "--processes: option 'processes': expected a whole number in 1..1024, got '2k'"
    )


# -- the environment ---------------------------------------------------------------------------------
def test_an_unknown_variable_is_ignored_with_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    config = load([], {"BINSERVE_HOME": "/home/x", "BINSERVE_PROCESES": "3", "BINSERVE_LISTEN": "7"})
    assert (config.processes, config.listen) == (1, 7)
    assert capsys.readouterr().err == (
        "binserve: warning: ignoring BINSERVE_HOME: binserve has no option 'home'\n"
        "binserve: warning: ignoring BINSERVE_PROCESES: binserve has no option 'proceses'"
        " (did you mean BINSERVE_PROCESSES?)\n"
    )


def get(path: Path) -> bytes:
    return exchange(path, request_packet("/"))


def test_binserve_starts_and_serves_despite_binserve_home(serve: Serve) -> None:
    server = serve("--module", "binserve.demo", env={"BINSERVE_HOME": "/nowhere"})
    assert get(server.socket).startswith(b"HTTP/1.1 200")
    assert "warning: ignoring BINSERVE_HOME: binserve has no option 'home'" in server.log()


# -- the app -----------------------------------------------------------------------------------------
def test_module_and_wsgi_file_together_are_a_config_error() -> None:
    write("app.ini", "module = binserve.demo")
    assert error(["--ini", "app.ini", "--wsgi-file", "app.py"]) == (
        "--wsgi-file: option 'wsgi-file' cannot be used with option 'module' (app.ini:2): give only one"
    )


def test_a_directory_as_wsgi_file_says_so(serve: Serve) -> None:
    os.mkdir("app.py")
    server = serve("--wsgi-file", "app.py", ready=False)
    server.proc.wait(20)
    assert server.proc.returncode == 4
    assert "cannot load the app: wsgi-file app.py: is a directory" in server.log()
    assert "Traceback" not in server.log()


@pytest.mark.process
def test_an_unreadable_wsgi_file_says_permission_denied() -> None:
    # A directory every user may enter, so only the file's own mode keeps nobody out.
    base = Path(tempfile.mkdtemp())
    base.chmod(0o755)
    (base / "app.py").write_text("def application(environ, start_response):\n    return []\n")
    (base / "app.py").chmod(0)
    # Root reads any file: the app is loaded as nobody, once the privileges are dropped.
    drop = ["--uid", "nobody"] if os.geteuid() == 0 else []
    server = Server(base, [*drop, "--wsgi-file", "app.py"], ready=False)
    try:
        server.proc.wait(20)
        assert server.proc.returncode == 4, server.log()
        assert "cannot load the app: wsgi-file app.py: Permission denied" in server.log()
    finally:
        server.stop()
        shutil.rmtree(base)


# -- through the command -----------------------------------------------------------------------------
@pytest.mark.process
def test_process_exits_2_with_one_line(tmp_path: Path) -> None:
    make_fifo("pipe.ini")
    write("app.ini", "include = /dev/zero")
    cases = [
        (["--ini", "pipe.ini"], {}, "pipe.ini: cannot read ini file: is a FIFO, not a regular file"),
        (["--ini", "app.ini"], {}, "app.ini:2: cannot include '/dev/zero': is a device, not a regular file"),
        (
            ["--socket-timeout", "nan"],
            {},
            "--socket-timeout: option 'socket-timeout':"
            " expected a number of seconds in 0.001..86400, got 'nan'",
        ),
        (
            [],
            {"BINSERVE_LISTEN": "3g"},
            "BINSERVE_LISTEN: option 'listen': expected a whole number in 1..65535, got '3g'",
        ),
    ]
    Path("nul.ini").write_bytes(b"[uwsgi]\nchdir = @(a\\0b)\n".replace(b"\\0", b"\0"))
    write("math.ini", "n = %(4000000000 * 4000000000)", "chdir = %(n)")
    cases += [
        (["--ini", "nul.ini"], {}, "nul.ini:2: the line contains a NUL byte"),
        (["--ini", "math.ini"], {}, "math.ini:2: %(4000000000 * 4000000000) goes beyond 64-bit integers"),
        (
            ["--emperor-freq", "nan"],
            {},
            "--emperor-freq: option 'emperor-freq': expected a number of seconds in 0.01..3600, got 'nan'",
        ),
        (
            ["--wsgi-file", "app.py"],
            {},
            "--wsgi-file: option 'wsgi-file' cannot be used with option 'module' (--module): give only one",
        ),
    ]
    for args, env, message in cases:
        result = run_binserve("--socket", "x.sock", "--module", "binserve.demo", *args, env=env)
        assert (result.returncode, result.stderr, result.stdout) == (2, f"binserve: {message}\n", ""), args
    assert not Path("x.sock").exists()

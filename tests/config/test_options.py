"""Options from ini files, ``BINSERVE_*`` variables and the command line, through ``config.load``.

Pure tests call ``load(argv, environ)`` with an explicit environment; the last few run the
``binserve`` command to check what a user sees when the configuration is wrong.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from binserve.config import load
from binserve.options import ALIASES, OPTIONS, UWSGI_ONLY, options_table, to_bool
from binserve.testing import run_binserve

from support import config_error as error

pytestmark = pytest.mark.usefixtures("in_tmp")  # ini files are named relatively, as users see them


def ini(text: str, name: str = "app.ini") -> str:
    """Write an ini file into the current directory; returns its (relative) name."""
    Path(name).write_text(textwrap.dedent(text).lstrip("\n"))
    return name


# -- reading ini files ----------------------------------------------------------------------------
def test_uwsgi_section_with_repeated_keys_bare_keys_and_comments() -> None:
    name = ini(
        """
        # a comment
        ; another comment
        [uwsgi]
        socket = /run/a.sock
        socket=/run/b.sock
          processes   =   3
        disable-logging
        env = GREETING=a=b
        ; master = false would be ignored: this line is a comment
        chmod-socket = 660
        """
    )
    config = load(["--ini", name], {})
    assert config.socket == ["/run/a.sock", "/run/b.sock"]
    assert config.processes == 3
    assert config.disable_logging is True
    assert config.env == ["GREETING=a=b"]
    assert config.chmod_socket == 0o660
    assert config.ini == [name]


def test_binserve_section_is_read() -> None:
    name = ini(
        """
        [binserve]
        processes = 5
        """
    )
    assert load(["--ini", name], {}).processes == 5


def test_binserve_section_wins_over_uwsgi_section_in_one_file() -> None:
    """A file shared with uWSGI: binserve reads its own section and nothing of [uwsgi]."""
    name = ini(
        """
        [uwsgi]
        processes = 2
        harakiri = 30
        [binserve]
        processes = 4
        """
    )
    config = load(["--ini", name], {})
    assert config.processes == 4


def test_other_sections_are_skipped() -> None:
    name = ini(
        """
        [other]
        processes = abc
        unknown-thing = 1
        [uwsgi]
        processes = 2
        [more]
        nonsense
        """
    )
    assert load(["--ini", name], {}).processes == 2


def test_named_section() -> None:
    name = ini(
        """
        [uwsgi]
        processes = 2
        [staging]
        processes = 7
        socket = /run/staging.sock
        """
    )
    config = load(["--ini", f"{name}:staging"], {})
    assert (config.processes, config.socket) == (7, ["/run/staging.sock"])
    assert error(["--ini", f"{name}:production"]) == f"{name}: no [production] section"


def test_file_without_a_known_section() -> None:
    name = ini("[app]\nprocesses = 2\n")
    assert error(["--ini", name]) == f"{name}: no [binserve] or [uwsgi] section"


@pytest.mark.parametrize(
    ("word", "value"),
    [("true", True), ("1", True), ("yes", True), ("on", True), ("TRUE", True), ("", True)]
    + [("false", False), ("0", False), ("no", False), ("off", False), ("False", False)],
)
def test_booleans(word: str, value: bool) -> None:
    name = ini(f"[uwsgi]\nvacuum = {word}\ndisable-logging = {word}\n")
    config = load(["--ini", name], {})
    assert config.vacuum is value
    assert config.disable_logging is value


def test_sizes_seconds_and_modes() -> None:
    name = ini(
        """
        [uwsgi]
        buffer-size = 32k
        limit-post = 2m
        socket-timeout = 0.5
        worker-reload-mercy = 3
        chmod-socket
        """
    )
    config = load(["--ini", name], {})
    assert config.buffer_size == 32768
    assert config.limit_post == 2 * 1024 * 1024
    assert config.socket_timeout == 0.5
    assert config.worker_reload_mercy == 3.0
    assert config.chmod_socket == 0o666  # bare, as uWSGI's chmod-socket


def test_aliases_in_ini_and_on_the_command_line() -> None:
    name = ini(
        """
        [uwsgi]
        workers = 3
        uwsgi-socket = /run/alias.sock
        file = app.py
        reload-mercy = 2
        """
    )
    config = load(["--ini", name], {})
    assert config.processes == 3
    assert config.socket == ["/run/alias.sock"]
    assert config.wsgi_file == "app.py"
    assert config.worker_reload_mercy == 2.0
    config = load(["--workers", "6", "--uwsgi-socket", "/run/c.sock", "--wsgi", "m"], {})
    assert (config.processes, config.socket, config.module) == (6, ["/run/c.sock"], "m")
    assert load(["--file", "y.py"], {}).wsgi_file == "y.py"


# -- precedence -----------------------------------------------------------------------------------
def test_precedence_defaults_ini_environment_command_line() -> None:
    name = ini("[uwsgi]\nprocesses = 2\nlisten = 50\nbuffer-size = 8192\n")
    assert load([], {}).processes == 1
    assert load(["--ini", name], {}).processes == 2
    environ = {"BINSERVE_PROCESSES": "3", "BINSERVE_LISTEN": "70"}
    config = load(["--ini", name], environ)
    assert (config.processes, config.listen, config.buffer_size) == (3, 70, 8192)
    config = load(["--ini", name, "--processes", "4"], environ)
    assert (config.processes, config.listen, config.buffer_size) == (4, 70, 8192)
    # The command line wins wherever it stands relative to --ini.
    assert load(["--processes", "4", "--ini", name], environ).processes == 4


def test_environment_names() -> None:
    environ = {
        "BINSERVE_SOCKET_TIMEOUT": "2.5",
        "BINSERVE_DISABLE_LOGGING": "yes",
        "BINSERVE_WORKERS": "2",
        "_BINSERVE_LISTEN_FDS": "",  # the reload's own variables are not options
        "OTHER": "ignored",
    }
    config = load([], environ)
    assert (config.socket_timeout, config.disable_logging, config.processes) == (2.5, True, 2)


def test_binserve_ini_variable() -> None:
    name = ini("[uwsgi]\nprocesses = 2\nsocket = /run/from-env-ini.sock\n")
    config = load(["--socket", "/run/cli.sock"], {"BINSERVE_INI": name})
    assert config.processes == 2
    assert config.socket == ["/run/from-env-ini.sock", "/run/cli.sock"]


def test_repeatable_options_accumulate_across_sources() -> None:
    name = ini("[uwsgi]\nsocket = /run/ini.sock\npythonpath = /srv/a\n")
    config = load(
        ["--ini", name, "--socket", "/run/cli.sock", "--pythonpath", "/srv/c"],
        {"BINSERVE_SOCKET": "/run/env.sock", "BINSERVE_PYTHONPATH": "/srv/b"},
    )
    assert config.socket == ["/run/ini.sock", "/run/env.sock", "/run/cli.sock"]
    assert config.pythonpath == ["/srv/a", "/srv/b", "/srv/c"]


def test_defaults_are_not_shared_between_loads() -> None:
    first = load(["--socket", "/run/one.sock"], {})
    second = load([], {})
    assert first.socket == ["/run/one.sock"]
    assert second.socket == []


# -- errors ---------------------------------------------------------------------------------------
def test_unknown_option_names_file_line_and_suggestion() -> None:
    name = ini(
        """
        [uwsgi]
        socket = /run/a.sock
        ; a comment counts as a line
        procesess = 4
        """
    )
    assert error(["--ini", name]) == "app.ini:4: unknown option 'procesess' (did you mean 'processes'?)"


def test_unknown_option_without_a_close_match() -> None:
    name = ini("[uwsgi]\nzzzz = 1\n")
    assert error(["--ini", name]) == "app.ini:2: unknown option 'zzzz'"


@pytest.mark.parametrize("option", ["reload-on-as", "touch-workers-reload", "spooler", "route", "http"])
def test_uwsgi_option_binserve_lacks_is_named_as_such(option: str) -> None:
    name = ini(f"[uwsgi]\nmodule = app\n{option} = 30\n")
    assert error(["--ini", name]) == (
        f"app.ini:3: option '{option}' is a uWSGI option that binserve does not implement"
    )


def test_bad_value_names_file_line_and_option() -> None:
    name = ini("[uwsgi]\nsocket = /run/a.sock\nprocesses = abc\n")
    assert error(["--ini", name]) == (
        "app.ini:3: option 'processes': expected a whole number in 1..1024, got 'abc'"
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("processes = 0", "app.ini:2: option 'processes': expected a whole number in 1..1024, got '0'"),
        (
            "buffer-size = 70000",
            "app.ini:2: option 'buffer-size': expected a whole number of bytes in 1..65535, got '70000'",
        ),
        (
            "vacuum = maybe",
            "app.ini:2: option 'vacuum': expected a boolean (true/false, yes/no, 1/0), got 'maybe'",
        ),
        (
            "chmod-socket = 9x",
            "app.ini:2: option 'chmod-socket': expected an octal mode such as 660 (0..7777), got '9x'",
        ),
        (
            "socket-timeout = -1",
            "app.ini:2: option 'socket-timeout': expected a number of seconds in 0.001..86400, got '-1'",
        ),
        ("env = NOEQUALS", "app.ini:2: option 'env': expected NAME=value, got 'NOEQUALS'"),
        ("workers = many", "app.ini:2: option 'workers': expected a whole number in 1..1024, got 'many'"),
        ("= 3", "app.ini:2: line '= 3' has no option name"),
        ("[uwsgi", "app.ini:2: malformed section header '[uwsgi'"),
    ],
)
def test_bad_values(line: str, message: str) -> None:
    name = ini(f"[uwsgi]\n{line}\n")
    assert error(["--ini", name]) == message


def test_bad_values_from_the_environment_and_command_line() -> None:
    assert (
        error([], {"BINSERVE_LISTEN": "x"})
        == "BINSERVE_LISTEN: option 'listen': expected a whole number in 1..65535, got 'x'"
    )
    assert (
        error(["--processes", "abc"])
        == "--processes: option 'processes': expected a whole number in 1..1024, got 'abc'"
    )


def test_missing_and_unreadable_files_are_named(tmp_path: Path) -> None:
    assert error(["--ini", "missing.ini"]) == "missing.ini: cannot read ini file: No such file or directory"
    (tmp_path / "adir.ini").mkdir()
    assert error(["--ini", "adir.ini"]) == "adir.ini: cannot read ini file: is a directory"
    Path("latin1.ini").write_bytes(b"[uwsgi]\nchdir = /srv/caf\xe9\n")
    assert error(["--ini", "latin1.ini"]).startswith("latin1.ini: not UTF-8 text")
    if os.geteuid() != 0:  # root reads any file
        Path("secret.ini").write_text("[uwsgi]\n")
        Path("secret.ini").chmod(0)
        assert error(["--ini", "secret.ini"]) == "secret.ini: cannot read ini file: Permission denied"


def test_ini_inside_ini_includes_the_file_as_uwsgi_does() -> None:
    ini("[uwsgi]\nprocesses = 2\n", "inner.ini")
    name = ini("[uwsgi]\nini = inner.ini\nlisten = 7\n")
    config = load(["--ini", name], {})
    assert (config.processes, config.listen) == (2, 7)
    assert config.ini == [name, "inner.ini"]


# -- the one table --------------------------------------------------------------------------------
def test_options_table_lists_every_option_and_alias() -> None:
    table = options_table()
    rows = {line.split("|")[1].strip().strip("`"): line for line in table.splitlines()[2:]}
    assert set(rows) == set(OPTIONS)
    for alias, target in ALIASES.items():
        assert f"`{alias}`" in rows[target]
    for option in OPTIONS.values():
        assert option.help in rows[option.name]


def test_every_option_is_settable_from_ini_and_command_line() -> None:
    samples = {
        "to_bool": "true",
        "to_str": "x",
        "to_env": "A=b",
        "to_mode": "644",
        "to_stats_format": "json",
        "to_network": "10.0.0.5",
        "parse_logger": "file:x",
        "to_log_date": "false",
        "to_cheaper_algo": "busyness",
        "to_req_encoder": "json",
        "to_log_format": "%(addr) %(status)",
    }
    for option in OPTIONS.values():
        if option.name in ("ini", "include", "inherit"):  # they name files: tests/test_ini.py
            continue
        raw = samples.get(getattr(option.convert, "__name__", ""), "2")
        more = ("processes", "4") if option.name == "cheaper" else ()  # cheaper must be below processes
        lines = f"{option.name} = {raw}\n" + (f"{more[0]} = {more[1]}\n" if more else "")
        name = ini(f"[uwsgi]\n{lines}", "every.ini")
        from_ini = getattr(load(["--ini", name], {}), option.attr)
        cli = [f"--{option.name}", raw] + ([f"--{more[0]}", more[1]] if more else [])
        from_cli = getattr(load(cli, {}), option.attr)
        assert from_ini == from_cli, option.name
        assert from_cli != option.default or option.convert is to_bool, option.name


def test_uwsgi_only_names_do_not_shadow_real_options() -> None:
    assert not UWSGI_ONLY & set(OPTIONS)
    assert not UWSGI_ONLY & set(ALIASES)
    assert set(ALIASES.values()) <= set(OPTIONS)


# -- through the command ----------------------------------------------------------------------------
@pytest.mark.process
def test_cli_bad_ini_exits_2_with_one_line() -> None:
    name = ini("[uwsgi]\nsocket = x.sock\nmodule = app\nprocesess = 4\n", "bad.ini")
    result = run_binserve("--ini", name)
    assert result.returncode == 2
    assert result.stderr == "binserve: bad.ini:4: unknown option 'procesess' (did you mean 'processes'?)\n"
    assert result.stdout == ""


@pytest.mark.process
def test_cli_bad_environment_exits_2_with_one_line() -> None:
    result = run_binserve("--socket", "x.sock", "--module", "app", env={"BINSERVE_BUFFER_SIZE": "huge"})
    assert result.returncode == 2
    assert (
        result.stderr == "binserve: BINSERVE_BUFFER_SIZE: option 'buffer-size':"
        " expected a whole number of bytes in 1..65535, got 'huge'\n"
    )
    assert not Path("x.sock").exists()


@pytest.mark.process
def test_cli_help_options_prints_the_table() -> None:
    result = run_binserve("--help-options")
    assert result.returncode == 0
    assert result.stdout.strip() == options_table()

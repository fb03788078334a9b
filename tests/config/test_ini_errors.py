"""uWSGI's ini syntax (``binserve/ini.py``) through ``config.load``: the table of errors.

Each case writes its files into tmp_path (the working directory), loads them with an explicit
environment and checks the exact one-line error, as test_ini checks the features.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_ini import APP, uwsgi, write

from binserve.config import ConfigError, load

pytestmark = pytest.mark.usefixtures("in_tmp")  # ini files are named relatively, as users see them


def failure(files: dict[str, str], argv: tuple[str, ...] = APP, environ: dict[str, str] | None = None) -> str:
    write(files)
    with pytest.raises(ConfigError) as caught:
        load(list(argv), environ or {})
    return str(caught.value)


# (files, extra argv, environ, the one-line error)
ERRORS = {
    "unknown key, with the closest option": (
        {"app.ini": uwsgi("socket = a.sock", "; a comment counts as a line", "procesess = 4")},
        (),
        {},
        "app.ini:4: unknown option 'procesess' (did you mean 'processes'?)",
    ),
    "unknown key, nothing close": (
        {"app.ini": uwsgi("zzzz = 1")},
        (),
        {},
        "app.ini:2: unknown option 'zzzz'",
    ),
    "unknown key, a reference spelled like it": (
        {"app.ini": uwsgi("project = x", "module = %(projet)")},
        (),
        {},
        "app.ini:2: unknown option 'project' (never referenced as %(project); is %(projet) a misspelling?)",
    ),
    "a uWSGI option binserve lacks": (
        {"app.ini": uwsgi("mules = 4")},
        (),
        {},
        "app.ini:2: option 'mules' is a uWSGI option that binserve does not implement",
    ),
    "cheaper not below processes": (
        {"app.ini": uwsgi("processes = 4\ncheaper = 4")},
        (),
        {},
        "app.ini:3: option 'cheaper' (4) must be below option 'processes' (4): cheaper is the fewest "
        "workers, processes the most",
    ),
    "cheaper without processes": (
        {"app.ini": uwsgi("cheaper = 1")},
        (),
        {},
        "app.ini:2: option 'cheaper' (1) must be below option 'processes' (1): cheaper is the fewest "
        "workers, processes the most",
    ),
    "cheaper-initial out of cheaper..processes": (
        {"app.ini": uwsgi("processes = 4\ncheaper = 2\ncheaper-initial = 1")},
        (),
        {},
        "app.ini:4: option 'cheaper-initial' (1) must be within option 'cheaper' (2) .. option "
        "'processes' (4)",
    ),
    "cheaper-busyness-min not below max": (
        {"app.ini": uwsgi("processes = 4\ncheaper = 1\ncheaper-busyness-min = 60")},
        (),
        {},
        "app.ini:4: option 'cheaper-busyness-min' (60) must be below option 'cheaper-busyness-max' (50)",
    ),
    "an unknown cheaper-algo": (
        {"app.ini": uwsgi("cheaper-algo = backlog")},
        (),
        {},
        "app.ini:2: option 'cheaper-algo': expected spare or busyness, got 'backlog'",
    ),
    "uWSGI's config logic": (
        {"app.ini": uwsgi("if-env = HOME")},
        (),
        {},
        "app.ini:2: option 'if-env' is a uWSGI option that binserve does not implement",
    ),
    "a referenced uWSGI option is still that option, not a placeholder": (
        {"app.ini": uwsgi("home = /venv", "pythonpath = %(home)/lib")},
        (),
        {},
        "app.ini:2: option 'home' is a uWSGI option that binserve does not implement",
    ),
    "a bad value after expansion": (
        {"app.ini": uwsgi("n = abc", "processes = %(n)")},
        (),
        {},
        "app.ini:3: option 'processes': expected a whole number in 1..1024, got 'abc'",
    ),
    "a problem in an included file names that file": (
        {"app.ini": uwsgi("include = b.ini"), "b.ini": uwsgi("listen = many")},
        (),
        {},
        "b.ini:2: option 'listen': expected a whole number in 1..65535, got 'many'",
    ),
    "an unknown key in an inherited template names the template": (
        {"app.ini": uwsgi("inherit = tpl.ini"), "tpl.ini": uwsgi("# x", "listne = 2")},
        (),
        {},
        "tpl.ini:3: unknown option 'listne' (did you mean 'listen'?)",
    ),
    # -- files ---------------------------------------------------------------------------------------
    "a missing include names the including file and line": (
        {"app.ini": uwsgi("listen = 1", "include = missing.ini")},
        (),
        {},
        "app.ini:3: cannot include 'missing.ini': No such file or directory",
    ),
    "a missing include, relative to the including file": (
        {"conf/app.ini": uwsgi("include = missing.ini")},
        ("--ini", "conf/app.ini"),
        {},
        "conf/app.ini:2: cannot include 'conf/missing.ini': No such file or directory",
    ),
    "a missing template": (
        {"app.ini": uwsgi("inherit = tpl.ini")},
        (),
        {},
        "app.ini:2: cannot inherit 'tpl.ini': No such file or directory",
    ),
    "an include that is a directory": (
        {"app.ini": uwsgi("include = conf"), "conf/x": ""},
        (),
        {},
        "app.ini:2: cannot include 'conf': is a directory",
    ),
    "an included file without the section": (
        {"app.ini": uwsgi("include = b.ini"), "b.ini": "[other]\nlisten = 1\n"},
        (),
        {},
        "app.ini:2: cannot include 'b.ini': no [binserve] or [uwsgi] section",
    ),
    "an included :section that is not there": (
        {"app.ini": uwsgi("include = :staging")},
        (),
        {},
        "app.ini:2: cannot include 'app.ini:staging': no [staging] section",
    ),
    "a file including itself": (
        {"app.ini": uwsgi("include = app.ini")},
        (),
        {},
        "app.ini:2: include loop: app.ini -> app.ini",
    ),
    "an include loop through another file": (
        {"app.ini": uwsgi("include = b.ini"), "b.ini": uwsgi("listen = 1", "include = app.ini")},
        (),
        {},
        "b.ini:3: include loop: app.ini -> b.ini -> app.ini",
    ),
    "an inherit loop": (
        {"app.ini": uwsgi("inherit = tpl.ini"), "tpl.ini": uwsgi("inherit = app.ini")},
        (),
        {},
        "tpl.ini:2: include loop: app.ini -> tpl.ini -> app.ini",
    ),
    "an include path cannot use a reference": (
        {"app.ini": uwsgi("dir = etc", "include = %(dir)/b.ini")},
        (),
        {},
        "app.ini:3: 'include' cannot use %(dir): it is read before references",
    ),
    "--include of a missing file": (
        {"app.ini": uwsgi("listen = 1")},
        ("--include", "more.ini"),
        {},
        "--include: cannot include 'more.ini': No such file or directory",
    ),
    "--inherit of a missing file": (
        {"app.ini": uwsgi("listen = 1")},
        ("--inherit", "tpl.ini"),
        {},
        "--inherit: cannot inherit 'tpl.ini': No such file or directory",
    ),
    # -- references ----------------------------------------------------------------------------------
    "an unknown reference, with the closest name": (
        {"app.ini": uwsgi("project = x", "module = %(project)", "chdir = /srv/%(projekt)")},
        (),
        {},
        "app.ini:4: unknown reference %(projekt) (did you mean 'project'?)",
    ),
    "an unknown reference": (
        {"app.ini": uwsgi("module = %(nothing)")},
        (),
        {},
        "app.ini:2: unknown reference %(nothing)",
    ),
    "a reference to an option that is not set": (
        {"app.ini": uwsgi("module = %(pidfile)")},
        (),
        {},
        "app.ini:2: %(pidfile) refers to option 'pidfile', which is not set",
    ),
    "a reference loop": (
        {"app.ini": uwsgi("a = %(b)", "b = %(a)", "module = %(a)")},
        (),
        {},
        "app.ini:3: reference loop: %(a) -> %(b) -> %(a)",
    ),
    "an option referring to itself": (
        {"app.ini": uwsgi("chdir = %(chdir)/x")},
        (),
        {},
        "app.ini:2: reference loop: %(chdir) -> %(chdir)",
    ),
    "an empty reference": ({"app.ini": uwsgi("module = %()")}, (), {}, "app.ini:2: empty reference %()"),
    "math on a word": (
        {"app.ini": uwsgi("n = x", "listen = %(n + 1)")},
        (),
        {},
        "app.ini:3: %(n + 1) needs whole numbers, got 'x'",
    ),
    "math dividing by zero": (
        {"app.ini": uwsgi("listen = %(4 / 0)")},
        (),
        {},
        "app.ini:2: %(4 / 0) divides by zero",
    ),
    "a placeholder named like an option": (
        {"app.ini": uwsgi("set-ph = processes=3")},
        (),
        {},
        "app.ini:2: 'processes' is an option name; a placeholder needs a name of its own",
    ),
    "set-placeholder without =": (
        {"app.ini": uwsgi("set-placeholder = foo")},
        (),
        {},
        "app.ini:2: option 'set-placeholder': expected NAME=value, got 'foo'",
    ),
    "--set-placeholder without =": (
        {"app.ini": uwsgi("listen = 1")},
        ("--set-placeholder", "foo"),
        {},
        "--set-placeholder: option 'set-placeholder': expected NAME=value, got 'foo'",
    ),
    "--set-ph named like an option": (
        {"app.ini": uwsgi("listen = 1")},
        ("--set-ph", "listen=3"),
        {},
        "--set-placeholder: 'listen' is an option name; a placeholder needs a name of its own",
    ),
    # -- magic, $(), @() -------------------------------------------------------------------------------
    "an unknown magic variable": (
        {"app.ini": uwsgi("module = %z")},
        (),
        {},
        "app.ini:2: unknown magic variable '%z' (write %% for a literal %)",
    ),
    "an unknown magic variable in an included file": (
        {"app.ini": uwsgi("include = b.ini"), "b.ini": uwsgi("env = A=50% off")},
        (),
        {},
        "b.ini:2: unknown magic variable '% ' (write %% for a literal %)",
    ),
    "a lone % at the end": (
        {"app.ini": uwsgi("env = A=50%")},
        (),
        {},
        "app.ini:2: a lone '%' ends the value (write %% for a literal %)",
    ),
    "a uWSGI magic variable binserve does not offer": (
        {"app.ini": uwsgi("socket = /run/%j.sock")},
        (),
        {},
        "app.ini:2: magic variable '%j' is not supported by binserve",
    ),
    "an unset environment variable": (
        {"app.ini": uwsgi("chdir = $(APP_HOME)")},
        (),
        {},
        "app.ini:2: environment variable 'APP_HOME' is not set (write $(APP_HOME:-default) for a fallback)",
    ),
    "an unreadable @(file)": (
        {"app.ini": uwsgi("env = S=@(secret.txt)")},
        (),
        {},
        "app.ini:2: cannot read @(secret.txt): No such file or directory",
    ),
    "an unclosed $(": (
        {"app.ini": uwsgi("chdir = $(HOME")},
        (),
        {},
        "app.ini:2: '$(' is never closed in '$(HOME'",
    ),
}


@pytest.mark.parametrize(("files", "argv", "environ", "message"), ERRORS.values(), ids=ERRORS)
def test_error(files: dict[str, str], argv: tuple[str, ...], environ: dict[str, str], message: str) -> None:
    if argv[:1] != ("--ini",):
        argv = APP + argv
    assert failure(files, argv, environ) == message


@pytest.mark.process
def test_cli_bad_ini_exits_2_with_one_line() -> None:
    write({"bad.ini": uwsgi("socket = x.sock", "module = app", "include = common.ini")})
    env = {k: v for k, v in os.environ.items() if not k.startswith("BINSERVE_")}
    result = subprocess.run(
        [sys.executable, "-m", "binserve", "--ini", "bad.ini"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert result.returncode == 2
    assert result.stderr == "binserve: bad.ini:4: cannot include 'common.ini': No such file or directory\n"
    assert result.stdout == ""
    assert not Path("x.sock").exists()

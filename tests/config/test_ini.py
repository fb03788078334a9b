"""uWSGI's ini syntax (``binserve/ini.py``) through ``config.load``: the table of features.

Each case writes its files into tmp_path (the working directory), loads them with an explicit
environment and checks one option (test_ini_errors checks the errors). ``{tmp}`` in an expected value
stands for tmp_path.
"""

from __future__ import annotations

import os
import socket
import textwrap
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from binserve.config import Config, load

APP = ("--ini", "app.ini")


pytestmark = pytest.mark.usefixtures("in_tmp")  # ini files are named relatively, as users see them


def write(files: dict[str, str]) -> None:
    for name, text in files.items():
        path = Path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))


def loaded(
    files: dict[str, str], argv: tuple[str, ...] = APP, environ: dict[str, str] | None = None
) -> Config:
    write(files)
    return load(list(argv), environ or {})


def fill(value: Any, tmp: Path) -> Any:
    if isinstance(value, str):
        return value.replace("{tmp}", str(tmp))
    if isinstance(value, list):
        return [fill(item, tmp) for item in value]
    return value


def uwsgi(*lines: str) -> str:
    return "[uwsgi]\n" + "\n".join(lines) + "\n"


# (files, extra argv, environ, option, expected); argv is ("--ini", "app.ini") plus the extra.
FEATURES = {
    # -- keys and values ------------------------------------------------------------------------------
    "repeated socket lines give two sockets": (
        {"app.ini": uwsgi("socket = a.sock", "socket = b.sock")},
        (),
        {},
        "socket",
        ["a.sock", "b.sock"],
    ),
    "a repeated single-valued option: the last wins": (
        {"app.ini": uwsgi("processes = 2", "processes = 5")},
        (),
        {},
        "processes",
        5,
    ),
    "a bare key is true": ({"app.ini": uwsgi("disable-logging")}, (), {}, "disable_logging", True),
    "yes is true": ({"app.ini": uwsgi("disable-logging = yes")}, (), {}, "disable_logging", True),
    "1 is true": ({"app.ini": uwsgi("disable-logging = 1")}, (), {}, "disable_logging", True),
    "a byte-order mark is ignored": ({"app.ini": "\ufeff" + uwsgi("listen = 5")}, (), {}, "listen", 5),
    "false is false": ({"app.ini": uwsgi("vacuum = false")}, (), {}, "vacuum", False),
    # -- %(references) and placeholders ------------------------------------------------------------------
    "%(option) is the option's value": (
        {"app.ini": uwsgi("chdir = /srv/app", "pidfile = %(chdir)/app.pid")},
        (),
        {},
        "pidfile",
        "/srv/app/app.pid",
    ),
    "a referenced unknown key is a placeholder": (
        {"app.ini": uwsgi("project = myapp", "module = %(project).wsgi")},
        (),
        {},
        "module",
        "myapp.wsgi",
    ),
    "a reference may come before its definition": (
        {"app.ini": uwsgi("module = %(project).wsgi", "project = myapp")},
        (),
        {},
        "module",
        "myapp.wsgi",
    ),
    "references nest": (
        {"app.ini": uwsgi("project = shop", "base = /srv/%(project)", "chdir = %(base)/app")},
        (),
        {},
        "chdir",
        "/srv/shop/app",
    ),
    "a placeholder's last definition wins": (
        {"app.ini": uwsgi("project = a", "project = b", "module = %(project)")},
        (),
        {},
        "module",
        "b",
    ),
    "a single-valued option's reference is its last value": (
        {"app.ini": uwsgi("listen = 10", "listen = 20", "processes = %(listen)")},
        (),
        {},
        "processes",
        20,
    ),
    "a repeatable option's reference is its first value": (
        {"app.ini": uwsgi("socket = a.sock", "socket = b.sock", "pidfile = %(socket).pid")},
        (),
        {},
        "pidfile",
        "a.sock.pid",
    ),
    "references see through aliases": (
        {"app.ini": uwsgi("workers = 3", "listen = %(processes)")},
        (),
        {},
        "listen",
        3,
    ),
    "math is a left-to-right pipeline": (
        {"app.ini": uwsgi("foo = 17", "bar = 30", "listen = %(foo + bar + 3 * 2)")},
        (),
        {},
        "listen",
        100,
    ),
    "two values in a row concatenate, ++ increments": (
        {"app.ini": uwsgi("foo = 2", "bar = 9", "listen = %(foo bar ++)")},
        (),
        {},
        "listen",
        30,
    ),
    "division truncates toward zero, as in C": (
        {"app.ini": uwsgi("env = X=%(0 - 7 / 2)")},
        (),
        {},
        "env",
        ["X=-3"],
    ),
    "math with a magic variable": (
        {"app.ini": uwsgi("processes = %(%k * 2)")},
        (),
        {},
        "processes",
        (os.cpu_count() or 1) * 2,
    ),
    "set-placeholder and set-ph define placeholders": (
        {"app.ini": uwsgi("set-placeholder = a=1", "set-ph = b=2", "env = V=%(a)%(b)")},
        (),
        {},
        "env",
        ["V=12"],
    ),
    "set-placeholder lines are kept as options": (
        {"app.ini": uwsgi("set-placeholder = a=1", "set-ph = b=2")},
        (),
        {},
        "set_placeholder",
        ["a=1", "b=2"],
    ),
    "--set-placeholder on the command line wins over the file": (
        {"app.ini": uwsgi("project = ini", "module = %(project)")},
        ("--set-ph", "project=cli"),
        {},
        "module",
        "cli",
    ),
    "a command-line value is what references see": (
        {"app.ini": uwsgi("listen = 3", "env = L=%(listen)")},
        ("--listen", "9"),
        {},
        "env",
        ["L=9"],
    ),
    "a BINSERVE_ variable is what references see": (
        {"app.ini": uwsgi("listen = 3", "env = L=%(listen)")},
        (),
        {"BINSERVE_LISTEN": "11"},
        "env",
        ["L=11"],
    ),
    # -- magic variables -----------------------------------------------------------------------------
    "%d %p %s %n %e %c name the file": (
        {"conf/app.ini": uwsgi("env = d=%d p=%p s=%s n=%n e=%e c=%c")},
        ("--ini", "conf/app.ini"),
        {},
        "env",
        ["d={tmp}/conf/ p={tmp}/conf/app.ini s=app.ini n=app e=ini c=conf"],
    ),
    "%x is the section asked for, %o the name as given": (
        {"app.ini": "[uwsgi]\nlisten = 1\n[extra]\nenv = x=%x o=%o\n"},
        ("--ini", "app.ini:extra"),
        {},
        "env",
        ["x=extra o=app.ini:extra"],
    ),
    "%x is empty without a section": ({"app.ini": uwsgi("env = x=%x.")}, (), {}, "env", ["x=."]),
    "%% is a literal %": ({"app.ini": uwsgi("env = P=100%%")}, (), {}, "env", ["P=100%"]),
    "%h is the hostname": ({"app.ini": uwsgi("env = H=%h")}, (), {}, "env", [f"H={socket.gethostname()}"]),
    "%v is the working directory": ({"app.ini": uwsgi("env = V=%v")}, (), {}, "env", ["V={tmp}"]),
    "%u and %g are the ids": (
        {"app.ini": uwsgi("env = U=%u:%g")},
        (),
        {},
        "env",
        [f"U={os.getuid()}:{os.getgid()}"],
    ),
    "%V is binserve's version": (
        {"app.ini": uwsgi("env = V=%V")},
        (),
        {},
        "env",
        [f"V={metadata.version('binserve')}"],
    ),
    "%n in an included file names that file, %N the --ini file": (
        {"app.ini": uwsgi("include = b.ini"), "b.ini": uwsgi("env = n=%n N=%N")},
        (),
        {},
        "env",
        ["n=b N=app"],
    ),
    # -- $(ENV) and @(file) ----------------------------------------------------------------------------
    "$(VAR) is the environment variable": (
        {"app.ini": uwsgi("env = A=$(APP)")},
        (),
        {"APP": "x"},
        "env",
        ["A=x"],
    ),
    "$(VAR:-default) when unset": ({"app.ini": uwsgi("env = A=$(APP:-d)")}, (), {}, "env", ["A=d"]),
    "$(VAR:-default) when empty": ({"app.ini": uwsgi("env = A=$(APP:-d)")}, (), {"APP": ""}, "env", ["A=d"]),
    "$(VAR-default) when unset": ({"app.ini": uwsgi("env = A=$(APP-d)")}, (), {}, "env", ["A=d"]),
    "$(VAR-default) keeps an empty value": (
        {"app.ini": uwsgi("env = A=$(APP-d)")},
        (),
        {"APP": ""},
        "env",
        ["A="],
    ),
    "$(VAR:-) is empty when unset": ({"app.ini": uwsgi("env = A=$(APP:-)")}, (), {}, "env", ["A="]),
    "what $() inserts is not read again": (
        {"app.ini": uwsgi("env = A=$(APP)")},
        (),
        {"APP": "%(oops)"},
        "env",
        ["A=%(oops)"],
    ),
    "@(file) is the file's stripped text, relative to the ini file": (
        {"conf/app.ini": uwsgi("env = S=@(secret.txt)"), "conf/secret.txt": "s3cret\n"},
        ("--ini", "conf/app.ini"),
        {},
        "env",
        ["S=s3cret"],
    ),
    "@() of a $() path": (
        {"app.ini": uwsgi("env = S=@($(DIR)/secret.txt)"), "keys/secret.txt": "k\n"},
        (),
        {"DIR": "keys"},
        "env",
        ["S=k"],
    ),
    # -- include ---------------------------------------------------------------------------------------
    "include is read at its place": (
        {"app.ini": uwsgi("socket = a", "include = b.ini", "socket = c"), "b.ini": uwsgi("socket = b")},
        (),
        {},
        "socket",
        ["a", "b", "c"],
    ),
    "include is relative to the including file, and recorded so": (
        {"conf/app.ini": uwsgi("include = common/base.ini"), "conf/common/base.ini": uwsgi("listen = 7")},
        ("--ini", "conf/app.ini"),
        {},
        "include",
        ["conf/common/base.ini"],
    ),
    "include of :section reads that section of the same file": (
        {"app.ini": "[uwsgi]\ninclude = :extra\n[extra]\nlisten = 7\n"},
        (),
        {},
        "listen",
        7,
    ),
    "an include path may use $(VAR)": (
        {"app.ini": uwsgi("include = $(CONF)/b.ini"), "etc/b.ini": uwsgi("listen = 8")},
        (),
        {"CONF": "etc"},
        "listen",
        8,
    ),
    "a file included twice, not in a loop, is fine": (
        {
            "app.ini": uwsgi("include = b.ini", "include = c.ini"),
            "b.ini": uwsgi("include = common.ini"),
            "c.ini": uwsgi("include = common.ini"),
            "common.ini": uwsgi("pythonpath = /lib"),
        },
        (),
        {},
        "pythonpath",
        ["/lib", "/lib"],
    ),
    "--include on the command line reads after the --ini files": (
        {"app.ini": uwsgi("listen = 1"), "more.ini": uwsgi("listen = 2", "env = N=%n:%N")},
        ("--include", "more.ini"),
        {},
        "env",
        ["N=more:app"],
    ),
    # -- inherit ---------------------------------------------------------------------------------------
    "an inherited template's value is a default the file overrides": (
        {"app.ini": uwsgi("inherit = tpl.ini", "processes = 2"), "tpl.ini": uwsgi("processes = 8")},
        (),
        {},
        "processes",
        2,
    ),
    "even when the inherit line comes last": (
        {"app.ini": uwsgi("processes = 2", "inherit = tpl.ini"), "tpl.ini": uwsgi("processes = 8")},
        (),
        {},
        "processes",
        2,
    ),
    "what the file does not set comes from the template": (
        {"app.ini": uwsgi("inherit = tpl.ini", "processes = 2"), "tpl.ini": uwsgi("listen = 50")},
        (),
        {},
        "listen",
        50,
    ),
    "repeatable options: the template's come first": (
        {"app.ini": uwsgi("socket = a.sock", "inherit = tpl.ini"), "tpl.ini": uwsgi("socket = t.sock")},
        (),
        {},
        "socket",
        ["t.sock", "a.sock"],
    ),
    "a template sees the file's placeholders": (
        {
            "app.ini": uwsgi("inherit = tpl.ini", "project = shop"),
            "tpl.ini": uwsgi("chdir = /srv/%(project)"),
        },
        (),
        {},
        "chdir",
        "/srv/shop",
    ),
    "--inherit as the emperor's vassals-inherit passes it: %N names the vassal": (
        {"vassals/app.ini": uwsgi("processes = 2"), "tpl.ini": uwsgi("socket = /run/%N.sock", "env = T=%n")},
        ("--ini", "vassals/app.ini", "--inherit", "tpl.ini"),
        {},
        "socket",
        ["/run/app.sock"],
    ),
    "--inherit: the template's own %n names the template": (
        {"vassals/app.ini": uwsgi("processes = 2"), "tpl.ini": uwsgi("env = T=%n")},
        ("--ini", "vassals/app.ini", "--inherit", "tpl.ini"),
        {},
        "env",
        ["T=tpl"],
    ),
    "--inherit: the vassal's value wins": (
        {"vassals/app.ini": uwsgi("processes = 2"), "tpl.ini": uwsgi("processes = 8")},
        ("--ini", "vassals/app.ini", "--inherit", "tpl.ini"),
        {},
        "processes",
        2,
    ),
}


@pytest.mark.parametrize(("files", "argv", "environ", "option", "expected"), FEATURES.values(), ids=FEATURES)
def test_feature(
    files: dict[str, str],
    argv: tuple[str, ...],
    environ: dict[str, str],
    option: str,
    expected: Any,
    tmp_path: Path,
) -> None:
    if argv[:1] != ("--ini",):
        argv = APP + argv
    assert getattr(loaded(files, argv, environ), option) == fill(expected, tmp_path)


def test_directory_components_0_to_9(tmp_path: Path) -> None:
    parts = [part for part in str(tmp_path / "conf").split("/") if part]
    config = loaded(
        {"conf/app.ini": uwsgi("env = X=" + "|".join(f"%{i}" for i in range(10)))}, ("--ini", "conf/app.ini")
    )
    assert config.env == ["X=" + "|".join((parts + [""] * 10)[:10])]


def test_start_time_t_and_T() -> None:
    config = loaded({"app.ini": uwsgi("env = T=%t %T")})
    seconds, micros = config.env[0][2:].split()
    assert abs(int(seconds) - time.time()) < 60
    assert int(micros) // 1_000_000 == int(seconds)


def test_placeholders_are_not_options() -> None:
    config = loaded({"app.ini": uwsgi("project = x", "module = %(project)")})
    with pytest.raises(AttributeError):
        config.project  # noqa: B018

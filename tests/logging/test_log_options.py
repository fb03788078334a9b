"""logger, req-logger and log-date as binserve reads them, and the starts they refuse.

A bad logger spec is an error naming the option and the forms it takes; a log file that is a
symbolic link, a directory or out of reach stops the start with one line naming it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from binserve.config import load
from binserve.log import DEFAULT_DATE, FACILITIES, LOGGER_FORMS
from binserve.testing import Serve, run_binserve

from support import APPS, config_error

APP = str(APPS / "logging_app.py")


@pytest.mark.parametrize(
    ("value", "kind", "where"),
    [
        ("file:/var/log/app.log", "file", "/var/log/app.log"),
        ("mylog file:/var/log/app.log", "file", "/var/log/app.log"),
        ("stdio", "stdio", ""),
        ("syslog", "syslog", ("binserve", FACILITIES["user"])),
        ("syslog:myapp", "syslog", ("myapp", FACILITIES["user"])),
        ("syslog:myapp,local6", "syslog", ("myapp", FACILITIES["local6"])),
    ],
)
def test_logger_forms(value: str, kind: str, where: object) -> None:
    for option in ("logger", "req-logger"):
        spec = getattr(load([f"--{option}", value], {}), option.replace("-", "_"))
        assert spec.kind == kind
        assert (spec.path if kind != "syslog" else (spec.tag, spec.facility)) == (where or "")


@pytest.mark.parametrize("value", ["files:/x", "file:", "unknown", "zeromq:tcp://x", "stdio:x", ""])
@pytest.mark.parametrize("option", ["logger", "req-logger"])
def test_a_bad_logger_names_the_option_and_the_forms(option: str, value: str) -> None:
    message = config_error([f"--{option}", value])
    assert message == f"--{option}: option '{option}': expected {LOGGER_FORMS}, got {value!r}"


def test_an_unknown_syslog_facility_is_named() -> None:
    message = config_error(["--logger", "syslog:app,local9"])
    assert message.startswith("--logger: option 'logger': unknown syslog facility 'local9' (one of kern,")


def test_logto_and_logger_together_are_refused() -> None:
    message = config_error(["--logto", "a.log", "--logger", "file:b.log"])
    assert message == (
        "--logto: option 'logto' cannot be used with option 'logger' (--logger): "
        "give only one (logto FILE is logger = file:FILE)"
    )


def test_log_date_formats(in_tmp: Path) -> None:
    assert load([], {}).log_date == DEFAULT_DATE
    assert load(["--log-date", "%H:%M"], {}).log_date == "%H:%M"
    Path("bare.ini").write_text("[uwsgi]\nlogdate\n")
    assert load(["--ini", "bare.ini"], {}).log_date == DEFAULT_DATE
    assert load(["--log-date", "false"], {}).log_date == ""
    Path("app.ini").write_text("[uwsgi]\nlog-date = %%d/%%m %%H:%%M\n")  # as in uWSGI, % is doubled in ini
    assert load(["--ini", "app.ini"], {}).log_date == "%d/%m %H:%M"
    assert config_error(["--log-date", "soon"]).startswith(
        "--log-date: option 'log-date': expected a strftime"
    )


@pytest.mark.process
@pytest.mark.parametrize("option", ["--logger", "--req-logger"])
def test_a_log_file_that_is_a_link_or_a_directory_stops_the_start(tmp_path: Path, option: str) -> None:
    link = tmp_path / "app.log"
    link.symlink_to(tmp_path / "elsewhere.log")
    for target, why in ((link, "is a symbolic link: refused"), (tmp_path, "Is a directory")):
        done = run_binserve(
            "--socket", str(tmp_path / "s.sock"), "--wsgi-file", APP, option, f"file:{target}"
        )
        assert done.returncode == 2
        assert done.stderr.startswith(f"binserve: {option[2:]} file:{target}: {why}"), done.stderr
        assert done.stderr.count("\n") == 1
    assert not (tmp_path / "elsewhere.log").exists() and not (tmp_path / "s.sock").exists()


def test_log_date_sets_the_date_of_binserves_lines(serve: Serve, tmp_path: Path) -> None:
    dated = serve("--wsgi-file", APP, "--log-date", "%d/%m/%Y", socket_path=tmp_path / "a.sock")
    undated = serve("--wsgi-file", APP, "--log-date", "false", socket_path=tmp_path / "b.sock")
    for server, shape in (
        (dated, r"\d\d/\d\d/\d{4} \[binserve pid \d+\] "),
        (undated, r"\[binserve pid \d+\] "),
    ):
        lines = server.log().splitlines()
        assert lines and all(re.match(shape, line) for line in lines), lines
    assert os.path.exists(tmp_path / "a.sock")

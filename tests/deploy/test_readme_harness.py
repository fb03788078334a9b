"""binserve.testing as a user meets it: the README's example, run as its own pytest session."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from binserve.testing import request_vars

from support import REPO

SECTION = "## Testing your app: binserve.testing"


def readme_files() -> dict[str, str]:
    """The README section's code blocks by file name (each block's first line is ``# NAME``)."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index(SECTION) :].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n# (\S+)\n(.*?)```", section, re.S)
    return {name: body for name, body in blocks}


@pytest.mark.nginx
def test_the_readme_example_passes(tmp_path: Path) -> None:
    files = readme_files()
    assert set(files) == {"conftest.py", "hello.py", "test_hello.py"}, files
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout, run.stdout


def test_request_vars_are_what_nginx_sends() -> None:
    """The uwsgi_params names, a query split off the path, headers as HTTP_* and extras last."""
    pairs = request_vars(
        "/a%20b?x=1", "POST", {"Content-Type": "text/plain", "X-Id": "7"}, b"abc", REMOTE_PORT="9"
    )
    assert pairs["PATH_INFO"] == "/a b" and pairs["REQUEST_URI"] == "/a%20b?x=1"
    assert (pairs["QUERY_STRING"], pairs["REQUEST_METHOD"]) == ("x=1", "POST")
    assert (pairs["CONTENT_TYPE"], pairs["CONTENT_LENGTH"]) == ("text/plain", "3")
    assert (pairs["HTTP_X_ID"], pairs["REMOTE_PORT"]) == ("7", "9")
    params = (REPO / "nginx_conf" / "uwsgi_params").read_text()
    sent = re.findall(r"^uwsgi_param\s+(\S+)", params, re.M)
    assert [name for name in sent if name != "HTTPS"] == list(pairs)[: len(sent) - 1]

"""Every file in nginx_conf/ is loaded by real nginx.

Each ``*.conf.template`` is filled with ``string.Template`` (tmp paths, a free port), included in
a minimal ``http {}`` wrapper and checked with ``nginx -t``; then it is served in front of a running
binserve and asked real requests. ``uwsgi_params`` is loaded through the templates' ``include``.
A file added to nginx_conf/ that no test here loads fails ``test_every_file_is_loaded``.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import string
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from binserve.config import load
from binserve.testing import Nginx, Serve, Server, free_port, nginx_conf, nginx_executable, wait_for

from support import APPS, REPO, AppFile, logged

CONF_DIR = REPO / "nginx_conf"
TEMPLATES = sorted(CONF_DIR.glob("*.conf.template"))
INCLUDED = {"uwsgi_params"}  # loaded by nginx through the templates' include, checked below
# systemd units: checked by test_emperor_unit, and binserve.service/.socket by tests/deploy/test_systemd.py
UNITS = {"binserve-emperor.service", "binserve.service", "binserve.socket"}
DOCS = {"README.md"}
PACKAGE = {"__init__.py", "__pycache__"}  # what makes the folder installable as binserve.nginx_conf
PLACEHOLDER = re.compile(r"\$\{(\w+)\}")

ENVIRON_APP = (APPS / "nginx_conf_environ.py").read_text()


def placeholders(tmp_path: Path, port: int, app_socket: Path) -> dict[str, str]:
    """A value for every placeholder a template may use."""
    return {
        "LISTEN": f"127.0.0.1:{port}",
        "SERVER_NAME": "binserve.test",
        "STATIC_ROOT": str(tmp_path / "static"),
        "APP_SOCKET": str(app_socket),
        "APP2_SOCKET": str(app_socket.with_name("app2.sock")),
        "UWSGI_PARAMS": str(CONF_DIR / "uwsgi_params"),
        "PREFIX": "/app",
    }


def render(template: Path, values: dict[str, str]) -> str:
    """The template with its placeholders filled; an unknown placeholder fails the test."""
    text = template.read_text()
    unknown = set(PLACEHOLDER.findall(text)) - set(values)
    assert not unknown, f"{template.name} uses placeholders no test fills: {sorted(unknown)}"
    return string.Template(text).safe_substitute(values)


def write_config(directory: Path, site: str) -> Path:
    """nginx.conf in ``directory``: the wrapper including ``site`` (written beside it)."""
    directory.mkdir(parents=True, exist_ok=True)
    site_path = directory / "site.conf"
    site_path.write_text(site)
    conf = directory / "nginx.conf"
    conf.write_text(nginx_conf(directory, f"default_type application/octet-stream;\n  include {site_path};"))
    return conf


def nginx_test(conf: Path) -> tuple[int, str]:
    """``nginx -t`` on ``conf``: the exit code and everything it said."""
    done = subprocess.run(
        [nginx_executable(), "-t", "-c", str(conf), "-p", str(conf.parent)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    error_log = conf.parent / "nginx_error.log"
    said = done.stdout + done.stderr + (error_log.read_text() if error_log.exists() else "")
    return done.returncode, said


@pytest.fixture
def site_nginx(tmp_path: Path) -> Iterator[Callable[[Path, Server], Nginx]]:
    """Serve a template in front of a binserve: ``site_nginx(template, server)``; stopped after the test."""
    started: list[Nginx] = []

    def start(template: Path, server: Server) -> Nginx:
        port = free_port()
        site = render(template, placeholders(tmp_path, port, server.socket))
        conf = write_config(tmp_path / f"nginx-{template.name}", site)
        code, said = nginx_test(conf)
        assert code == 0, said
        front = Nginx(conf, port)
        started.append(front)
        return front

    yield start
    for front in started:
        front.stop()


# -- every file is loaded ----------------------------------------------------------------------
def test_every_file_is_loaded() -> None:
    """Each file in nginx_conf/ is a template (nginx -t'd and served below), included by them, or docs."""
    unloaded = [
        path.name
        for path in sorted(CONF_DIR.iterdir())
        if path not in TEMPLATES and path.name not in INCLUDED | UNITS | DOCS | PACKAGE
    ]
    assert not unloaded, (
        f"no test loads nginx_conf/{', nginx_conf/'.join(unloaded)}: name a site template *.conf.template "
        "(tests/test_nginx_conf.py then checks it with nginx -t), or load it from a test and list it there"
    )
    assert TEMPLATES, "nginx_conf/ has no *.conf.template"
    for name in INCLUDED:
        directive = f"include ${{{name.upper()}}};"
        includers = [t.name for t in TEMPLATES if directive in t.read_text()]
        assert includers == [t.name for t in TEMPLATES], (
            f"every template must load nginx_conf/{name} with {directive!r}; only {includers} do"
        )
    readme = (CONF_DIR / "README.md").read_text()
    undocumented = [
        p.name for p in CONF_DIR.iterdir() if p.name not in DOCS | PACKAGE and f"`{p.name}`" not in readme
    ]
    assert not undocumented, f"nginx_conf/README.md does not describe {undocumented}"


@pytest.mark.nginx
@pytest.mark.parametrize("template", TEMPLATES, ids=[t.name for t in TEMPLATES])
def test_nginx_accepts_template(template: Path, tmp_path: Path) -> None:
    conf = write_config(
        tmp_path / "conf", render(template, placeholders(tmp_path, free_port(), tmp_path / "a.sock"))
    )
    code, said = nginx_test(conf)
    assert code == 0 and "test is successful" in said, said
    complaints = [line for line in said.splitlines() if re.search(r"\[(warn|error|crit|alert|emerg)\]", line)]
    assert not complaints, "\n".join(complaints)


@pytest.mark.nginx
def test_nginx_t_rejects_a_broken_site(tmp_path: Path) -> None:
    """The check above can fail: a site nginx cannot load is refused, naming the problem."""
    broken = f"server {{ listen 127.0.0.1:{free_port()}; location / {{ uwsgi_pass; }} }}"
    code, said = nginx_test(write_config(tmp_path / "conf", broken))
    assert code != 0 and "invalid number of arguments" in said, said


# -- the templates serve -----------------------------------------------------------------------
@pytest.mark.nginx
def test_site_serves_static_files_from_nginx_and_the_rest_from_binserve(
    serve: Serve, site_nginx: Callable[[Path, Server], Nginx], tmp_path: Path
) -> None:
    static = tmp_path / "static"
    static.mkdir()
    (static / "x.txt").write_text("static file content\n")
    (tmp_path / "secret.txt").write_text("outside the static root\n")
    server = serve("--module", "binserve.demo")
    front = site_nginx(CONF_DIR / "site.conf.template", server)

    status, _, body = front.request("GET", "/static/x.txt")
    assert (status, body) == (200, b"static file content\n")
    status, _, body = front.request("GET", "/static/missing.txt")
    assert status == 404 and b"binserve" not in body, body  # nginx's 404: not passed on to the app
    status, _, body = front.request("GET", "/static../secret.txt")
    assert b"outside the static root" not in body, (status, body)

    status, _, body = front.request("GET", "/")
    assert status == 200 and body.startswith(b"Hello from binserve!"), (status, body)
    # client_max_body_size is raised from nginx's default 1m, and the body reaches the app whole.
    payload = os.urandom(2 * 1024 * 1024)
    status, _, body = front.request("POST", "/echo", body=payload)
    assert status == 200 and body == payload, (status, len(body))

    wait_for(lambda: logged(server.log(), "POST", "/echo", 200), 5, "binserve to log the POST")
    log = server.log()
    assert logged(log, "GET", "/", 200)
    assert "/static/" not in log, f"static requests reached binserve:\n{log}"


@pytest.mark.nginx
def test_mounted_site_strips_the_prefix(
    serve: Serve, site_nginx: Callable[[Path, Server], Nginx], app_file: AppFile
) -> None:
    server = serve("--wsgi-file", str(app_file(ENVIRON_APP)))
    front = site_nginx(CONF_DIR / "mounted.conf.template", server)

    assert front.request("GET", "/app/hello")[::2] == (200, b"/app|/hello")
    assert front.request("GET", "/app/")[::2] == (200, b"/app|/")
    assert front.request("GET", "/app/a/b?x=1")[::2] == (200, b"/app|/a/b")
    status, headers, _ = front.request("GET", "/app")
    assert status == 301 and headers["location"].endswith("/app/"), (status, headers)
    for outside in ("/appendix", "/", "/other/app/x"):
        status, _, body = front.request("GET", outside)
        assert status == 404 and b"|" not in body, (outside, status, body)


MOUNT_APP = (APPS / "nginx_conf_mount.py").read_text()


@pytest.mark.nginx
def test_two_apps_site_routes_each_prefix_to_its_own_socket(
    serve: Serve, site_nginx: Callable[[Path, Server], Nginx], tmp_path: Path
) -> None:
    app = tmp_path / "mount_app.py"
    app.write_text(MOUNT_APP.replace("environ['APP']", "__import__('os').environ['APP']"))
    blog = serve("--wsgi-file", str(app), "--env", "APP=blog")
    shop = serve("--wsgi-file", str(app), "--env", "APP=shop", socket_path=blog.socket.with_name("app2.sock"))
    assert shop.socket.exists()
    front = site_nginx(CONF_DIR / "two-apps.conf.template", blog)
    assert front.request("GET", "/blog/post/1")[::2] == (200, b"blog|/blog|/post/1")
    assert front.request("GET", "/shop/cart")[::2] == (200, b"shop|/shop|/cart")
    assert front.request("GET", "/blog")[0] == 301
    assert front.request("GET", "/other")[0] == 404


def test_emperor_unit_runs_the_emperor_and_stops_it_with_sigterm() -> None:
    """The systemd unit: a notify service whose ExecStart is a valid binserve emperor command line."""
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(CONF_DIR / "binserve-emperor.service")
    service = unit["Service"]
    assert service["Type"] == "notify" and service["KillSignal"] == "SIGTERM"
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/binserve") and "--emperor" in argv
    config = load(argv[1:], {})
    assert config.emperor == ["/etc/binserve/vassals"]
    assert int(service["TimeoutStopSec"]) > config.worker_reload_mercy

"""The PEP 3333 environ of a request, built from the uwsgi vars nginx sent.

nginx's vars are already CGI variables: this adds the ``wsgi.*`` keys every request shares,
joins repeated headers, and fills in what CGI requires that nginx may leave out. Log lines
name a request by its environ too.
"""

from __future__ import annotations

import sys
from typing import Any

from .body import EmptyInput, Input
from .protocol import Head
from .protocol.modifiers import WSGI_MANAGE_PATH_INFO
from .requestlog import clean
from .response import FileWrapper


def make_base_environ(multiprocess: bool, multithread: bool = False) -> dict[str, Any]:
    """The keys every request's environ shares."""
    return {
        "wsgi.version": (1, 0),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": multithread,
        "wsgi.multiprocess": multiprocess,
        "wsgi.run_once": False,
        "wsgi.file_wrapper": FileWrapper,
        # Reading wsgi.input returns b"" at the end of the body, so frameworks may read to EOF
        # (werkzeug then handles uploads that arrived chunked).
        "wsgi.input_terminated": True,
    }


def merge_vars(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Vars as a dict: repeated headers joined as nginx >= 1.23 does (``", "``, ``"; "`` for cookies).

    Only ``HTTP_*`` vars are headers; a repeated CGI var comes from a location that overrides a
    ``uwsgi_param`` of the included file, and there the last one wins, as in uWSGI.
    """
    env: dict[str, str] = {}
    for key, value in pairs:
        if key in env and key.startswith("HTTP_"):
            env[key] = env[key] + ("; " if key == "HTTP_COOKIE" else ", ") + value
        else:
            env[key] = value
    return env


def build_environ(head: Head, base: dict[str, Any], wsgi_input: Input | EmptyInput) -> dict[str, Any]:
    """The PEP 3333 environ for a request.

    nginx's ``HTTP_CONTENT_TYPE``/``HTTP_CONTENT_LENGTH`` copies are dropped (CGI forbids them),
    as is ``HTTP_TRANSFER_ENCODING``: nginx has de-chunked the body and CONTENT_LENGTH frames it.
    uWSGI's magic vars (UWSGI_SCRIPT, UWSGI_FILE, UWSGI_SETENV, ...) are plain strings here:
    binserve never acts on them, since anyone who can reach the socket could set them.
    """
    env: dict[str, Any] = merge_vars(head.vars) if head.duplicates else head.fields
    env.update(base)
    env["wsgi.input"] = wsgi_input
    # ``in`` before ``del``: most requests have none of these, and a test is cheaper than pop().
    if "HTTP_CONTENT_TYPE" in env:
        del env["HTTP_CONTENT_TYPE"]
    if "HTTP_CONTENT_LENGTH" in env:
        del env["HTTP_CONTENT_LENGTH"]
    if "HTTP_TRANSFER_ENCODING" in env:
        del env["HTTP_TRANSFER_ENCODING"]
    if "CONTENT_LENGTH" in env and not env["CONTENT_LENGTH"]:
        del env["CONTENT_LENGTH"]
    if "SCRIPT_NAME" not in env:
        env["SCRIPT_NAME"] = ""
    elif head.modifier1 == WSGI_MANAGE_PATH_INFO and env["SCRIPT_NAME"]:
        script_name = env["SCRIPT_NAME"].rstrip("/")
        path = env.get("PATH_INFO", "")
        if path.startswith(script_name) and (len(path) == len(script_name) or path[len(script_name)] == "/"):
            env["PATH_INFO"] = path[len(script_name) :]
        env["SCRIPT_NAME"] = script_name
    if "PATH_INFO" not in env:
        env["PATH_INFO"] = ""
    if "QUERY_STRING" not in env:
        env["QUERY_STRING"] = ""
    if "UWSGI_SCHEME" in env and env["UWSGI_SCHEME"]:
        env["wsgi.url_scheme"] = env["UWSGI_SCHEME"].lower()
    elif "HTTPS" in env and env["HTTPS"].lower() in ("on", "1"):
        env["wsgi.url_scheme"] = "https"
    else:
        env["wsgi.url_scheme"] = "http"
    if not env.get("SERVER_NAME"):
        host = env.get("HTTP_HOST", "")
        env["SERVER_NAME"] = (
            host.rsplit(":", 1)[0] if host and not host.endswith("]") else host or "localhost"
        )
    if "SERVER_PORT" not in env:
        env["SERVER_PORT"] = "443" if env["wsgi.url_scheme"] == "https" else "80"
    return env


def request_line(environ: dict[str, Any]) -> str:
    """``METHOD URI`` of a request, for log lines (UTF-8 read back, control characters escaped)."""
    uri = environ.get("REQUEST_URI") or environ.get("PATH_INFO", "")
    return clean(f"{environ.get('REQUEST_METHOD', '-')} {uri}")

"""Served by tests/requests/test_capture_vectors.py (APP)."""

import hashlib
import json
import os
import warnings
import wsgiref.validate

START_CWD = os.getcwd()


def read_body(inp, mode):
    if mode == "read":
        return inp.read()
    if mode == "chunks":
        return b"".join(iter(lambda: inp.read(8191), b""))
    if mode == "lines":
        return b"".join(iter(inp.readline, b""))
    if mode == "iter":
        return b"".join(inp)
    if mode == "readlines":
        return b"".join(inp.readlines())
    raise ValueError(mode)


def application(environ, start_response):
    inp = environ["wsgi.input"]
    body = read_body(inp, environ.get("HTTP_X_READ", "read"))
    after_end = [inp.read(), inp.read(7), inp.readline(), inp.readlines(), list(inp)]
    problems = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            wsgiref.validate.check_environ(environ)
        except Exception as exc:  # AssertionError, or int() failing on a bad CONTENT_LENGTH
            problems.append(repr(exc))
    problems += [str(w.message) for w in caught]
    try:
        environ["wsgi.errors"].write("")
        environ["wsgi.errors"].flush()
        errors_writable = True
    except Exception:
        errors_writable = False
    doc = {
        "app": "environ-dump",
        "environ": {k: v for k, v in environ.items() if isinstance(v, str)},
        "keys": sorted(environ),
        "wsgi": {
            "version": list(environ["wsgi.version"]),
            "version_is_tuple": type(environ["wsgi.version"]) is tuple,
            "multiprocess": environ["wsgi.multiprocess"],
            "multithread": environ["wsgi.multithread"],
            "run_once": environ["wsgi.run_once"],
            "input_terminated": environ.get("wsgi.input_terminated"),
            "errors_writable": errors_writable,
        },
        "body": {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()},
        "after_end_empty": after_end == [b"", b"", b"", [], []],
        "validate": problems,
        "process": {
            "pid": os.getpid(),
            "cwd": os.getcwd(),
            "start_cwd": START_CWD,
            "magic_env": os.environ.get("BINSERVE_TEST_MAGIC"),
        },
    }
    payload = json.dumps(doc).encode("ascii")
    headers = [("Content-Type", "application/json")]
    if environ["REQUEST_METHOD"] == "HEAD":
        headers.append(("X-Environ", payload.decode("ascii")))
    start_response("200 OK", headers)
    return [payload]

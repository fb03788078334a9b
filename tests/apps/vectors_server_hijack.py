"""Modules a request could try to load through uWSGI's magic vars: importing either leaves a mark."""

import pathlib

pathlib.Path(__file__).with_name("HIJACKED-" + pathlib.Path(__file__).stem).write_text("imported")


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hijacked"]

"""Served by tests/requests/test_drop_in_responses.py: responses real apps send."""


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        if environ["REQUEST_METHOD"] == "HEAD":
            return iter(())  # as frameworks do: no body for HEAD, and no length known
        return iter([b"chunk 1\n", b"chunk 2\n"])
    if path == "/noreason":
        start_response("200", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]
    if path == "/hop":
        start_response(
            "200 OK",
            [("Content-Type", "text/plain"), ("Connection", "close"), ("Keep-Alive", "timeout=5")],
        )
        return [b"hop"]
    if path == "/emoji":
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Mood", "happy \U0001f600")])
        return [b"never sent"]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found"]

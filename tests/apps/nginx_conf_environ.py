"""Served by tests/deploy/test_nginx_conf.py (ENVIRON_APP)."""


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{environ['SCRIPT_NAME']}|{environ['PATH_INFO']}".encode()]

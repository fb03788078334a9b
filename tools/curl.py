"""``binserve-curl SOCKET PATH``: send one request over the uwsgi protocol and print the response.

For debugging a server without nginx in front: SOCKET is a unix path or HOST:PORT.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from binserve.protocol import PING, PONG, encode_request
from binserve.testing.client import exchange, request_vars


def parse_headers(headers: Sequence[str]) -> list[tuple[str, str]]:
    """``Name: value`` arguments as (name, value) pairs."""
    pairs = []
    for header in headers:
        name, sep, value = header.partition(":")
        if not sep:
            raise SystemExit(f"binserve-curl: header {header!r} is not 'Name: value'")
        pairs.append((name, value))
    return pairs


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``binserve-curl``."""
    parser = argparse.ArgumentParser(prog="binserve-curl", description=__doc__.splitlines()[0])
    parser.add_argument("socket", help="unix socket path or HOST:PORT")
    parser.add_argument("path", nargs="?", default="/", help="request path with query (default /)")
    parser.add_argument("-X", "--request", dest="method", help="method (default GET, or POST with -d)")
    parser.add_argument("-d", "--data", help="request body; @FILE reads it from a file")
    parser.add_argument("-H", "--header", action="append", default=[], help="'Name: value' (repeatable)")
    parser.add_argument("--host", default="localhost", help="HTTP_HOST and SERVER_NAME to send")
    parser.add_argument("-i", "--include", action="store_true", help="print the status line and headers too")
    parser.add_argument("--ping", action="store_true", help="send a uwsgi ping; exit 0 if it is answered")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
    args = parser.parse_args(argv)
    try:
        if args.ping:
            answer = exchange(args.socket, PING, args.timeout)
            print("pong" if answer[:4] == PONG else f"unexpected answer {answer[:16]!r}")
            return 0 if answer[:4] == PONG else 1
        body = b""
        if args.data is not None:
            if args.data.startswith("@"):
                with open(args.data[1:], "rb") as handle:
                    body = handle.read()
            else:
                body = args.data.encode()
        method = args.method or ("POST" if args.data is not None else "GET")
        vars_ = request_vars(args.path, method, parse_headers(args.header), body, host=args.host)
        if body and not vars_["CONTENT_TYPE"]:
            vars_["CONTENT_TYPE"] = "application/x-www-form-urlencoded"
        answer = exchange(args.socket, encode_request(vars_, body), args.timeout)
    except OSError as exc:
        print(f"binserve-curl: {args.socket}: {exc}", file=sys.stderr)
        return 1
    head, sep, payload = answer.partition(b"\r\n\r\n")
    if not sep:
        print(
            f"binserve-curl: no HTTP response head in {len(answer)} bytes: {answer[:80]!r}", file=sys.stderr
        )
        return 1
    if args.include:
        sys.stdout.buffer.write(head + sep)
    sys.stdout.buffer.write(payload)
    sys.stdout.flush()
    status = head.split(b" ", 2)[1] if head.count(b" ") else b"0"
    return 0 if status[:1] in (b"1", b"2", b"3") else 22


if __name__ == "__main__":
    sys.exit(main())

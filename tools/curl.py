"""``binserve-curl SOCKET PATH``: send one request over the uwsgi protocol and print the response.

For debugging a server without nginx in front: SOCKET is a unix path or HOST:PORT.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

from binserve.protocol import PING, PONG, encode_request
from binserve.sockets import parse_tcp


def connect(address: str, timeout: float) -> socket.socket:
    """A connected socket to a unix path or HOST:PORT."""
    tcp = parse_tcp(address)
    if tcp:
        host = "127.0.0.1" if tcp[0] == "0.0.0.0" else tcp[0]
        return socket.create_connection((host, tcp[1]), timeout=timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(address)
    return sock


def build_vars(
    path: str, method: str, headers: Sequence[str], body: bytes, host: str
) -> list[tuple[str, str]]:
    """The vars nginx's uwsgi_params would send for this request."""
    parts = urlsplit(path)
    pairs = [
        ("QUERY_STRING", parts.query),
        ("REQUEST_METHOD", method),
        ("CONTENT_TYPE", ""),
        ("CONTENT_LENGTH", str(len(body)) if body else ""),
        ("REQUEST_URI", path),
        ("PATH_INFO", unquote(parts.path or "/", "latin-1")),
        ("DOCUMENT_ROOT", "/"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_SCHEME", "http"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", "0"),
        ("SERVER_PORT", "80"),
        ("SERVER_NAME", host),
        ("HTTP_HOST", host),
    ]
    for header in headers:
        name, sep, value = header.partition(":")
        if not sep:
            raise SystemExit(f"binserve-curl: header {header!r} is not 'Name: value'")
        key = name.strip().upper().replace("-", "_")
        value = value.strip()
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            pairs = [(k, value if k == key else v) for k, v in pairs]
        else:
            pairs.append((f"HTTP_{key}", value))
    if body and not any(k == "CONTENT_TYPE" and v for k, v in pairs):
        pairs = [(k, "application/x-www-form-urlencoded" if k == "CONTENT_TYPE" else v) for k, v in pairs]
    return pairs


def request(address: str, packet: bytes, timeout: float = 10.0) -> bytes:
    """Send ``packet`` and return everything the server answered until it closed."""
    with connect(address, timeout) as sock:
        sock.sendall(packet)
        chunks: list[bytes] = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


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
            answer = request(args.socket, PING, args.timeout)
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
        packet = encode_request(build_vars(args.path, method, args.header, body, args.host), body)
        answer = request(args.socket, packet, args.timeout)
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

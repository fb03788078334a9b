"""Listening sockets: binding, inheriting them across a reload, and removing them on exit."""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Callable

from .wsgi import timeval

INHERIT_ENV = "_BINSERVE_LISTEN_FDS"


class SocketError(Exception):
    """A socket could not be bound; the message names it and says why."""


class Listener:
    """One listening uwsgi socket and what the worker needs to know about it."""

    def __init__(self, spec: str, sock: socket.socket) -> None:
        self.spec = spec
        self.sock = sock
        self.family = sock.family
        self.is_unix = sock.family == socket.AF_UNIX
        self.name = spec if self.is_unix else "{}:{}".format(*sock.getsockname()[:2])
        # For TCP sockets: whether a peer address may send requests (uwsgi-allow-from).
        self.allow: Callable[[str], bool] | None = None

    def fileno(self) -> int:
        """The socket's descriptor."""
        return self.sock.fileno()

    def close(self) -> None:
        """Close this process's copy of the socket."""
        self.sock.close()

    def remove_file(self) -> None:
        """Unlink a unix socket's file (vacuum)."""
        if self.is_unix:
            try:
                os.unlink(self.spec)
            except FileNotFoundError:
                pass


def parse_tcp(spec: str) -> tuple[str, int] | None:
    """``(host, port)`` for a ``HOST:PORT`` socket spec, or None for a unix socket path."""
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit() or "/" in spec:
        return None
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _clear_stale_unix(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketError(f"socket {path}: the path exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # left by a server that died without cleaning up
        return
    except OSError as exc:
        raise SocketError(f"socket {path}: cannot check the existing socket: {exc.strerror}") from None
    finally:
        probe.close()
    raise SocketError(f"socket {path}: another server is already listening there")


def bind(spec: str, backlog: int, chmod: int | None, timeout: float) -> Listener:
    """Bind and listen on ``spec`` (a unix path or HOST:PORT)."""
    tcp = parse_tcp(spec)
    if tcp:
        family = socket.AF_INET6 if ":" in tcp[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
    else:
        _clear_stale_unix(spec)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if tcp:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            set_timeouts(sock, timeout)
            sock.bind(tcp)
        else:
            sock.bind(spec)
            if chmod is not None:
                os.chmod(spec, chmod)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason += " (another server is listening there)"
        raise SocketError(f"socket {spec}: cannot bind: {reason}") from None
    sock.setblocking(False)
    return Listener(spec, sock)


def set_timeouts(sock: socket.socket, timeout: float) -> None:
    """Give a TCP listener socket-timeout on reads and writes; accepted sockets inherit it."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(timeout))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval(timeout))


def inherited() -> dict[str, Listener]:
    """Listening sockets handed over by the previous master image on a reload, by spec."""
    found = {}
    for item in filter(None, os.environ.pop(INHERIT_ENV, "").split(",")):
        spec, _, fd = item.rpartition("=")
        sock = socket.socket(fileno=int(fd))
        os.set_inheritable(sock.fileno(), False)
        sock.setblocking(False)
        found[spec] = Listener(spec, sock)
    return found


def hand_over(listeners: list[Listener]) -> None:
    """Mark the sockets inheritable and describe them in the environment for the next image."""
    for listener in listeners:
        os.set_inheritable(listener.fileno(), True)
    os.environ[INHERIT_ENV] = ",".join(f"{lst.spec}={lst.fileno()}" for lst in listeners)


def open_all(specs: list[str], backlog: int, chmod: int | None, timeout: float) -> list[Listener]:
    """The listeners for ``specs``: inherited ones reused, the rest bound; stale inherited ones closed."""
    previous = inherited()
    listeners: list[Listener] = []
    try:
        for spec in specs:
            listener = previous.pop(spec, None)
            if listener is None:
                listener = bind(spec, backlog, chmod, timeout)
            elif not listener.is_unix:
                set_timeouts(listener.sock, timeout)  # the new image's socket-timeout, not the old one's
            listeners.append(listener)
    except SocketError:
        remove_files(listeners, None, vacuum=True)
        raise
    finally:
        remove_files(list(previous.values()), None, vacuum=True)
    return listeners


def remove_files(listeners: list[Listener], pidfile: str | None, vacuum: bool) -> None:
    """Close ``listeners``; with ``vacuum``, also unlink their unix socket files and ``pidfile``."""
    for listener in listeners:
        listener.close()
        if vacuum:
            listener.remove_file()
    if vacuum and pidfile:
        try:
            os.unlink(pidfile)
        except FileNotFoundError:
            pass

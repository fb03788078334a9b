"""systemd socket activation: listening sockets passed by systemd instead of bound here.

systemd (or any launcher speaking its protocol) binds the sockets of a ``.socket`` unit, passes
them as descriptors 3, 4, ... and says so in ``LISTEN_FDS`` (how many), ``LISTEN_PID`` (for
which process: a variable inherited by a child is not for it) and ``LISTEN_FDNAMES`` (their
names, ``:``-separated). The variables are removed as soon as they are read, so the workers,
the app and its children never take the sockets for their own.

A descriptor that is not a listening stream socket (unix, IPv4 or IPv6) is a startup error:
the ``.socket`` unit and binserve disagree, and serving anyway would hide it. How the sockets
are matched to the ``socket`` options is :func:`binserve.sockets.open_all`'s part.
"""

from __future__ import annotations

import os
import socket
import stat

from .log import printable
from .safefile import kind
from .sockets import Listener, SocketError

LISTEN_FDS_START = 3  # systemd's first passed descriptor
MAX_PASSED = 1024  # more than a .socket unit sensibly holds; a larger LISTEN_FDS is a mistake
FAMILIES = (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6)


def take_passed() -> list[Listener]:
    """The sockets systemd passed to this process (none without activation); the variables are
    removed from the environment either way. Raises SocketError for one binserve cannot serve on."""
    pid = os.environ.pop("LISTEN_PID", None)
    count = os.environ.pop("LISTEN_FDS", None)
    names = os.environ.pop("LISTEN_FDNAMES", None)
    if pid is None or count is None:
        return []
    if not _decimal(pid) or int(pid) != os.getpid():
        return []  # inherited from a parent that was activated: the sockets were its own
    if not _decimal(count) or not 0 <= int(count) <= MAX_PASSED:
        raise SocketError(
            f"socket activation: LISTEN_FDS={count!r} is not a number of sockets (0..{MAX_PASSED})"
        )
    fds = range(LISTEN_FDS_START, LISTEN_FDS_START + int(count))
    labels = names.split(":") if names else [""] * len(fds)  # empty: unnamed, not one empty name
    if len(labels) != len(fds):
        raise SocketError(
            f"socket activation: LISTEN_FDNAMES names {len(labels)} sockets, LISTEN_FDS passes {len(fds)}"
        )
    listeners: list[Listener] = []
    try:
        for fd, label in zip(fds, labels, strict=True):
            listeners.append(_listener(fd, label))
    except SocketError:
        for listener in listeners:
            listener.close()
        raise
    return listeners


def _decimal(text: str) -> bool:
    """ASCII digits only: str.isdigit also takes '²', which int() refuses."""
    return text.isascii() and text.isdigit()


def _listener(fd: int, label: str) -> Listener:
    what = f"socket activation: descriptor {fd}" + (f" ({printable(label)})" if label else "")
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise SocketError(f"{what}: {exc.strerror}: LISTEN_FDS counts more descriptors than were passed")
    if not stat.S_ISSOCK(mode):
        raise SocketError(f"{what} is {kind(mode)}, not a socket")
    sock = socket.socket(fileno=fd)
    try:
        if sock.family not in FAMILIES:
            raise SocketError(f"{what} is a {sock.family.name} socket: binserve serves unix, IPv4 and IPv6")
        if sock.type != socket.SOCK_STREAM:
            raise SocketError(
                f"{what} is a {sock.type.name} socket: uwsgi needs a stream socket (ListenStream= in the "
                ".socket unit)"
            )
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise SocketError(
                f"{what} is not a listening socket (a connection, as Accept=yes passes: binserve needs "
                "Accept=no in the .socket unit)"
            )
        spec = _spec(sock)
    except SocketError:
        sock.detach()  # closed by the caller's exit; the descriptor stays systemd's to judge
        raise
    os.set_inheritable(fd, False)
    sock.setblocking(False)
    listener = Listener(spec, sock, bound_here=False)
    listener.activated = True
    return listener


def _spec(sock: socket.socket) -> str:
    """The socket's address as a ``socket`` option would name it: a path, ``@name`` or HOST:PORT."""
    address = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        if isinstance(address, bytes):  # Linux's abstract namespace: a leading NUL
            return "@" + address[1:].decode(errors="surrogateescape")
        if not address:
            raise SocketError("socket activation: a passed unix socket has no address")
        return str(address)
    host, port = address[:2]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"

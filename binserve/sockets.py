"""Listening sockets: binding, inheriting them across a reload, and removing them on exit.

TCP uwsgi sockets answer only the peers in uwsgi-allow-from (loopback by default): the uwsgi
protocol has no authentication, so whoever reaches the port can set any REMOTE_ADDR, HTTPS or
SCRIPT_NAME the app will trust.

``@name`` is a unix socket in Linux's abstract namespace, as in uWSGI: no file, so nothing to
clear, chmod, chown or vacuum; it goes away with the last descriptor on it.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import stat
from collections.abc import Callable, Sequence

from .log import log
from .safefile import read_bounded
from .wsgi import timeval

INHERIT_ENV = "_BINSERVE_LISTEN_FDS"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
# Peers are unbounded (any IPv6 address can connect and be refused), the verdict cache is not.
MAX_CACHED_PEERS = 4096


class SocketError(Exception):
    """A socket could not be bound; the message names it and says why."""


class Listener:
    """One listening uwsgi socket and what the worker needs to know about it."""

    def __init__(self, spec: str, sock: socket.socket, bound_here: bool = True) -> None:
        self.spec = spec
        self.sock = sock
        self.family = sock.family
        self.is_unix = sock.family == socket.AF_UNIX
        self.is_abstract = self.is_unix and is_abstract(spec)
        self.name = spec if self.is_unix else "{}:{}".format(*sock.getsockname()[:2])
        # False for a socket inherited from the previous image on a reload: its file was set up then.
        self.bound_here = bound_here
        # For TCP sockets: whether a peer address may send requests (uwsgi-allow-from).
        self.allow: Callable[[str], bool] | None = None

    def fileno(self) -> int:
        """The socket's descriptor."""
        return self.sock.fileno()

    def close(self) -> None:
        """Close this process's copy of the socket."""
        self.sock.close()

    def remove_file(self) -> None:
        """Unlink a unix socket's file (vacuum); an abstract socket has none."""
        if self.is_unix and not self.is_abstract:
            _unlink(self.spec, "socket")


def _unlink(path: str, what: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        # After uid dropped privileges, a file in a directory only root may write stays behind;
        # the next start replaces a stale socket, so this is worth a line, not a failure.
        log(f"vacuum: cannot remove the {what} {path}: {exc.strerror}")


class PeerFilter:
    """uwsgi-allow-from: the peers TCP uwsgi sockets answer; loopback only when none is given."""

    def __init__(self, entries: Sequence[str]) -> None:
        self.explicit = bool(entries)
        self.networks = tuple(_parse_network(entry) for entry in entries) or LOOPBACK
        self.verdicts = _Verdicts(self.networks)
        # The worker asks on every accepted connection: a dict lookup once a peer has been seen.
        self.allows: Callable[[str], bool] = self.verdicts.__getitem__

    def check_exposure(self, spec: str, host: str) -> None:
        """Refuse a socket bound to a non-loopback ``host`` when uwsgi-allow-from is not set."""
        if self.explicit or permitted(host, LOOPBACK):
            return
        raise SocketError(
            f"socket {spec}: refusing to listen on a non-loopback address without uwsgi-allow-from: "
            "the uwsgi protocol has no authentication, so anyone who reaches this port can send "
            "forged requests (any REMOTE_ADDR, HTTPS, SCRIPT_NAME, Host...) that the app trusts. "
            "Set uwsgi-allow-from to nginx's address or network (e.g. uwsgi-allow-from = 10.0.0.5), "
            "or bind to 127.0.0.1:PORT or a unix socket"
        )


def _parse_network(entry: str) -> Network:
    try:
        network = ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        raise SocketError(
            f"option 'uwsgi-allow-from': {entry!r} is not an IP address or a network in CIDR form "
            "(such as 10.0.0.5, 10.0.0.0/8 or fd00::/8)"
        ) from None
    mapped = network.network_address.ipv4_mapped if isinstance(network, ipaddress.IPv6Network) else None
    if mapped is not None and network.prefixlen >= 96:
        return ipaddress.ip_network((mapped, network.prefixlen - 96))
    return network


def permitted(peer: str, networks: Sequence[Network]) -> bool:
    """Whether the address ``peer`` lies in one of ``networks``.

    IPv4-mapped addresses (``::ffff:10.0.0.1``, how a dual-stack socket sees an IPv4 peer) are
    compared in their IPv4 form, as are mapped networks in the list.
    """
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return any(address.ipv4_mapped in network for network in networks)
    return any(address in network for network in networks)


class _Verdicts(dict[str, bool]):
    """Peer address -> allowed, computed on the first connection from it."""

    def __init__(self, networks: Sequence[Network]) -> None:
        super().__init__()
        self.networks = networks

    def __missing__(self, peer: str) -> bool:
        if len(self) >= MAX_CACHED_PEERS:
            self.clear()
        verdict = self[peer] = permitted(peer, self.networks)
        return verdict


def parse_tcp(spec: str) -> tuple[str, int] | None:
    """``(host, port)`` for a ``HOST:PORT`` socket spec, or None for a unix socket path or ``@name``."""
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit() or "/" in spec or is_abstract(spec):
        return None
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def is_abstract(spec: str) -> bool:
    """Whether ``spec`` is ``@name``: a unix socket in Linux's abstract namespace, with no file."""
    return spec.startswith("@")


def _unix_address(spec: str) -> str:
    if not is_abstract(spec):
        return spec
    if len(spec) == 1:
        raise SocketError("socket @: an abstract socket needs a name after the @")
    return "\0" + spec[1:]


def _clear_stale_unix(path: str) -> None:
    # lstat: a symlink at the path is not ours to replace, even one to a stale socket.
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketError(
            f"socket {path}: {_describe(mode)} is there, not a socket: remove it or choose another path"
        )
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


def _describe(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "a file of another kind"


def bind(
    spec: str, backlog: int, chmod: int | None, timeout: float, peers: PeerFilter | None = None
) -> Listener:
    """Bind and listen on ``spec`` (a unix path, ``@name`` in the abstract namespace, or HOST:PORT).

    ``peers`` is given for uwsgi sockets: a TCP one then answers only those peers, and one on a
    non-loopback address needs an explicit list. The stats server passes none.
    """
    tcp = parse_tcp(spec)
    if tcp:
        family = socket.AF_INET6 if ":" in tcp[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
    else:
        address = _unix_address(spec)
        if not is_abstract(spec):
            _clear_stale_unix(spec)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if tcp:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            set_timeouts(sock, timeout)
            sock.bind(tcp)
            if peers is not None:
                # Checked on the bound address, so a host name is judged by what it resolved to,
                # and before listen, so no connection is ever queued on a refused socket.
                peers.check_exposure(spec, sock.getsockname()[0])
        else:
            _bind_unix(sock, address, chmod)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason += " (another server is listening there)"
        raise SocketError(f"socket {spec}: cannot bind: {reason}") from None
    except SocketError:
        sock.close()
        raise
    sock.setblocking(False)
    listener = Listener(spec, sock)
    if tcp and peers is not None:
        listener.allow = peers.allows
    return listener


def _bind_unix(sock: socket.socket, address: str, chmod: int | None) -> None:
    if chmod is None:
        sock.bind(address)
    elif address.startswith("\0"):
        log(
            f"socket @{address[1:]}: chmod-socket ignored: an abstract socket has no file and no "
            "permissions (any process in this network namespace may connect)"
        )
        sock.bind(address)
    else:
        # The file is created with its mode: a chmod after bind would follow a symlink swapped
        # in at the path meanwhile by whoever may write the directory.
        umask = os.umask(0o777 & ~chmod)
        try:
            sock.bind(address)
        finally:
            os.umask(umask)


def set_timeouts(sock: socket.socket, timeout: float) -> None:
    """Give a TCP listener socket-timeout on reads and writes; accepted sockets inherit it."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(timeout))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval(timeout))


def inherited(env: str = INHERIT_ENV) -> dict[str, Listener]:
    """Listening sockets handed over in ``env`` by the previous master image on a reload, by spec."""
    found = {}
    for item in filter(None, os.environ.pop(env, "").split(",")):
        spec, _, fd = item.rpartition("=")
        sock = socket.socket(fileno=int(fd))
        os.set_inheritable(sock.fileno(), False)
        sock.setblocking(False)
        found[spec] = Listener(spec, sock, bound_here=False)
    return found


def hand_over(listeners: list[Listener], env: str = INHERIT_ENV) -> None:
    """Mark the sockets inheritable and describe them in ``env`` for the next image."""
    for listener in listeners:
        os.set_inheritable(listener.fileno(), True)
    os.environ[env] = ",".join(f"{lst.spec}={lst.fileno()}" for lst in listeners)


def open_all(
    specs: list[str], backlog: int, chmod: int | None, timeout: float, peers: PeerFilter
) -> list[Listener]:
    """The listeners for ``specs``: inherited ones reused, the rest bound; stale inherited ones closed.

    ``peers`` (uwsgi-allow-from) applies to inherited TCP sockets too: a reload with a changed
    list must filter by the new one, and refuse what a fresh start would refuse.
    """
    _refuse_twice(specs)
    previous = inherited()
    listeners: list[Listener] = []
    try:
        for spec in specs:
            listener = previous.pop(spec, None) or bind(spec, backlog, chmod, timeout, peers)
            listeners.append(listener)  # before the checks below, so a refusal closes it with the others
            if not listener.bound_here and not listener.is_unix:
                set_timeouts(listener.sock, timeout)  # the new image's socket-timeout, not the old one's
                peers.check_exposure(spec, listener.sock.getsockname()[0])
                listener.allow = peers.allows
    except SocketError:
        remove_files(listeners, None, vacuum=True)
        raise
    finally:
        remove_files(list(previous.values()), None, vacuum=True)
    return listeners


def _refuse_twice(specs: list[str]) -> None:
    seen: set[object] = set()
    for spec in specs:
        key = parse_tcp(spec) or (spec if is_abstract(spec) else os.path.normpath(spec))
        if key in seen:
            raise SocketError(f"socket {spec} is given twice")
        seen.add(key)


def remove_files(listeners: list[Listener], pidfile: str | None, vacuum: bool) -> None:
    """Close ``listeners``; with ``vacuum``, also unlink their unix socket files and ``pidfile``.

    ``pidfile`` is the one this process wrote: it is unlinked only while it still holds this pid.
    """
    for listener in listeners:
        listener.close()
        if vacuum:
            listener.remove_file()
    if vacuum and pidfile:
        _remove_pidfile(pidfile)


def _remove_pidfile(path: str) -> None:
    # Another server given the same pidfile may have written its pid since: the file is its now.
    pid = os.getpid()
    try:
        held = read_bounded(path, limit=64, follow=False)
    except FileNotFoundError:
        return
    except OSError as exc:
        log(f"vacuum: pidfile {path} left alone: {exc.strerror}")
        return
    if held.strip() != str(pid).encode():
        log(f"vacuum: pidfile {path} no longer holds pid {pid}: left alone")
        return
    _unlink(path, "pidfile")

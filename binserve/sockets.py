"""Listening sockets: binding, inheriting them across a reload, and removing them on exit.

TCP uwsgi sockets answer only local infrastructure by default (loopback and private networks),
or exactly the peers in uwsgi-allow-from: the uwsgi protocol has no authentication, so whoever
reaches the port can set any REMOTE_ADDR, HTTPS or SCRIPT_NAME the app will trust.

``@name`` is a unix socket in Linux's abstract namespace, as in uWSGI: no file, so nothing to
clear, chmod, chown or vacuum; it goes away with the last descriptor on it.
"""

from __future__ import annotations

import _socket
import errno
import ipaddress
import os
import socket
import stat
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

from .connection import timeval
from .log import log
from .safefile import kind, open_parent, read_bounded

INHERIT_ENV = "_BINSERVE_LISTEN_FDS"
# Which of the inherited descriptors systemd passed (socket activation): their files are systemd's.
ACTIVATED_ENV = "_BINSERVE_ACTIVATED_FDS"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
# What a container network, a VPC or a LAN hands out (private IPv4 ranges, carrier-grade NAT, link-local,
# unique-local IPv6): where nginx sits when it is not on the same host.
PRIVATE: tuple[Network, ...] = tuple(
    ipaddress.ip_network(network)
    for network in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "fc00::/7",
        "fe80::/10",
    )
)
LOCAL = LOOPBACK + PRIVATE
# Peers are unbounded (any IPv6 address can connect and be refused), the verdict cache is not.
MAX_CACHED_PEERS = 4096
# A flood of refused peers must not flood the log: each address is logged once, and at most
# this many refusal lines per window per process; the others are counted in one summary line.
REFUSAL_LINES = 10
REFUSAL_WINDOW = 60.0


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
        # Passed by systemd (socket activation): its .socket unit owns the file, not vacuum.
        self.activated = False
        # For TCP sockets: whether a peer address may send requests, and who logs a refusal.
        self.allow: Callable[[str], bool] | None = None
        self.peers: PeerFilter | None = None

    def fileno(self) -> int:
        """The socket's descriptor."""
        return self.sock.fileno()

    def close(self) -> None:
        """Close this process's copy of the socket."""
        self.sock.close()

    def remove_file(self) -> None:
        """Unlink a unix socket's file (vacuum); an abstract socket has none, systemd's is its own."""
        if self.is_unix and not self.is_abstract and not self.activated:
            _unlink(self.spec, "socket")

    def filter_with(self, peers: PeerFilter) -> None:
        """Answer only the peers ``peers`` allows (TCP sockets)."""
        self.peers = peers
        self.allow = peers.allows

    def peer(self, sock: _socket.socket, addr: Any) -> str:
        """Who is at the other end of ``sock``: the TCP address, or this unix socket and the peer's pid."""
        if not self.is_unix:
            return "{}:{}".format(*addr[:2])
        try:
            pid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        except OSError:
            return f"unix:{self.name}"
        return f"unix:{self.name} (peer pid {pid})"

    def refused(self, who: str, peer: str) -> None:
        """Log, within the rate limit, that ``who`` closed a connection from ``peer`` unanswered."""
        if self.peers is not None:
            self.peers.refused(who, peer, self.name)


def _unlink(path: str, what: str) -> None:
    try:
        # Root vacuums too (a start that failed after bind): not through someone else's link above.
        directory, name = open_parent(path)
        try:
            os.unlink(name, dir_fd=directory)
        finally:
            os.close(directory)
    except FileNotFoundError:
        pass
    except OSError as exc:
        # After uid dropped privileges, a file in a directory only root may write stays behind;
        # the next start replaces a stale socket, so this is worth a line, not a failure.
        log(f"vacuum: cannot remove the {what} {path}: {exc.strerror}")


class PeerFilter:
    """Who TCP uwsgi sockets and stats servers answer: uwsgi-allow-from, or local infrastructure.

    Without a list, loopback and private-network peers; with one, exactly its networks (loopback
    too only when listed), so a list can narrow the default as well as widen it.
    """

    def __init__(self, entries: Sequence[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.explicit = bool(entries)
        self.networks = tuple(_parse_network(entry) for entry in entries) or LOCAL
        self.verdicts = _Verdicts(self.networks)
        # The worker asks on every accepted connection: a dict lookup once a peer has been seen.
        self.allows: Callable[[str], bool] = self.verdicts.__getitem__
        self.refusals = _Refusals(clock)

    def describe(self) -> str:
        """Who may connect, for the startup line."""
        if self.explicit:
            return "only the peers in uwsgi-allow-from: " + ", ".join(map(str, self.networks))
        return (
            "only loopback and private-network peers (" + ", ".join(map(str, LOCAL)) + ", and their "
            "IPv4-mapped IPv6 forms); set uwsgi-allow-from to choose other peers"
        )

    def announce(self, what: str, host: str) -> None:
        """One startup line saying who may connect to ``what`` when it is bound beyond loopback."""
        if not permitted(host, LOOPBACK):
            log(f"{what} listens on {host}, beyond loopback, and answers {self.describe()}")

    def refused(self, who: str, peer: str, name: str) -> None:
        """Log that ``who`` closed a connection from ``peer`` on ``name`` unanswered (rate-limited)."""
        reason = (
            "not in uwsgi-allow-from"
            if self.explicit
            else "not a loopback or private-network address (uwsgi-allow-from can admit it)"
        )
        self.refusals.note(peer, who, f"refused a connection from {peer} on {name}: {reason}")


class _Refusals:
    """The refusal log of one process: one line per peer address, at most REFUSAL_LINES a window."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.logged: set[str] = set()
        self.since = clock()
        self.lines = 0
        self.unlogged = 0

    def note(self, peer: str, who: str, line: str) -> None:
        """Log ``who: line`` for a refusal of ``peer``, or count it when that would flood the log."""
        now = self.clock()
        if now - self.since >= REFUSAL_WINDOW:
            # Reported with the next refusal rather than on a timer: a quiet server stays quiet.
            if self.unlogged:
                log(
                    f"{who}: refused {self.unlogged} more connection(s) in the {now - self.since:.0f} s "
                    "before this without a line each (repeated addresses, or past "
                    f"{REFUSAL_LINES} lines in {REFUSAL_WINDOW:.0f} s)"
                )
            self.since, self.lines, self.unlogged = now, 0, 0
        if peer in self.logged or self.lines >= REFUSAL_LINES:
            self.unlogged += 1
            return
        if len(self.logged) >= MAX_CACHED_PEERS:
            self.logged.clear()
        self.logged.add(peer)
        self.lines += 1
        log(f"{who}: {line}")


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


def absolute(spec: str, base: str) -> str:
    """``spec`` with a relative unix socket path taken from ``base``; TCP and ``@name`` as given."""
    if os.path.isabs(spec) or parse_tcp(spec) or is_abstract(spec):
        return spec
    return os.path.join(base, spec)


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
    try:
        # Bound as root: not in a directory that someone else's link above the path leads to.
        os.close(open_parent(path)[0])
    except FileNotFoundError:
        pass  # bind names the missing directory
    except OSError as exc:
        raise SocketError(f"socket {path}: {exc.strerror}") from None
    # lstat: a symlink at the path is not ours to replace, even one to a stale socket.
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketError(
            f"socket {path}: {kind(mode)} is there, not a socket: remove it or choose another path"
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


def bind(
    spec: str, backlog: int, chmod: int | None, timeout: float, peers: PeerFilter | None = None
) -> Listener:
    """Bind and listen on ``spec`` (a unix path, ``@name`` in the abstract namespace, or HOST:PORT).

    ``peers`` is given for uwsgi sockets: a TCP one then answers only those peers, and one on a
    non-loopback address says so in the log. The stats server passes none and filters on its own.
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
        else:
            _bind_unix(sock, address, chmod)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason += " (another server is listening there)"
        raise SocketError(f"socket {spec}: cannot bind: {reason}") from None
    sock.setblocking(False)
    listener = Listener(spec, sock)
    if tcp and peers is not None:
        listener.filter_with(peers)
        # Judged on the bound address, so a host name is judged by what it resolved to.
        peers.announce(f"socket {spec}", sock.getsockname()[0])
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
    activated = os.environ.pop(ACTIVATED_ENV, "").split(",") if env == INHERIT_ENV else []
    for item in filter(None, os.environ.pop(env, "").split(",")):
        spec, _, fd = item.rpartition("=")
        sock = socket.socket(fileno=int(fd))
        os.set_inheritable(sock.fileno(), False)
        sock.setblocking(False)
        found[spec] = Listener(spec, sock, bound_here=False)
        found[spec].activated = fd in activated
    return found


def hand_over(listeners: list[Listener], env: str = INHERIT_ENV) -> None:
    """Mark the sockets inheritable and describe them in ``env`` for the next image."""
    for listener in listeners:
        os.set_inheritable(listener.fileno(), True)
    os.environ[env] = ",".join(f"{lst.spec}={lst.fileno()}" for lst in listeners)
    if env == INHERIT_ENV:
        os.environ[ACTIVATED_ENV] = ",".join(str(lst.fileno()) for lst in listeners if lst.activated)


def activated_inherited() -> bool:
    """Whether the previous image on a reload served on sockets systemd passed."""
    return bool(os.environ.get(ACTIVATED_ENV))


def open_all(
    specs: list[str],
    backlog: int,
    chmod: int | None,
    timeout: float,
    peers: PeerFilter,
    passed: Sequence[Listener] = (),
) -> list[Listener]:
    """The listeners for ``specs``: inherited ones reused, the rest bound; stale inherited ones closed.

    ``passed``: the sockets systemd passed (socket activation). With no ``specs`` binserve
    serves on all of them (on a reload: all those the previous image got from systemd). With
    ``specs``, each passed socket is taken by the spec naming its address, and a spec no passed
    socket has is bound here, as uWSGI does; a passed socket no spec names is an error, since
    serving on an address the configuration does not name would hide the disagreement.

    ``peers`` (uwsgi-allow-from) applies to inherited and passed TCP sockets too: a reload with a
    changed list must filter by the new one, and one bound by systemd beyond loopback answers
    the same peers as one bound here.
    """
    _refuse_twice(specs)
    previous = inherited()
    listeners: list[Listener] = []
    by_address = {address_key(listener.spec): listener for listener in passed}
    if not specs:
        specs = [spec for spec, listener in previous.items() if listener.activated] or [
            listener.spec for listener in passed
        ]
    try:
        for spec in specs:
            listener = previous.pop(spec, None) or by_address.pop(address_key(spec), None)
            if listener is not None and listener.activated:
                listener.spec = spec  # as configured: the next image looks it up by that name
            listener = listener or bind(spec, backlog, chmod, timeout, peers)
            listeners.append(listener)  # before the checks below, so a refusal closes it with the others
            if not listener.bound_here and not listener.is_unix:
                set_timeouts(listener.sock, timeout)  # the new image's socket-timeout, not the old one's
                peers.announce(f"socket {spec}", listener.sock.getsockname()[0])
                listener.filter_with(peers)
        if by_address:
            unnamed = ", ".join(listener.spec for listener in by_address.values())
            raise SocketError(
                f"socket activation: systemd passed {unnamed}, which no socket option names: add it "
                "as a socket, or remove it from the .socket unit"
            )
    except SocketError:
        remove_files(listeners, None, vacuum=True)
        raise
    finally:
        remove_files([*previous.values(), *by_address.values()], None, vacuum=True)
    return listeners


def _refuse_twice(specs: list[str]) -> None:
    seen: set[object] = set()
    for spec in specs:
        key = address_key(spec)
        if key in seen:
            raise SocketError(f"socket {spec} is given twice")
        seen.add(key)


def address_key(spec: str) -> object:
    """What two specs naming one address share (``a.sock`` and ``./a.sock``, ``:80`` and ``0.0.0.0:80``)."""
    return parse_tcp(spec) or (spec if is_abstract(spec) else os.path.normpath(spec))


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

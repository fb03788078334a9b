"""How full a listening socket's accept queue is: ``listen_queue(sock) -> (waiting, limit)``.

For the stats server, which reports it once per listening socket on each request. Linux only.

* TCP: ``getsockopt(TCP_INFO)``. For a listener the kernel (``tcp_get_info``) puts the accept
  queue length in ``tcpi_unacked`` and the listen() backlog in ``tcpi_sacked``; this is what
  uWSGI reports too.
* Unix stream/seqpacket: ``TCP_INFO`` does not exist, which is why uWSGI shows 0 there. The
  kernel's sock_diag netlink interface does know: asking for one socket by inode with
  ``UDIAG_SHOW_RQLEN`` returns ``UNIX_DIAG_RQLEN``, which for a listener is the receive
  queue length -- one skb per
  connection waiting to be accepted -- and ``sk_max_ack_backlog``.

Both limits are the backlog given to listen() after the kernel capped it at
``net.core.somaxconn``.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import struct

__all__ = ["SockDiagError", "listen_queue"]

# include/net/tcp_states.h; also the sk_state of a listening unix socket.
TCP_LISTEN = 10

# struct tcp_info (include/uapi/linux/tcp.h): eight u8 (state, ca_state, retransmits, probes,
# backoff, options, wscale bits, rate-limited bits), then u32 rto, ato, snd_mss, rcv_mss,
# unacked, sacked. Only the first 32 bytes are needed; older kernels return a shorter struct
# than newer ones, so nothing past them is read.
_TCP_INFO_LEN = 32
_TCPI_UNACKED = 24
_TCPI_SACKED = 28

# include/uapi/linux/netlink.h, sock_diag.h, unix_diag.h
NETLINK_SOCK_DIAG = 4  # not exported by Python's socket module
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 2
NLMSG_DONE = 3
UDIAG_SHOW_RQLEN = 0x10
UNIX_DIAG_RQLEN = 4
_NO_COOKIE = 0xFFFFFFFF  # INET_DIAG_NOCOOKIE: do not check the socket cookie

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid (host byte order, as netlink is)
_UNIX_DIAG_REQ = struct.Struct("=BBHIIIII")  # family, protocol, pad, states, ino, show, cookie[2]
_UNIX_DIAG_MSG = struct.Struct("=BBBBIII")  # family, type, state, pad, ino, cookie[2]
_RTATTR = struct.Struct("=HH")  # len (header included), type
_RQLEN = struct.Struct("=II")  # rqueue, wqueue
_NLMSGERR = struct.Struct("=i")  # negative errno, followed by the offending request's header

# A sequence number per request, so a reply can be matched to its request even if the
# netlink socket were ever reused.
_seq = itertools.count(1)

# The kernel answers a single-socket sock_diag request before send() returns, so the reply is
# already queued; the timeout only guards the stats server against a kernel that never answers.
_NETLINK_TIMEOUT = 1.0


class SockDiagError(OSError):
    """The kernel's sock_diag interface refused or could not answer a query."""


def listen_queue(sock: socket.socket) -> tuple[int, int]:
    """Return ``(waiting, limit)`` for a listening TCP or unix socket.

    ``waiting`` is the number of connections the kernel has completed and that wait in the
    accept queue right now; ``limit`` is the queue's size (listen()'s backlog, capped at
    ``net.core.somaxconn``). Raises ValueError for a socket that is not listening or is of a
    kind without an accept queue (UDP, raw...), and SockDiagError (an OSError) if the kernel's
    sock_diag query for a unix socket fails.
    """
    family, kind = sock.family, sock.type
    if family in (socket.AF_INET, socket.AF_INET6) and kind == socket.SOCK_STREAM:
        if sock.proto not in (0, socket.IPPROTO_TCP):  # e.g. MPTCP or SCTP: no TCP_INFO layout
            raise ValueError(f"not a TCP socket (protocol {sock.proto})")
        _require_listening(sock)
        return _tcp_queue(sock)
    if family == socket.AF_UNIX and kind in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET):
        _require_listening(sock)
        return _unix_queue(sock)
    raise ValueError(f"no accept queue on a {family!r}/{kind!r} socket")


def _require_listening(sock: socket.socket) -> None:
    # SO_ACCEPTCONN works for every family; without it, TCP_INFO on a connected socket would
    # return its unacked/sacked segment counts, which would read as a plausible queue.
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ValueError("the socket is not listening")


def _tcp_queue(sock: socket.socket) -> tuple[int, int]:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    if len(info) < _TCP_INFO_LEN:
        raise OSError(errno.EPROTO, f"TCP_INFO returned {len(info)} bytes, expected {_TCP_INFO_LEN}")
    if info[0] != TCP_LISTEN:  # stopped listening between the check and now (shutdown)
        raise ValueError("the socket is not listening")
    (waiting,) = struct.unpack_from("=I", info, _TCPI_UNACKED)
    (limit,) = struct.unpack_from("=I", info, _TCPI_SACKED)
    return waiting, limit


def _unix_queue(sock: socket.socket) -> tuple[int, int]:
    # The kernel finds the socket by its sockfs inode number, which is what fstat() reports
    # for the descriptor (and what ss/lsof show). Inode numbers of sockets are 32-bit.
    return _unix_diag_rqlen(os.fstat(sock.fileno()).st_ino)


def _unix_diag_rqlen(ino: int) -> tuple[int, int]:
    """Ask sock_diag for UNIX_DIAG_RQLEN of the listening unix socket with inode ``ino``."""
    if not 0 < ino <= 0xFFFFFFFF:
        raise ValueError(f"socket inode {ino} does not fit unix_diag_req")
    seq = next(_seq) & 0xFFFFFFFF
    body = _UNIX_DIAG_REQ.pack(
        socket.AF_UNIX, 0, 0, 1 << TCP_LISTEN, ino, UDIAG_SHOW_RQLEN, _NO_COOKIE, _NO_COOKIE
    )
    # No NLM_F_DUMP: an exact lookup by inode answers with this one socket, not with a message
    # per unix socket of the namespace. The exact lookup ignores udiag_states, which is why the
    # state in the answer is checked below.
    request = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0) + body
    # One netlink socket per call: a whole call costs ~20 us, ~6 us of it socket()+close(), which
    # is nothing per stats request; in exchange no descriptor is kept across fork and no lock needed.
    # The kernel's lookup by inode still walks its unix socket table (measured ~30-90 us more
    # with 10,000 unix sockets open), a cost a kept netlink socket would not save either.
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(_NETLINK_TIMEOUT)
        nl.sendto(request, (0, 0))  # pid 0: the kernel
        while True:
            try:
                reply = nl.recv(8192)
            except TimeoutError:
                raise SockDiagError(errno.ETIMEDOUT, "sock_diag: no answer from the kernel") from None
            result = _parse_reply(reply, seq, ino)
            if result is not None:
                return result


def _parse_reply(data: bytes, seq: int, ino: int) -> tuple[int, int] | None:
    """The (rqueue, wqueue) in a sock_diag reply datagram; None if it holds nothing for ``seq``."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, msg_seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            raise SockDiagError(errno.EPROTO, f"sock_diag: malformed netlink message (length {length})")
        payload = data[offset + _NLMSGHDR.size : offset + length]
        offset += (length + 3) & ~3  # NLMSG_ALIGN
        if msg_seq != seq:
            continue  # not an answer to this request
        if kind == NLMSG_ERROR:
            (error,) = _NLMSGERR.unpack_from(payload)
            code = -error
            if code == errno.ENOENT:
                # The inode is not a unix socket of this network namespace, or the unix_diag
                # module is missing (CONFIG_UNIX_DIAG off).
                reason = "no such unix socket known to sock_diag (unix_diag unavailable?)"
            else:
                reason = os.strerror(code)
            raise SockDiagError(code, f"sock_diag query for unix socket inode {ino}: {reason}")
        if kind == NLMSG_DONE:
            raise SockDiagError(errno.ENOENT, f"sock_diag: no answer for unix socket inode {ino}")
        if kind != SOCK_DIAG_BY_FAMILY or len(payload) < _UNIX_DIAG_MSG.size:
            raise SockDiagError(errno.EPROTO, f"sock_diag: unexpected netlink message type {kind}")
        _family, _type, state, _pad, msg_ino, _c0, _c1 = _UNIX_DIAG_MSG.unpack_from(payload)
        if msg_ino != ino:
            raise SockDiagError(errno.EPROTO, f"sock_diag: answer for inode {msg_ino}, asked for {ino}")
        if state != TCP_LISTEN:
            raise ValueError("the socket is not listening")
        return _find_rqlen(payload[_UNIX_DIAG_MSG.size :])
    return None


def _find_rqlen(attrs: bytes) -> tuple[int, int]:
    """UNIX_DIAG_RQLEN's (rqueue, wqueue) among the rtattrs following unix_diag_msg."""
    offset = 0
    while offset + _RTATTR.size <= len(attrs):
        length, kind = _RTATTR.unpack_from(attrs, offset)
        if length < _RTATTR.size:
            break
        if kind == UNIX_DIAG_RQLEN and length >= _RTATTR.size + _RQLEN.size:
            waiting, limit = _RQLEN.unpack_from(attrs, offset + _RTATTR.size)
            return waiting, limit
        offset += (length + 3) & ~3  # RTA_ALIGN
    raise SockDiagError(errno.EPROTO, "sock_diag: the answer has no UNIX_DIAG_RQLEN attribute")

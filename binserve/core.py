"""One serving loop (a "core", as uWSGI calls it): accept, gather each packet, run the app.

One connection carries one request (nginx never reuses a uwsgi upstream connection). A packet
that arrived whole is served at once; one that did not is *parked*: its socket joins the core's
epoll with a deadline of socket-timeout from accept, and the core goes on accepting. A peer
that sends a few bytes and stalls therefore holds no thread: it is dropped at its deadline
while everyone else is served. Once the head is complete the request is served to the end (body
reads and response writes each bounded by socket-timeout). What nginx still sends after the
answer (the rest of a refused packet, a body the app did not read) is dropped in the loop too:
the connection is half-closed and parked as *draining*, so a peer that holds it holds no thread
either.

A worker runs one core in its main thread, or ``threads`` cores in threads of their own.
"""

from __future__ import annotations

import _socket
import errno
import io
import os
import resource
import select
import socket
import struct
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from .body import EMPTY_INPUT, Input
from .connection import RECV_CHUNK, BodyReadTimeout, ClientDisconnected, Connection, WriteTimeout
from .environ import build_environ, request_line, request_text
from .listenq import listen_queue
from .log import log, printable, write_line
from .protocol import CLOSED, NEED_DATA, PONG, Decoder, Head, ProtocolError, RemoteProtocolError, decode_head
from .protocol.modifiers import PING, VARS_MODIFIERS, describe
from .response import Exchange, error_response
from .scoreboard import Slot
from .sockets import Listener

if TYPE_CHECKING:
    from .worker import Worker

# After refusing a bad packet, at most this much of what nginx still sends is read and dropped.
DRAIN_LIMIT = 1 << 20
_IN = select.EPOLLIN
# Stalled connections closed within this many seconds of each other share one log line.
STALLED_LOG_INTERVAL = 1.0
# Stalled peers named in that line; the rest are counted.
STALLED_NAMED = 3


def _peer_of(conn: _socket.socket, addr: Any, listener: Listener) -> str:
    """Who sent a bad packet: the TCP address, or the unix socket and the peer's pid."""
    if not listener.is_unix:
        return "{}:{}".format(*addr[:2])
    try:
        pid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
    except OSError:
        return f"unix:{listener.name}"
    return f"unix:{listener.name} (peer pid {pid})"


class Parked:
    """A connection waiting in the core's epoll: for the rest of its packet, or *draining*.

    A draining connection has been answered and half-closed; what the peer still sends is
    read and dropped as it arrives, up to ``drain`` more bytes.
    """

    __slots__ = ("conn", "decoder", "addr", "listener", "deadline", "drain")

    def __init__(
        self,
        conn: Connection,
        decoder: Decoder | None,
        addr: Any,
        listener: Listener,
        deadline: float,
        drain: int,
    ):
        self.conn = conn
        self.decoder = decoder
        self.addr = addr
        self.listener = listener
        self.deadline = deadline
        self.drain = drain


class Core:
    """One thread's serving loop, with its own epoll, scoreboard slot and buffers."""

    def __init__(self, worker: Worker, slot: Slot | None) -> None:
        config = worker.config
        self.worker = worker
        self.wid = worker.wid
        self.pid = worker.pid
        self.app = worker.app
        self.config = config
        self.slot = slot
        self.counter = worker.counter  # shared by the worker's cores: next() is atomic
        self.log_requests = not config.disable_logging
        self.timeout = worker.timeout
        self.socket_timeout = config.socket_timeout
        self.buffer_size = config.buffer_size
        self.max_body = config.limit_post or None
        self.post_buffering = config.post_buffering
        self.base_environ = worker.base_environ
        self.recv_size = self.buffer_size + 4 + 16384
        self.rbuf = bytearray(RECV_CHUNK)
        self.poller = select.epoll()
        self.others: dict[int, Callable[[], None]] = {}
        self.parked: dict[int, Parked] = {}
        self.expiry: deque[Parked] = deque()  # one timeout for all: deadlines come in order
        self.stalled = 0  # stalled connections closed and not logged yet
        self.stalled_peers: list[str] = []  # the first few of them
        self.stalled_first = 0  # bytes of a packet the first one sent
        self.stalled_log_due = 0.0
        # Parked connections hold descriptors: past this many the core stops accepting (new
        # connections wait in the listen backlog) rather than run out of them.
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        fds = 1 << 20 if soft == resource.RLIM_INFINITY else soft
        self.max_parked = max(16, (fds - 64) // config.threads)
        self.paused = False  # listeners out of the epoll: too many parked, or out of descriptors
        self.paused_until = 0.0
        # Registered here, before the worker tells the master it accepts: then it really does.
        self.listening = {listener.fileno(): listener for listener in worker.listeners}
        self._listen(True)

    def watch(self, fd: int, handler: Callable[[], None]) -> None:
        """Call ``handler`` in the loop when ``fd`` is readable (signals, the master's pipe)."""
        self.others[fd] = handler
        self.poller.register(fd, _IN)

    def unwatch(self, fd: int) -> None:
        """Stop watching ``fd`` (one that stays readable once it has fired)."""
        self.poller.unregister(fd)

    def run(self) -> None:
        """Serve until the worker stops accepting and no parked connection is left."""
        worker = self.worker
        listening, parked, others = self.listening, self.parked, self.others
        poll = self.poller.poll
        timeout = self._expire() if parked else -1.0
        while True:
            for fd, _ in poll(timeout):
                found = listening.get(fd)
                if found is not None:
                    if worker.accepting:  # an event of this batch may have stopped the worker
                        self._accept(found)
                elif fd in parked:
                    self._resume(parked[fd])
                elif fd in others:  # not a listener an orphaned worker closed meanwhile
                    others[fd]()
            # Expire first: dropping the last parked connection may be what lets a stopping core leave.
            timeout = self._expire() if parked or self.stalled else -1.0
            if not worker.accepting:
                if listening:
                    if not self.paused:
                        self._listen(False)
                    listening.clear()
                    self.paused = False
                if not parked:
                    return
            elif self.paused:
                wait = self.paused_until - time.monotonic()
                if wait <= 0 and len(parked) < self.max_parked:
                    self._listen(True)
                elif wait > 0:
                    timeout = wait if timeout < 0 else min(timeout, wait)

    def _pause(self, seconds: float, why: str) -> None:
        """Take the listeners out of the epoll for ``seconds`` and until fewer are parked."""
        if not self.paused:
            log(f"worker {self.wid}: {why}; not accepting until some of them go")
            self._listen(False)
        self.paused_until = time.monotonic() + seconds

    def _listen(self, on: bool) -> None:
        """Put the listeners in this core's epoll, or take them out (``paused``)."""
        # Under the worker's lock: an orphaned worker drops and closes them from another thread.
        with self.worker.lock:
            if on and not self.worker.accepting:
                return
            for fd in self.listening:
                if on:
                    # EPOLLEXCLUSIVE wakes one idle core per new connection instead of all of them
                    # (the thundering herd: every loser pays a wakeup and a failed accept).
                    self.poller.register(fd, _IN | select.EPOLLEXCLUSIVE)
                else:
                    self.poller.unregister(fd)
            self.paused = not on

    def drop_listeners(self) -> None:
        """Take the listeners out of this core's epoll for good, from any thread, the worker's lock held.

        The worker closes them next: they must leave the epoll first, since the sockets stay
        open in other processes and an entry lives as long as its socket does.
        """
        if not self.paused:
            for fd in self.listening:
                self.poller.unregister(fd)
        self.listening.clear()
        self.paused = False

    def _accept(self, listener: Listener) -> bool:
        """Take one connection from ``listener`` and serve or park it; False when none was queued."""
        try:
            # The C-level socket skips socket.socket's Python __init__: 2-3 us per request.
            fd, addr = listener.sock._accept()  # type: ignore[attr-defined]
        except (BlockingIOError, InterruptedError):
            return False  # another core took it
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                # Level-triggered epoll would report the listener again at once: pause instead
                # of spinning and logging in a loop.
                self._pause(
                    1.0, f"out of file descriptors ({len(self.parked)} connections waiting for their packet)"
                )
            elif not (exc.errno == errno.EBADF and self.worker.orphaned):
                # (An orphan's listeners are closed under it on purpose: nothing to report.)
                log(f"worker {self.wid}: accept on {listener.name} failed: {exc}")
            return False
        if listener.allow is not None and not listener.allow(addr[0]):
            os.close(fd)
            listener.refused(f"worker {self.wid}", addr[0])
            return True
        self.handle(_socket.socket(listener.family, socket.SOCK_STREAM, 0, fd), addr, listener)
        return True

    def drain_backlog(self) -> None:
        """On a graceful stop, serve the connections queued at this moment so none is dropped.

        Only those: later ones go to whoever accepts them. A worker leaving because its
        replacement accepts would otherwise go on serving a steady stream from the backlog.
        """
        for listener in self.worker.listeners:
            for _ in range(self._queued(listener)):
                if not self._accept(listener):
                    break
        if self.parked:
            self.run()  # no longer accepting: it serves or drops what is parked, then returns

    def _queued(self, listener: Listener) -> int:
        """How many connections wait in ``listener``'s accept queue (at most ``listen`` if unknown)."""
        try:
            return listen_queue(listener.sock)[0]
        except (OSError, ValueError):
            return self.config.listen

    def handle(self, sock: _socket.socket, addr: Any, listener: Listener) -> None:
        """Serve one freshly accepted connection, or park it until its packet is complete."""
        conn = Connection(sock, not listener.is_unix, self.timeout)
        try:
            # nginx writes the request right after connecting, so it is usually all there
            # already and is decoded in one go.
            data: bytes | None = sock.recv(self.recv_size, socket.MSG_DONTWAIT)
        except BlockingIOError:
            data = None
        except OSError as exc:
            log(f"worker {self.wid}: reading from {_peer_of(sock, addr, listener)} failed: {exc}")
            sock.close()
            return
        self._proceed(conn, data, None, addr, listener)

    def _resume(self, parked: Parked) -> None:
        """More bytes (or EOF) for a parked connection."""
        if parked.drain:
            parked.drain = self._discard(parked.conn.sock, parked.drain)
            if not parked.drain:
                self._unpark(parked)
                parked.conn.sock.close()
            return
        try:
            data: bytes | None = parked.conn.sock.recv(self.recv_size, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError as exc:
            self._unpark(parked)
            log(
                f"worker {self.wid}: reading from {_peer_of(parked.conn.sock, parked.addr, parked.listener)} "
                f"failed: {exc}"
            )
            parked.conn.sock.close()
            return
        self._proceed(parked.conn, data, parked, parked.addr, parked.listener)

    def _proceed(
        self,
        conn: Connection,
        data: bytes | None,
        parked: Parked | None,
        addr: Any,
        listener: Listener,
    ) -> None:
        """Decode what has arrived (``data`` None: nothing yet, b"": EOF); serve once complete.

        ``parked`` is the connection's waiting entry when it was parked before.
        """
        sock = conn.sock
        decoder = None if parked is None else parked.decoder
        keep = False
        drain = 0  # bytes to drop after the answer; -1: none, the connection was aborted
        try:
            head: Any
            if decoder is None:
                found = decode_head(data, self.buffer_size, self.max_body) if data else None
                if found is not None:
                    head = found[0]
                    if head.content_length:
                        decoder = Decoder.after_head(head, data[found[1] :])  # type: ignore[index]
                else:
                    decoder = Decoder(self.buffer_size, self.max_body)
                    head = self._feed(decoder, data)
            else:
                head = self._feed(decoder, data)
            if head is NEED_DATA:
                keep = True
                if parked is None:
                    self._park(conn, decoder, addr, listener)  # type: ignore[arg-type]
                return
            if parked is not None:
                self._unpark(parked)
                parked = None
            if head is CLOSED:
                return
            modifier1 = head.modifier1
            if modifier1 in VARS_MODIFIERS:
                if self._serve(conn, head, decoder):
                    drain = -1
            elif modifier1 == PING:
                sock.sendall(PONG)
            else:
                log(
                    f"-- unavailable modifier requested: {describe(head.modifier1)} from "
                    f"{_peer_of(sock, addr, listener)} --"
                )
        except ProtocolError as exc:
            log(
                f"bad uwsgi packet from {_peer_of(sock, addr, listener)}: {printable(exc.message)}; "
                "connection closed"
            )
            if self._answer(conn, exc.status_hint, "bad uwsgi request"):
                drain = DRAIN_LIMIT
        except BodyReadTimeout as exc:  # post-buffering's, before the app ran
            log(f"worker {self.wid}: {exc}, from {_peer_of(sock, addr, listener)}; answered 408")
            self._answer(conn, 408, "the request body stopped arriving")
        except (BrokenPipeError, ConnectionResetError) as exc:
            log(f"worker {self.wid}: nginx closed the connection early ({exc.strerror})")
        except OSError as exc:
            # Any other I/O failure on this connection (or post-buffering's temporary file):
            # this request is lost, the worker is not.
            log(f"worker {self.wid}: {exc} on a connection from {_peer_of(sock, addr, listener)}; closed")
        finally:
            if not keep:
                if parked is not None:
                    self._unpark(parked)
                if decoder is not None and not drain:
                    drain = decoder.unreceived
                if drain <= 0 or not self._drain(conn, drain, addr, listener):
                    sock.close()

    @staticmethod
    def _feed(decoder: Decoder, data: bytes | None) -> Any:
        """Give the decoder ``data``: the Head, NEED_DATA, or CLOSED (EOF before any byte)."""
        if data is None:
            return NEED_DATA
        decoder.receive_data(data)
        return decoder.next_event()

    def _park(
        self, conn: Connection, decoder: Decoder | None, addr: Any, listener: Listener, drain: int = 0
    ) -> None:
        parked = Parked(conn, decoder, addr, listener, time.monotonic() + self.socket_timeout, drain)
        fd = conn.sock.fileno()
        self.parked[fd] = parked
        self.expiry.append(parked)
        self.poller.register(fd, _IN)
        if len(self.parked) >= self.max_parked:
            self._pause(0.0, f"{len(self.parked)} connections are waiting for their packet")

    def _unpark(self, parked: Parked) -> None:
        fd = parked.conn.sock.fileno()
        if self.parked.pop(fd, None) is parked:
            self.poller.unregister(fd)

    def _expire(self) -> float:
        """Drop parked connections past their deadline; seconds until the next one (-1: none).

        Stalled connections are logged together, one line per STALLED_LOG_INTERVAL at most: a
        client opening thousands of them must not write thousands of lines.
        """
        now = time.monotonic()
        expiry, parked = self.expiry, self.parked
        wait = -1.0
        closing = []  # closed after the log line: whoever sees the close finds it logged
        while expiry:
            first = expiry[0]
            if parked.get(first.conn.sock.fileno()) is not first:
                expiry.popleft()  # served or closed already
                continue
            if first.deadline > now:
                wait = first.deadline - now
                break
            expiry.popleft()
            self._unpark(first)
            if not first.drain:  # a drain running out of time is no fault worth a line
                self._stalled(first, now)
            closing.append(first.conn.sock)
        if self.stalled:
            if not parked or now >= self.stalled_log_due:
                self._log_stalled()
            else:
                due = self.stalled_log_due - now
                wait = due if wait < 0 else min(wait, due)
        for sock in closing:
            sock.close()
        return wait

    def _stalled(self, parked: Parked, now: float) -> None:
        if not self.stalled:
            self.stalled_log_due = now + STALLED_LOG_INTERVAL
            self.stalled_peers = []
            self.stalled_first = len(parked.decoder.trailing_data) if parked.decoder else 0
        self.stalled += 1
        if len(self.stalled_peers) < STALLED_NAMED:
            self.stalled_peers.append(_peer_of(parked.conn.sock, parked.addr, parked.listener))

    def _log_stalled(self) -> None:
        count, peers = self.stalled, self.stalled_peers
        self.stalled = 0
        if count == 1:
            log(
                f"worker {self.wid}: timeout waiting for the request: {self.stalled_first} bytes of a packet "
                f"arrived, then nothing for socket-timeout, from {peers[0]}; connection closed"
            )
            return
        more = f" and {count - len(peers)} more" if count > len(peers) else ""
        log(
            f"worker {self.wid}: closed {count} stalled connections at socket-timeout, their packets "
            f"incomplete (from: {', '.join(peers)}{more})"
        )

    def _serve(self, conn: Connection, head: Head, decoder: Decoder | None) -> bool:
        """Run the app for one request (``decoder`` reads its body, None when it has none).

        True when the response was cut off and the connection aborted: nothing more to drain.
        """
        slot = self.slot
        start = since = time.time() if self.log_requests or slot is not None else 0.0
        if decoder is None:
            wsgi_input: Any = EMPTY_INPUT
        elif self.post_buffering:
            wsgi_input = self._buffer_body(conn, decoder, head.content_length)
            if slot is not None:
                since = time.time()  # as uWSGI: a slow upload being buffered does not count toward harakiri
        else:
            wsgi_input = Input(conn, decoder, head.content_length)
        environ = build_environ(head, self.base_environ, wsgi_input)
        if slot is not None:
            slot.begin(since, environ.get("REQUEST_METHOD", "-"), environ.get("REQUEST_URI", ""))
        exchange = Exchange(conn, environ)
        result = None
        failed = aborted = False
        cut_short = ""
        try:
            result = self.app(environ, exchange.start_response)
            exchange.send_result(result)
        except ClientDisconnected as exc:
            # The packet ended before its CONTENT_LENGTH: a bad packet, not an app failure;
            # counted and logged like any request, then reported as the bad packet it is.
            exchange.code = 400
            cut_short = str(exc)
        except BodyReadTimeout as exc:
            aborted = self._body_timed_out(exchange, exc)
        except WriteTimeout as exc:
            log(f"worker {self.wid}: {exc} during {request_line(environ)}; connection closed")
            exchange.code = exchange.code or 504
        except (BrokenPipeError, ConnectionResetError) as exc:
            log(
                f"worker {self.wid}: nginx closed the connection during {request_line(environ)} "
                f"({exc.strerror}); client probably gone"
            )
            exchange.code = exchange.code or 499
        except BaseException:
            # SystemExit and KeyboardInterrupt too: the app raised them, they must not end the worker.
            failed = True
            aborted = self._app_failed(exchange)
        finally:
            if result is not None:
                try:
                    close = getattr(result, "close", None)  # the lookup runs the app's code too
                    if close is not None:
                        close()
                except BaseException:
                    log(
                        f"worker {self.wid}: close() of the response of {request_line(environ)} raised:\n"
                        + traceback.format_exc().rstrip()
                    )
            if wsgi_input is not EMPTY_INPUT and self.post_buffering:
                wsgi_input.close()
        n = next(self.counter)
        if slot is not None:
            slot.end(time.time() - start, conn.sent, failed)
        if self.log_requests:
            ms = (time.time() - start) * 1000
            what = f"{environ.get('REMOTE_ADDR', '-')} {request_text(environ)}"
            if not what.isprintable():  # the common case pays this one test
                what = printable(what)
            write_line(
                f"[pid: {self.pid}|worker: {self.wid}|req: {n}] {what} "
                f"=> {exchange.code} {conn.sent} bytes in {ms:.2f} ms\n"
            )
        if self.worker.after_each:
            self.worker.after_request(n)
        if cut_short:
            if exchange.head_sent:  # a 400 now would follow the app's own response: cut that off instead
                peer = printable(environ.get("REMOTE_ADDR", "-"))
                log(
                    f"worker {self.wid}: {printable(cut_short)}, from {peer} during {request_line(environ)}; "
                    "response cut off, connection aborted"
                )
                conn.abort()
                return True
            raise RemoteProtocolError(cut_short)
        return aborted

    def _buffer_body(self, conn: Connection, decoder: Decoder, length: int) -> IO[bytes]:
        """post-buffering: the whole body, read before the app runs; in a temporary file when large."""
        # As uWSGI: bodies of post-buffering bytes or more go to a file, smaller ones stay in memory.
        body: IO[bytes] = io.BytesIO() if length < self.post_buffering else tempfile.TemporaryFile()
        reader = Input(conn, decoder, length)
        try:
            while chunk := reader.read(RECV_CHUNK):
                body.write(chunk)
        except ClientDisconnected as exc:
            body.close()
            raise RemoteProtocolError(str(exc)) from None
        except BaseException:
            body.close()
            raise
        body.seek(0)
        return body

    def _app_failed(self, exchange: Exchange) -> bool:
        """Log the app's exception and answer 500; True when the headers were out: connection aborted."""
        environ = exchange.environ
        if exchange.head_sent:
            log(
                f"worker {self.wid}: the app raised during {request_line(environ)} after its headers were "
                "sent; connection aborted so the client sees a cut-off response:\n"
                + traceback.format_exc().rstrip()
            )
            exchange.code = exchange.code or 500
            exchange.conn.abort()
            return True
        log(
            f"worker {self.wid}: the app raised during {request_line(environ)}:\n"
            + traceback.format_exc().rstrip()
        )
        exchange.code = 500
        try:
            exchange.conn.send([exchange.server_error()])
        except OSError as exc:
            log(f"worker {self.wid}: could not send the 500 response: {exc}")
        return False

    def _body_timed_out(self, exchange: Exchange, exc: BodyReadTimeout) -> bool:
        """The request body stalled: a fault of the peer, not of the app. 408, or abort when too late."""
        environ = exchange.environ
        late = exchange.head_sent
        log(
            f"worker {self.wid}: {exc}, from {printable(environ.get('REMOTE_ADDR', '-'))} during "
            f"{request_line(environ)}; "
            + ("response cut off, connection aborted" if late else "answered 408")
        )
        if late:
            exchange.code = exchange.code or 408
            exchange.conn.abort()
            return True
        exchange.code = 408
        try:
            exchange.conn.send([exchange.request_timeout()])
        except OSError:
            pass  # the peer is gone: the line above said what happened
        return False

    def _answer(self, conn: Connection, status: int, reason: str) -> bool:
        """Answer a request refused before the app ran with an error status; False when the peer is gone."""
        try:
            conn.sock.send(error_response(status, reason), socket.MSG_DONTWAIT)
        except OSError:
            return False  # gone, or not reading at all: nothing left to answer or drain
        return True

    def _drain(self, conn: Connection, limit: int, addr: Any, listener: Listener) -> bool:
        """Half-close after the answer, then drop up to ``limit`` more bytes the peer sends, never waiting.

        nginx must read the answer before the connection closes (a close with unread data is
        a reset, and the answer would be lost): what has arrived is dropped now, the rest in
        the loop, the connection parked as draining until EOF, the limit, or socket-timeout.
        True when it is parked; the caller closes it otherwise.
        """
        sock = conn.sock
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return False
        left = self._discard(sock, limit)
        if left:
            self._park(conn, None, addr, listener, left)
        return left > 0

    def _discard(self, sock: _socket.socket, limit: int) -> int:
        """Read and drop what has arrived, up to ``limit`` bytes; what is left to drop (0: done)."""
        rbuf = self.rbuf
        while limit > 0:
            try:
                n = sock.recv_into(rbuf, min(limit, len(rbuf)), socket.MSG_DONTWAIT)
            except BlockingIOError:
                return limit
            except OSError:
                return 0  # a reset: nothing more will come
            if not n:
                return 0
            limit -= n
        return 0

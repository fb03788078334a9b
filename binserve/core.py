"""One serving loop (a "core", as uWSGI calls it): accept, gather each packet, run the app.

One connection carries one request (nginx never reuses a uwsgi upstream connection). A packet
that arrived whole is served at once; one that did not is parked (binserve/parking.py) and the
core goes on accepting. Once the head is complete the request is served to the end, top-down:
the protocol decodes it, environ.py builds its environ (body.py its wsgi.input), the app runs,
response.py sends what it returned, all I/O through a connection.Connection bounded by
socket-timeout. What nginx still sends after the answer is drained in the loop, parked too.

A worker runs one core in its main thread, or ``threads`` cores in threads of their own. A core
sees its worker only through ``Host``: what it reads to serve, and the few switches (accepting,
orphaned, the after-request hook) the worker flips from its signal handlers and threads.
"""

from __future__ import annotations

import _socket
import errno
import io
import os
import resource
import select
import socket
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import IO, Any, Protocol

from .body import EMPTY_INPUT, Input
from .config import Config
from .connection import RECV_CHUNK, BodyReadTimeout, ClientDisconnected, Connection, WriteTimeout, timeval
from .environ import build_environ, make_base_environ, request_line
from .listenq import listen_queue
from .log import log, printable
from .parking import Parked, Parking
from .protocol import CLOSED, NEED_DATA, PONG, Decoder, Head, ProtocolError, RemoteProtocolError, decode_head
from .protocol.modifiers import PING, VARS_MODIFIERS, describe
from .requestlog import Settings, build
from .response import Exchange, error_response
from .scoreboard import Slot
from .sockets import Listener

# After refusing a bad packet, at most this much of what nginx still sends is read and dropped.
DRAIN_LIMIT = 1 << 20
_IN = select.EPOLLIN


class Host(Protocol):
    """What a core needs from the worker that runs it (the worker is one).

    ``accepting``, ``orphaned`` and ``after_each`` change while the cores run (signals, the
    master's pipe, the emperor's loyalty message): cores read them live and never set them.
    """

    wid: int
    pid: int
    app: Callable[..., Any]
    config: Config
    listeners: list[Listener]
    counter: Iterator[int]  # shared by the worker's cores: next() is atomic
    lock: threading.Lock  # held while the listeners are put in or taken out of an epoll
    accepting: bool
    orphaned: bool  # its listeners are closed under it on purpose
    after_each: bool  # whether after_request must run after every request

    def after_request(self, n: int) -> None:
        """Bookkeeping after request number ``n``."""


# A process that leaves (the old generation on a reload, a recycled worker) may have been the
# one woken for a connection and closed its listeners before accepting it. With EPOLLEXCLUSIVE
# no other core is woken for that connection until the next one arrives: on a quiet server it
# would wait for minutes. Such leaving happens just after a new worker starts accepting, so a
# new core looks for left-behind connections every SWEEP_EVERY seconds for its first SWEEP_FOR.
SWEEP_EVERY = 0.1
SWEEP_FOR = 5.0


class Core:
    """One thread's serving loop, with its own epoll, scoreboard slot and buffers."""

    def __init__(self, host: Host, slot: Slot | None, core: int = 0) -> None:
        config = host.config
        self.host = host
        self.wid = host.wid
        self.pid = host.pid
        self.app = host.app
        self.config = config
        self.slot = slot
        self.counter = host.counter
        self.log_requests = not config.disable_logging
        # uWSGI's log-4xx, log-5xx, log-slow, log-big, log-zero: logged even with disable-logging.
        self.log_4xx, self.log_5xx = config.log_4xx, config.log_5xx
        self.log_slow, self.log_big, self.log_zero = config.log_slow / 1000, config.log_big, config.log_zero
        self.log_notable = self.log_4xx or self.log_5xx or self.log_slow or self.log_big or self.log_zero
        self.log_line = build(
            Settings(config), self.pid, self.wid, core, slot.instance_requests if slot is not None else None
        )
        self.timeout = timeval(config.socket_timeout)
        self.buffer_size = config.buffer_size
        self.max_body = config.limit_post or None
        self.post_buffering = config.post_buffering
        self.base_environ = make_base_environ(
            multiprocess=config.processes > 1, multithread=config.threads > 1
        )
        self.recv_size = self.buffer_size + 4 + 16384
        self.poller = select.epoll()
        self.others: dict[int, Callable[[], None]] = {}
        # Parked connections hold descriptors: past this many the core stops accepting (new
        # connections wait in the listen backlog) rather than run out of them.
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        fds = 1 << 20 if soft == resource.RLIM_INFINITY else soft
        max_parked = max(16, (fds - 64) // config.threads)
        self.parking = Parking(self.poller, self.wid, config.socket_timeout, max_parked, self._parking_full)
        self.parked = self.parking.parked
        self.paused = False  # listeners out of the epoll: too many parked, or out of descriptors
        self.paused_until = 0.0
        # Registered here, before the worker tells the master it accepts: then it really does.
        self.listening = {listener.fileno(): listener for listener in host.listeners}
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
        self._serving_here()
        host, parking = self.host, self.parking
        listening, parked, others = self.listening, self.parked, self.others
        poll, expire = self.poller.poll, parking.expire
        timeout = min(expire(), SWEEP_EVERY) if parked else SWEEP_EVERY
        sweep_until = time.monotonic() + SWEEP_FOR
        while True:
            events = poll(timeout)
            for fd, _ in events:
                found = listening.get(fd)
                if found is not None:
                    if host.accepting:  # an event of this batch may have stopped the worker
                        self._accept(found)
                elif fd in parked:
                    self._resume(parked[fd])
                elif fd in others:  # not a listener an orphaned worker closed meanwhile
                    others[fd]()
            # Expire first: dropping the last parked connection may be what lets a stopping core leave.
            timeout = expire() if parked or parking.stalled else -1.0
            if sweep_until:
                if not events and host.accepting and not self.paused:
                    self._sweep()
                if time.monotonic() >= sweep_until:
                    sweep_until = 0.0
                elif timeout < 0 or timeout > SWEEP_EVERY:
                    timeout = SWEEP_EVERY
            if not host.accepting:
                if listening:
                    if not self.paused:
                        self._listen(False)
                    listening.clear()
                    self.paused = False
                if not parked:
                    return
            elif self.paused:
                wait = self.paused_until - time.monotonic()
                if wait <= 0 and len(parked) < parking.limit:
                    self._listen(True)
                elif wait > 0:
                    timeout = wait if timeout < 0 else min(timeout, wait)

    def _sweep(self) -> None:
        """Accept the connections queued with no wakeup left for them (see SWEEP_FOR)."""
        for listener in list(self.listening.values()):
            for _ in range(self.config.listen):
                if not self.host.accepting or self.paused or not self._accept(listener):
                    break

    def _serving_here(self) -> None:
        """Name the calling thread in the slot: on harakiri, the master wants the stack of this one."""
        if self.slot is not None:
            self.slot.serving_thread(threading.get_ident(), threading.get_native_id())

    def _pause(self, seconds: float, why: str) -> None:
        """Take the listeners out of the epoll for ``seconds`` and until fewer are parked."""
        if not self.paused:
            log(f"worker {self.wid}: {why}; not accepting until some of them go")
            self._listen(False)
        self.paused_until = time.monotonic() + seconds

    def _parking_full(self, count: int) -> None:
        self._pause(0.0, f"{count} connections are waiting for their packet")

    def _listen(self, on: bool) -> None:
        """Put the listeners in this core's epoll, or take them out (``paused``)."""
        # Under the worker's lock: an orphaned worker drops and closes them from another thread.
        with self.host.lock:
            if on and not self.host.accepting:
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
            elif not (exc.errno == errno.EBADF and self.host.orphaned):
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
        self._serving_here()  # with threads, the worker's main thread drains once the core threads end
        for listener in self.host.listeners:
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
            log(f"worker {self.wid}: reading from {listener.peer(sock, addr)} failed: {exc}")
            sock.close()
            return
        self._proceed(conn, data, None, addr, listener)

    def _resume(self, parked: Parked) -> None:
        """More bytes (or EOF) for a parked connection."""
        if parked.drain:
            self.parking.drain_more(parked)
            return
        try:
            data: bytes | None = parked.conn.sock.recv(self.recv_size, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError as exc:
            self.parking.unpark(parked)
            peer = parked.listener.peer(parked.conn.sock, parked.addr)
            log(f"worker {self.wid}: reading from {peer} failed: {exc}")
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
                    self.parking.park(conn, decoder, addr, listener)
                return
            if parked is not None:
                self.parking.unpark(parked)
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
                    f"{listener.peer(sock, addr)} --"
                )
        except ProtocolError as exc:
            log(
                f"bad uwsgi packet from {listener.peer(sock, addr)}: {printable(exc.message)}; "
                "connection closed"
            )
            if self._answer(conn, exc.status_hint, "bad uwsgi request"):
                drain = DRAIN_LIMIT
        except BodyReadTimeout as exc:  # post-buffering's, before the app ran
            log(f"worker {self.wid}: {exc}, from {listener.peer(sock, addr)}; answered 408")
            self._answer(conn, 408, "the request body stopped arriving")
        except (BrokenPipeError, ConnectionResetError) as exc:
            log(f"worker {self.wid}: nginx closed the connection early ({exc.strerror})")
        except OSError as exc:
            # Any other I/O failure on this connection (or post-buffering's temporary file):
            # this request is lost, the worker is not.
            log(f"worker {self.wid}: {exc} on a connection from {listener.peer(sock, addr)}; closed")
        finally:
            if not keep:
                if parked is not None:
                    self.parking.unpark(parked)
                if decoder is not None and not drain:
                    drain = decoder.unreceived
                if drain <= 0 or not self.parking.drain(conn, drain, addr, listener):
                    sock.close()

    @staticmethod
    def _feed(decoder: Decoder, data: bytes | None) -> Any:
        """Give the decoder ``data``: the Head, NEED_DATA, or CLOSED (EOF before any byte)."""
        if data is None:
            return NEED_DATA
        decoder.receive_data(data)
        return decoder.next_event()

    def _serve(self, conn: Connection, head: Head, decoder: Decoder | None) -> bool:
        """Run the app for one request (``decoder`` reads its body, None when it has none).

        True when the response was cut off and the connection aborted: nothing more to drain.
        """
        slot = self.slot
        timed = self.log_requests or self.log_notable or slot is not None
        start = since = time.time() if timed else 0.0
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
        end = time.time() if timed else 0.0
        if slot is not None:
            slot.end(end - start, conn.sent, failed)
        if self.log_requests or (self.log_notable and self._notable(exchange, conn.sent, end - start)):
            self.log_line(environ, head, exchange, conn.sent, start, end, n)
        if self.host.after_each:
            self.host.after_request(n)
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

    def _notable(self, exchange: Exchange, sent: int, seconds: float) -> bool:
        """Whether a request is logged with request logging off (uWSGI's rules, uWSGI's order)."""
        code = exchange.code
        body = max(sent - exchange.head_size, 0)
        return bool(
            (self.log_zero and not body)
            or (self.log_slow and seconds >= self.log_slow)
            or (self.log_4xx and 400 <= code <= 499)
            or (self.log_5xx and 500 <= code <= 599)
            or (self.log_big and body >= self.log_big)
        )

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

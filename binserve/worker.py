"""The worker: accept a connection, decode one request, run the app, answer, close.

One connection carries one request (nginx never reuses a uwsgi upstream connection, facts
2.6). The loop waits in ``poll`` on the listening sockets, the signal wakeup pipe and the
pipe from the master (EOF there means the master died, and the worker leaves with it).
"""

from __future__ import annotations

import _socket
import os
import random
import select
import signal
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from .app import load_app
from .config import Config
from .log import log, write_line
from .protocol import CLOSED, NEED_DATA, PONG, Decoder, Head, ProtocolError, RemoteProtocolError, decode_head
from .protocol.modifiers import PING, VARS_MODIFIERS, describe
from .scoreboard import Slot
from .sockets import Listener
from .wsgi import (
    EMPTY_INPUT,
    RECV_CHUNK,
    ClientDisconnected,
    Connection,
    Exchange,
    Input,
    WriteTimeout,
    build_environ,
    make_base_environ,
    timeval,
)

RECYCLED = 17  # exit code of a worker leaving after max-requests (uWSGI's reload code)
BOOT_ERROR = 3  # exit code of a worker that cannot start: the master stops instead of respawning

_STATUS_TEXT = {400: "Bad Request", 413: "Content Too Large", 431: "Request Header Fields Too Large"}
GRACEFUL = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Vassal -> emperor messages of uWSGI's emperor protocol (facts 4.3).
MSG_SPAWNED, MSG_ACCEPTING, MSG_LOYAL = 1, 5, 17
# After refusing a bad packet, at most this much of what nginx still sends is read and dropped.
DRAIN_LIMIT = 1 << 20


def _error_response(status: int, reason: str) -> bytes:
    body = f"{status} {_STATUS_TEXT.get(status, 'Error')}: {reason}\n".encode("latin-1", "replace")
    head = (
        f"HTTP/1.0 {status} {_STATUS_TEXT.get(status, 'Error')}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _peer_of(conn: _socket.socket, addr: Any, listener: Listener) -> str:
    """Who sent a bad packet: the TCP address, or the unix socket and the peer's pid."""
    if not listener.is_unix:
        return "{}:{}".format(*addr[:2])
    try:
        pid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
    except OSError:
        return f"unix:{listener.name}"
    return f"unix:{listener.name} (peer pid {pid})"


class Worker:
    """One worker process's serving loop."""

    def __init__(
        self,
        wid: int,
        app: Callable[..., Any],
        listeners: list[Listener],
        config: Config,
        master_fd: int,
        emperor_fd: int | None = None,
        slot: Slot | None = None,
    ) -> None:
        self.wid = wid
        self.app = app
        self.listeners = listeners
        self.config = config
        self.master_fd = master_fd
        self.slot = slot  # this worker's counters in the master's scoreboard
        # Under an emperor, the first request served makes the vassal "loyal" (facts 4.3):
        # a vassal that dies after that is respawned without throttling.
        self.emperor_fd = emperor_fd
        if emperor_fd is not None:
            os.set_inheritable(emperor_fd, False)  # the app's own subprocesses must not hold it
        self.pid = os.getpid()
        self.requests = 0
        # Jitter per worker (max-requests-delta) so the workers do not all recycle together.
        self.max_requests = (
            config.max_requests + random.randint(0, config.max_requests_delta) if config.max_requests else 0
        )
        self.stopping = False
        self.log_requests = not config.disable_logging
        self.timeout = timeval(config.socket_timeout)
        self.buffer_size = config.buffer_size
        self.max_body = config.limit_post or None
        self.base_environ = make_base_environ(multiprocess=config.processes > 1)
        self.recv_size = self.buffer_size + 4 + 16384
        self.rbuf = bytearray(RECV_CHUNK)

    def run(self) -> int:
        """Serve until told to stop; returns the exit code."""
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for signum in (*GRACEFUL, signal.SIGQUIT):
            signal.signal(signum, wake_only)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # The master blocked these across fork; the handlers above are now in place.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, (*GRACEFUL, signal.SIGQUIT, signal.SIGCHLD))
        # EPOLLEXCLUSIVE wakes one idle worker per new connection instead of all of them
        # (the thundering herd: every loser pays a wakeup and a failed accept).
        poller = select.epoll()
        by_fd = {}
        for listener in self.listeners:
            poller.register(listener.fileno(), select.EPOLLIN | select.EPOLLEXCLUSIVE)
            by_fd[listener.fileno()] = listener
        poller.register(wake_r, select.EPOLLIN)
        poller.register(self.master_fd, select.EPOLLIN)
        while not self.stopping:
            for fd, _ in poller.poll():
                if fd == wake_r:
                    self._on_signals(os.read(wake_r, 64))
                elif fd == self.master_fd:
                    log(f"worker {self.wid}: the master is gone, exiting")
                    return 0
                elif not self.stopping:
                    self._accept(by_fd[fd])
        if self.requests and self.requests == self.max_requests:
            return RECYCLED  # the queue is left to the other workers and to the replacement
        self._drain_backlog()
        return 0

    def _on_signals(self, received: bytes) -> None:
        for signum in received:
            if signum == signal.SIGQUIT:
                os._exit(0)
            if signum in GRACEFUL:
                self.stopping = True

    def _accept(self, listener: Listener) -> None:
        try:
            # The C-level socket skips socket.socket's Python __init__: 2-3 us per request.
            fd, addr = listener.sock._accept()  # type: ignore[attr-defined]
        except (BlockingIOError, InterruptedError):
            return  # another worker took it
        except OSError as exc:
            log(f"worker {self.wid}: accept on {listener.name} failed: {exc}")
            return
        if listener.allow is not None and not listener.allow(addr[0]):
            os.close(fd)
            log(
                f"worker {self.wid}: refused a connection from {addr[0]} on {listener.name}: "
                "not in uwsgi-allow-from"
            )
            return
        self.handle(_socket.socket(listener.family, socket.SOCK_STREAM, 0, fd), addr, listener)

    def _drain_backlog(self) -> None:
        """On a graceful stop, serve the connections already queued so none is dropped."""
        for listener in self.listeners:
            for _ in range(self.config.listen):
                try:
                    conn, addr = listener.sock.accept()
                except OSError:
                    break
                self.handle(conn, addr, listener)

    def handle(self, sock: _socket.socket, addr: Any, listener: Listener) -> None:
        """Serve one connection from accept to close."""
        conn = Connection(sock, not listener.is_unix, self.timeout)
        decoder = None
        try:
            try:
                # nginx writes the request right after connecting, so it is usually all there
                # already and is decoded in one go; otherwise a Decoder gathers the pieces.
                data = sock.recv(self.recv_size, socket.MSG_DONTWAIT)
                found = decode_head(data, self.buffer_size, self.max_body)
            except BlockingIOError:
                data, found = b"", None
            if found is None:
                decoder = Decoder(self.buffer_size, self.max_body)
                head = self._read_head(conn, decoder, data)
                if head is None:
                    return
            else:
                head = found[0]
                if head.content_length:
                    decoder = Decoder.after_head(head, data[found[1] :])
            modifier1 = head.modifier1
            if modifier1 in VARS_MODIFIERS:
                self._serve(conn, head, decoder)
            elif modifier1 == PING:
                sock.sendall(PONG)
            else:
                log(
                    f"-- unavailable modifier requested: {describe(head.modifier1)} from "
                    f"{_peer_of(sock, addr, listener)} --"
                )
        except ProtocolError as exc:
            log(f"bad uwsgi packet from {_peer_of(sock, addr, listener)}: {exc.message}; connection closed")
            self._refuse(conn, exc.status_hint)
        except TimeoutError as exc:
            log(f"worker {self.wid}: {exc} from {_peer_of(sock, addr, listener)}; connection closed")
        except (BrokenPipeError, ConnectionResetError) as exc:
            log(f"worker {self.wid}: nginx closed the connection early ({exc.strerror})")
        finally:
            if decoder is not None and decoder.unreceived:
                self._drain(conn, decoder.unreceived)
            sock.close()

    def _read_head(self, conn: Connection, decoder: Decoder, data: bytes) -> Head | None:
        """Gather a packet that did not arrive whole; None if the peer closed before sending any."""
        sock = conn.sock
        while True:
            if data:
                decoder.receive_data(data)
                event = decoder.next_event()
                if event is CLOSED:
                    return None
                if event is not NEED_DATA:
                    return event  # type: ignore[return-value]
            conn.arm()
            try:
                data = sock.recv(self.recv_size)
            except BlockingIOError:
                got = len(decoder.trailing_data)
                raise TimeoutError(
                    f"timeout waiting for the request: {got} bytes of a packet arrived, then nothing"
                ) from None
            if not data:
                decoder.receive_data(b"")
                event = decoder.next_event()
                if event is CLOSED:
                    return None
                return event  # type: ignore[return-value]

    def _serve(self, conn: Connection, head: Head, decoder: Decoder | None) -> None:
        """Run the app for one request (``decoder`` reads its body, None when it has none)."""
        slot = self.slot
        start = time.time() if self.log_requests or slot is not None else 0.0
        wsgi_input = EMPTY_INPUT if decoder is None else Input(conn, decoder, head.content_length)
        environ = build_environ(head, self.base_environ, wsgi_input)
        if slot is not None:
            slot.begin(start, environ.get("REQUEST_METHOD", "-"), environ.get("REQUEST_URI", ""))
        exchange = Exchange(conn, environ)
        result = None
        failed = False
        try:
            result = self.app(environ, exchange.start_response)
            exchange.send_result(result)
        except ClientDisconnected as exc:
            # The packet ended before its CONTENT_LENGTH: a bad packet, not an app failure.
            exchange.code = 400
            raise RemoteProtocolError(str(exc)) from None
        except WriteTimeout as exc:
            log(f"worker {self.wid}: {exc} during {_request_line(environ)}; connection closed")
            exchange.code = exchange.code or 504
        except (BrokenPipeError, ConnectionResetError) as exc:
            log(
                f"worker {self.wid}: nginx closed the connection during {_request_line(environ)} "
                f"({exc.strerror}); client probably gone"
            )
            exchange.code = exchange.code or 499
        except Exception:
            failed = True
            self._app_failed(exchange)
        finally:
            if result is not None and hasattr(result, "close"):
                try:
                    result.close()
                except Exception:
                    log(
                        f"worker {self.wid}: close() of the response of {_request_line(environ)} raised:\n"
                        + traceback.format_exc().rstrip()
                    )
        self.requests += 1
        if self.requests == self.max_requests:
            log(f"worker {self.wid}: {self.requests} requests served (max-requests), recycling")
            self.stopping = True
        if slot is not None:
            slot.end(time.time() - start, conn.sent, failed)
        if self.emperor_fd is not None:
            self._announce_loyalty()
        if self.log_requests:
            ms = (time.time() - start) * 1000
            write_line(
                f"[pid: {self.pid}|worker: {self.wid}|req: {self.requests}] "
                f"{environ.get('REMOTE_ADDR', '-')} {_request_line(environ)} "
                f"=> {exchange.code} {conn.sent} bytes in {ms:.2f} ms\n"
            )

    def _announce_loyalty(self) -> None:
        try:
            os.write(self.emperor_fd, bytes((MSG_LOYAL,)))  # type: ignore[arg-type]
        except OSError as exc:
            log(f"worker {self.wid}: cannot write to the emperor: {exc.strerror}")
        self.emperor_fd = None  # once per worker, as uWSGI does

    def _app_failed(self, exchange: Exchange) -> None:
        environ = exchange.environ
        log(
            f"worker {self.wid}: the app raised during {_request_line(environ)}:\n"
            + traceback.format_exc().rstrip()
        )
        if exchange.head_sent:
            log(f"worker {self.wid}: headers were already sent, closing the connection")
            exchange.code = exchange.code or 500
            return
        exchange.code = 500
        try:
            exchange.conn.send([exchange.server_error()])
        except OSError as exc:
            log(f"worker {self.wid}: could not send the 500 response: {exc}")

    def _refuse(self, conn: Connection, status: int) -> None:
        """Answer a bad packet with an error status, then let nginx finish sending so it sees no reset."""
        try:
            conn.sock.sendall(_error_response(status, "bad uwsgi request"))
        except OSError:
            return  # the peer is gone: nothing left to answer or drain
        self._drain(conn, DRAIN_LIMIT)

    def _drain(self, conn: Connection, limit: int) -> None:
        """Half-close, then discard up to ``limit`` bytes until EOF, within one socket-timeout in all.

        One deadline for the whole drain, not one per read: a peer trickling a byte at a time
        must not hold the worker.
        """
        sock = conn.sock
        deadline = time.monotonic() + self.config.socket_timeout
        try:
            sock.shutdown(socket.SHUT_WR)
            while limit > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                sock.settimeout(left)
                n = sock.recv_into(self.rbuf, min(limit, len(self.rbuf)))
                if not n:
                    return
                limit -= n
        except (TimeoutError, BlockingIOError):
            return  # past the deadline: closing now is the lesser harm
        except OSError as exc:
            log(f"worker {self.wid}: could not drain the connection: {exc}")


def _request_line(environ: dict[str, Any]) -> str:
    return (
        f"{environ.get('REQUEST_METHOD', '-')} {environ.get('REQUEST_URI') or environ.get('PATH_INFO', '')}"
    )


def wake_only(signum: int, frame: object) -> None:
    """The handler for every signal binserve handles: the wakeup fd already woke the loop."""


def run_worker(
    wid: int,
    app: Callable[..., Any] | None,
    listeners: list[Listener],
    config: Config,
    master_fd: int,
    emperor_fd: int | None = None,
    slot: Slot | None = None,
) -> int:
    """Entry point in a freshly forked worker; never returns to the master's code.

    ``app`` is None with lazy-apps: the worker loads it itself.
    """
    try:
        if app is None:
            app = load_app(config)
        worker = Worker(wid, app, listeners, config, master_fd, emperor_fd, slot)
    except Exception:
        log(f"worker {wid} failed to boot:\n" + traceback.format_exc().rstrip())
        return BOOT_ERROR
    try:
        return worker.run()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()

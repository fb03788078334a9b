"""systemd's notify protocol (``Type=notify``): readiness, reloads, stops and a status line.

systemd names a unix datagram socket in ``NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract
namespace); each message is one datagram of ``KEY=VALUE`` lines. The variable is taken out of
the environment as soon as binserve starts: the workers, the app and whatever the app spawns
must not speak for the service. Only the master (or the emperor) notifies, and it puts the
variable back just before it re-executes itself on a reload, so the new image notifies too.

A vassal never notifies: its emperor is the service. A send that fails (systemd gone, a
full queue) is logged once and otherwise ignored: notifying is advice, never a reason to stop.
Nor a reason to wait: a datagram to a socket whose queue is full would block until its reader
takes one, so a reader that never does (a hung manager, a wrong path someone else binds) would
hang the master; the socket does not block, and such a message is dropped.
"""

from __future__ import annotations

import os
import socket
import time

from .log import log

NOTIFY_ENV = "NOTIFY_SOCKET"
STATUS_INTERVAL = 2.0  # seconds between two STATUS= updates at most: systemd keeps only the last


class Notifier:
    """The service's link to systemd; every method does nothing when there is none."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self.sock: socket.socket | None = None
        self.failed = False  # a failure is logged once
        self.status_text = ""
        self.status_at = -STATUS_INTERVAL

    @classmethod
    def from_environ(cls) -> Notifier:
        """Take ``NOTIFY_SOCKET`` out of the environment (children must not see it)."""
        return cls(os.environ.pop(NOTIFY_ENV, None) or None)

    @property
    def active(self) -> bool:
        """Whether systemd is listening."""
        return self.address is not None

    def send(self, *fields: str) -> None:
        """One datagram of ``fields`` (``KEY=VALUE`` each)."""
        if self.address is None:
            return
        message = "\n".join(fields).encode()
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self.sock is None:
                kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                self.sock = socket.socket(socket.AF_UNIX, kind)
            self.sock.sendto(message, target)
        except OSError as exc:
            if not self.failed:
                self.failed = True
                reason = exc.strerror or str(exc)
                if isinstance(exc, BlockingIOError):
                    reason = "its queue is full (nothing reads it)"
                log(f"cannot notify systemd on {self.address}: {reason} (serving on; not logged again)")

    def ready(self, status: str) -> None:
        """Serving: after the start and after each reload (or a refused one)."""
        self.status_text, self.status_at = status, time.monotonic()
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self, status: str) -> None:
        """A reload begins; systemd ≥ 253 wants the monotonic clock's time with it."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.status_text, self.status_at = status, time.monotonic()
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS={status}")

    def stopping(self, status: str) -> None:
        """A stop begins."""
        self.status_text, self.status_at = status, time.monotonic()
        self.send("STOPPING=1", f"STATUS={status}")

    def status(self, text: str) -> None:
        """``STATUS=text``, when it changed and at most every STATUS_INTERVAL seconds."""
        now = time.monotonic()
        if self.address is None or text == self.status_text or now - self.status_at < STATUS_INTERVAL:
            return
        self.status_text, self.status_at = text, now
        self.send(f"STATUS={text}")

    def hand_over(self) -> None:
        """Put ``NOTIFY_SOCKET`` back for the image about to be executed in this process."""
        if self.address is not None:
            os.environ[NOTIFY_ENV] = self.address

    def close(self) -> None:
        """Close the datagram socket (a worker does not notify)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None

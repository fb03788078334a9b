"""Errors raised by the uwsgi codec.

Every error carries ``status_hint``: the HTTP status a server should answer with when it
still can (a malformed packet from a peer is a 400, an over-limit block a 413), so the
server never has to guess from the message.
"""


class ProtocolError(Exception):
    """Base class: the bytes or the API use broke the uwsgi protocol."""

    def __init__(self, message: str, status_hint: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status_hint = status_hint


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not a valid uwsgi packet."""


class LocalProtocolError(ProtocolError):
    """The caller misused the codec (for example fed data after the end of a request)."""

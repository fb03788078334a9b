"""The uwsgi protocol, sans-IO: declaration (spec), fast decoder, encoder, modifier table."""

from .decoder import (
    CLOSED,
    END,
    NEED_DATA,
    Body,
    Decoder,
    End,
    Head,
    decode_head,
    parse_content_length,
    parse_vars,
)
from .encoder import PING, PONG, encode_header, encode_pong, encode_request, encode_vars
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError

__all__ = [
    "CLOSED",
    "END",
    "NEED_DATA",
    "PING",
    "PONG",
    "Body",
    "Decoder",
    "End",
    "Head",
    "decode_head",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "encode_header",
    "encode_pong",
    "encode_request",
    "encode_vars",
    "parse_content_length",
    "parse_vars",
]

"""The uwsgi modifier1 table and what binserve does with each value.

Values and meanings are uWSGI's: the documented table and the values its plugins register.
binserve serves WSGI (0 and 30) and answers ping
(100); every other known modifier is named in the log line that refuses it, so an operator
who points the wrong nginx location at binserve sees "PSGI (Perl)" rather than a number.
"""

from enum import Enum


class Action(Enum):
    """What the server does with a packet of a given modifier1."""

    WSGI = "wsgi"
    PING = "ping"
    UNSUPPORTED = "unsupported"


WSGI = 0
WSGI_MANAGE_PATH_INFO = 30
PING = 100

# modifier1 -> (name, action). Modifiers absent from the table are unknown and unsupported.
MODIFIERS: dict[int, tuple[str, Action]] = {
    0: ("WSGI request", Action.WSGI),
    5: ("PSGI (Perl)", Action.UNSUPPORTED),
    6: ("Lua WSAPI", Action.UNSUPPORTED),
    7: ("Rack (Ruby)", Action.UNSUPPORTED),
    8: ("JVM", Action.UNSUPPORTED),
    9: ("CGI", Action.UNSUPPORTED),
    10: ("management request", Action.UNSUPPORTED),
    11: ("GCCGO", Action.UNSUPPORTED),
    14: ("PHP", Action.UNSUPPORTED),
    15: ("Mono/ASP.NET", Action.UNSUPPORTED),
    17: ("spooler request", Action.UNSUPPORTED),
    18: ("symcall", Action.UNSUPPORTED),
    19: ("SSI", Action.UNSUPPORTED),
    22: ("raw code eval", Action.UNSUPPORTED),
    23: ("XSLT", Action.UNSUPPORTED),
    24: ("V8", Action.UNSUPPORTED),
    25: ("GridFS", Action.UNSUPPORTED),
    26: ("FastFunc/GlusterFS", Action.UNSUPPORTED),
    27: ("FastFunc/GlusterFS", Action.UNSUPPORTED),
    28: ("Rados", Action.UNSUPPORTED),
    30: ("WSGI request, PATH_INFO minus SCRIPT_NAME", Action.WSGI),
    31: ("generic message", Action.UNSUPPORTED),
    32: ("char-array message", Action.UNSUPPORTED),
    33: ("marshalled object", Action.UNSUPPORTED),
    35: ("WebDAV", Action.UNSUPPORTED),
    48: ("SNMP", Action.UNSUPPORTED),
    72: ("HTTP response", Action.UNSUPPORTED),
    73: ("multicast announce", Action.UNSUPPORTED),
    74: ("multicast message", Action.UNSUPPORTED),
    95: ("cluster membership", Action.UNSUPPORTED),
    96: ("remote log message", Action.UNSUPPORTED),
    97: ("brutal reload request", Action.UNSUPPORTED),
    98: ("graceful reload request", Action.UNSUPPORTED),
    99: ("config request", Action.UNSUPPORTED),
    100: ("ping", Action.PING),
    101: ("echo", Action.UNSUPPORTED),
    109: ("Legion message", Action.UNSUPPORTED),
    110: ("uwsgi signal", Action.UNSUPPORTED),
    111: ("cache operation", Action.UNSUPPORTED),
    115: ("emperor config push", Action.UNSUPPORTED),
    123: ("corerouter condition", Action.UNSUPPORTED),
    173: ("RPC", Action.UNSUPPORTED),
    200: ("persistent connection close mark", Action.UNSUPPORTED),
    224: ("subscription", Action.UNSUPPORTED),
    250: ("example/C++ plugin", Action.UNSUPPORTED),
    255: ("generic response", Action.UNSUPPORTED),
}

# Only these carry a vars block that binserve parses; any other payload is kept raw.
VARS_MODIFIERS = frozenset(m for m, (_, action) in MODIFIERS.items() if action is Action.WSGI)


def action(modifier1: int) -> Action:
    """What binserve does with a packet whose first byte is ``modifier1``."""
    entry = MODIFIERS.get(modifier1)
    return entry[1] if entry else Action.UNSUPPORTED


def describe(modifier1: int) -> str:
    """A human name for ``modifier1``, for log lines."""
    entry = MODIFIERS.get(modifier1)
    return f"{modifier1} ({entry[0]})" if entry else f"{modifier1} (unknown)"

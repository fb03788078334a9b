"""The link between an emperor and its vassals: uWSGI's emperor byte protocol.

The emperor hands each vassal one end of a socketpair, named by ``UWSGI_EMPEROR_FD`` in the
vassal's environment (a binserve master keeps it across its reloads). Each message is one
byte. Both sides speak uWSGI's numbers, so real uWSGI vassals run under a binserve emperor
and binserve vassals under uWSGI's: these names are the one place the numbers are written.
"""

from __future__ import annotations

import os

from .log import log

EMPEROR_FD_ENV = "UWSGI_EMPEROR_FD"

# Vassal -> emperor, read byte by byte (as ints).
MSG_SPAWNED = 1  # the master started, for the first time (not after a reload)
MSG_ACCEPTING = 5  # the master serves: after its start, a reload, or a refused reload
MSG_LOYAL = 17  # a worker served its first request: a vassal that dies after that is not throttled
MSG_VOLUNTARY = 22  # a vassal asking to be stopped (uWSGI's die-on-idle)

# Emperor -> vassal, sent as these bytes.
CMD_STOP, CMD_RELOAD, CMD_GRACEFUL_STOP = b"\x00", b"\x01", b"\x02"


def emperor_fd_from_env() -> int | None:
    """The socket to the emperor when running as a vassal (``UWSGI_EMPEROR_FD``, kept for reloads)."""
    value = os.environ.get(EMPEROR_FD_ENV)
    if not value or not value.isdigit():
        return None
    fd = int(value)
    try:
        os.set_blocking(fd, False)
    except OSError:
        log(f"{EMPEROR_FD_ENV}={value} is not an open descriptor: running without the emperor")
        return None
    return fd

"""How a vassal process starts and ends, and as whom.

A vassal runs in its own process group, so a kill past the deadline takes its workers with its
master, and is told to stop when the emperor dies. A tyrant runs each vassal as its file's
owner with a minimal environment: root's (secrets included) is not the vassal's to see, and a
directory its users may write lets one replace another's file between the scan and the start.
"""

from __future__ import annotations

import os
import pwd
import signal
import stat
import sys
from typing import Any

from .. import signals
from ..config import Config
from ..log import log
from .plan import VassalFile

# What a tyrant vassal gets from the emperor's environment; the rest (secrets included) stays.
TYRANT_ENV = ("PATH", "LANG", "LC_ALL", "TZ")


def command_line(config: Config, path: str) -> list[str]:
    """The command that runs the vassal file ``path``: binserve itself, or the emperor's wrapper."""
    wrapper = config.emperor_wrapper
    program = [wrapper] if wrapper else [sys.executable, "-m", "binserve"]
    args = [*program, "--ini", path]
    for template in config.vassals_inherit:
        args += ["--inherit", os.path.abspath(template)]
    return args


def identity(wanted: VassalFile, tyrant: bool) -> dict[str, Any]:
    """``Popen`` arguments for whom the vassal runs as: a tyrant's vassal is its file's owner."""
    return dict(user=wanted.uid, group=wanted.gid, extra_groups=[]) if tyrant else {}


def environment(wanted: VassalFile, tyrant: bool) -> dict[str, str]:
    """The vassal's environment; the emperor's own systemd notify socket is not the vassal's."""
    if tyrant:
        return tyrant_environment(wanted.uid)
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    return env


def tyrant_environment(uid: int) -> dict[str, str]:
    """A tyrant vassal's environment: the locale and PATH, and who it is; none of root's secrets."""
    env = {name: os.environ[name] for name in TYRANT_ENV if name in os.environ}
    env.setdefault("PATH", os.defpath)
    try:
        user = pwd.getpwuid(uid)
        env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
    except KeyError:
        env["HOME"] = "/"
    return env


def die_with_parent() -> None:
    """In the vassal before exec: be told to stop if the emperor dies (Linux).

    uWSGI sends SIGKILL; SIGTERM lets a binserve master stop its workers within its mercy and
    remove its socket, where a killed master would leave a busy worker running behind it.
    """
    signals.die_with_parent(signal.SIGTERM)


def kill_group(pid: int) -> None:
    """SIGKILL a vassal's whole process group: its master and every worker."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def warn_if_replaceable(directory: str) -> None:
    """Warn when users may replace each other's files in a tyrant's vassal directory.

    Between a scan and the vassal reading its file, such a user could swap in a file of their
    own, which the vassal would then run as the first file's owner.
    """
    try:
        info = os.stat(directory)
    except OSError:
        return  # a glob, or a directory that comes later: nothing to say yet
    if info.st_uid != 0:
        why = f"owned by uid {info.st_uid}"
    elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
        why = "writable by others without the sticky bit"
    else:
        return
    log(
        f"emperor: warning: {directory} is {why}: a user may replace another's vassal file between"
        " the scan and its start; make it root's, and sticky (chmod 1777) if users drop files in it"
    )

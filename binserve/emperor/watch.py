"""What the vassal directories hold: the desired state the emperor's plan starts from.

Vassal files are their users' input, and whoever may write the directory may plant links,
FIFOs, huge or renamed files in it. The scan reads each file bounded and non-blocking, only
again when it changed, and (for a tyrant) refuses files that could make it run one user's file
as another. inotify wakes the emperor as soon as something moves; the periodic scan stays.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import stat

from .. import safefile
from ..log import log, printable
from .plan import VassalFile

# What tells a file changed without reading it: a write moves its ctime, a swap its inode.
FileKey = tuple[int, int, int, int, int]
# An editor saving a file may replace it between two lookups once; a user flipping it does so always.
LOOKUP_TRIES = 3


def scan(
    patterns: list[str], tyrant: bool, digests: dict[str, tuple[FileKey, str]] | None = None
) -> tuple[dict[str, VassalFile], list[str]]:
    """The vassal files matching ``patterns`` (a directory means its *.ini), and problems found.

    ``digests`` (kept by the caller between scans) spares reading a file that has not changed.
    """
    found: dict[str, VassalFile] = {}
    problems = []
    known = {} if digests is None else digests
    seen = set()
    for pattern in patterns:
        paths = glob.glob(os.path.join(pattern, "*.ini")) if os.path.isdir(pattern) else glob.glob(pattern)
        for path in sorted(paths):
            path = os.path.abspath(path)
            seen.add(path)
            wanted, problem = _vassal_file(path, tyrant, known)
            if wanted is not None:
                found[path] = wanted
            else:
                problems.append(problem)
    for gone in set(known) - seen:
        del known[gone]
    return found, problems


def _lookup(path: str) -> tuple[os.stat_result, os.stat_result, str]:
    """``lstat``, ``stat`` and ``realpath`` of ``path`` that agree, tried again if the name changed."""
    for _ in range(LOOKUP_TRIES):
        link, info, real = os.lstat(path), os.stat(path), os.path.realpath(path)
        # A user swapping their own file for a link to another's between the lookups must not
        # have the scan take the other's file (and owner) for theirs.
        if stat.S_ISLNK(link.st_mode) or (info.st_dev, info.st_ino) == (link.st_dev, link.st_ino):
            return link, info, real
    raise safefile.UnsafeFile(path, "changed at each look: left for the next scan")


def _vassal_file(
    path: str, tyrant: bool, digests: dict[str, tuple[FileKey, str]]
) -> tuple[VassalFile | None, str]:
    """One vassal file as the directory describes it, or why it is refused."""
    if not os.path.basename(path).isprintable():
        # Its name would go into every line about it: whoever may write the directory could forge lines.
        return None, f"{printable(path)}: refused: a vassal file name with control characters"
    try:
        link, info, real = _lookup(path)
        key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        if path not in digests or digests[path][0] != key:
            # Bounded, non-blocking, regular files only: a FIFO, a device or a sparse 4 GB file
            # named *.ini must not hang the emperor or fill its memory.
            digests[path] = (key, hashlib.sha256(safefile.read_bounded(path)).hexdigest())
    except OSError as exc:
        return None, f"{path}: cannot read vassal file: {exc.strerror}"
    digest = digests[path][1]
    if tyrant and (info.st_uid == 0 or info.st_gid == 0):
        return None, f"[emperor-tyrant] invalid permissions for vassal {path}: owned by root"
    # Whoever may write the directory could otherwise run another user's file as that user.
    if tyrant and stat.S_ISLNK(link.st_mode) and link.st_uid != info.st_uid:
        return None, (
            f"[emperor-tyrant] vassal {path} is a symbolic link owned by uid {link.st_uid} to a file"
            f" owned by uid {info.st_uid}: refused"
        )
    if tyrant and info.st_nlink != 1:
        return None, (
            f"[emperor-tyrant] vassal {path} has {info.st_nlink} hard links: refused"
            " (a hard link does not say who made it)"
        )
    return VassalFile(path, digest, info.st_uid, info.st_gid, info.st_mtime, real), ""


# inotify events that can mean a vassal file appeared, changed or went (inotify(7)).
IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = (
    0x2,
    0x4,
    0x8,
    0x40,
    0x80,
    0x100,
    0x200,
)
WATCHED = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE


class DirectoryWatch:
    """inotify on the vassal directories (Linux), through libc: a change wakes the emperor at once.

    The periodic scan stays as the fallback, for systems or patterns inotify cannot watch.
    """

    def __init__(self, patterns: list[str]) -> None:
        self.fd: int | None = None
        libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(libc, "inotify_init1"):
            return
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            log(f"emperor: inotify unavailable ({os.strerror(ctypes.get_errno())}): scanning only")
            return
        watched = 0
        for pattern in patterns:
            directory = pattern if os.path.isdir(pattern) else os.path.dirname(pattern)
            if glob.has_magic(directory) or not os.path.isdir(directory):
                continue
            if libc.inotify_add_watch(fd, os.fsencode(directory), WATCHED) >= 0:
                watched += 1
            else:
                log(f"emperor: cannot watch {directory} ({os.strerror(ctypes.get_errno())}): scanning it")
        if watched:
            self.fd = fd
        else:
            os.close(fd)

    def changed(self) -> bool:
        """Read the pending events; whether there were any."""
        assert self.fd is not None
        seen = False
        while True:
            try:
                seen = bool(os.read(self.fd, 65536)) or seen
            except BlockingIOError:
                return seen

"""The one way binserve opens files a user may influence.

Every file binserve writes (pidfile, log file, emperor state) and every file it reads (ini
files, their includes and ``@(...)``, vassal files) may sit in a directory that a less
privileged user can write. Such a user can plant a symlink or a hard link there, a FIFO that
blocks ``open()``, or a file of unbounded size (``/dev/zero``, a sparse 4 GB file). So:

* files we *replace* (pidfile, state) are written to a fresh temporary created with
  ``O_EXCL | O_NOFOLLOW`` beside the target, then renamed over it: a planted link is
  replaced, never followed, and a reader never sees half a file; where the directory is not
  ours to write, only a regular file we own with a single link is rewritten in place;
* files we *append to* (logs) are opened with ``O_NOFOLLOW`` and must be a regular file with
  a single link: a symlink or a hard link planted at the name is refused;
* the directories above a file we write are walked one by one, following a symbolic link only
  if root or this user owns it: a link that the app's user puts in place of a directory above
  ``/home/app/logs/app.log`` cannot make root create or append to a file elsewhere;
* files we *read* are opened non-blocking (a FIFO cannot hang us), must be regular files, and
  are read up to a bound;
* a directory we keep files in apart from the users (a tyrant's state) must be a real
  directory that only we may write.

Every refusal is an ``OSError`` with a specific ``strerror``, so callers report it as they
report any I/O error: ``pidfile /run/app.pid: is a symbolic link: refused``.
"""

from __future__ import annotations

import errno
import os
import stat

# Large enough for any real configuration, small enough that reading one costs nothing.
MAX_CONFIG_BYTES = 1 << 20
# As the kernel's own limit on links followed in one lookup: a loop of links ends in an error.
MAX_LINK_HOPS = 40


class UnsafeFile(OSError):
    """A file refused for what it is (a link, a FIFO, too large), not for an I/O error."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(errno.EPERM, why, path)


def _refuse_link(path: str, exc: OSError) -> OSError:
    # O_NOFOLLOW on a symlink fails with ELOOP; say what it means.
    if exc.errno == errno.ELOOP:
        return UnsafeFile(path, "is a symbolic link: refused (a link there could redirect the write)")
    return exc


def kind(mode: int) -> str:
    """What a file of ``mode`` is, in words for a message: ``a FIFO``, ``a symbolic link`` ..."""
    kinds = (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((words for test, words in kinds if test(mode)), "a file of another kind")


def _describe(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "is a directory"
    return f"is {kind(mode)}, not a regular file"


def _regular(fd: int, path: str) -> os.stat_result:
    """``fd``'s status, if it is a regular file; else UnsafeFile naming what it is."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeFile(path, _describe(info.st_mode))
    return info


def open_parent(path: str) -> tuple[int, str]:
    """An ``O_PATH`` descriptor of the directory holding ``path``, and the name in it.

    Links on the way are followed only when owned by root or by this user: nobody else can make
    the walk end in another directory (``/var/run``, root's link, still leads to ``/run``).
    """
    directory, name = os.path.split(os.path.abspath(path))
    parts = directory.split("/")
    fd, walked, hops = _root(), "/", 0
    try:
        while parts:
            part = parts.pop(0)
            if part in ("", "."):
                continue
            where = os.path.normpath(os.path.join(walked, part))
            step = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            target = _follow(path, where, step, hops)
            if target is None:  # a directory: step is where we are now
                os.close(fd)
                fd, walked = step, where
                continue
            hops += 1
            parts[:0] = target.split("/")
            if target.startswith("/"):
                os.close(fd)
                fd, walked = _root(), "/"
    except BaseException:
        os.close(fd)
        raise
    return fd, name


def _root() -> int:
    return os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def _follow(path: str, where: str, step: int, hops: int) -> str | None:
    """None if ``step`` (open at ``where``) is a directory; else the link's target, if it may be followed.

    ``step`` is closed unless it is a directory.
    """
    info = os.fstat(step)
    if stat.S_ISDIR(info.st_mode):
        return None
    try:
        if not stat.S_ISLNK(info.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, f"{where} is not a directory", path)
        if info.st_uid not in (0, os.geteuid()):
            owner = f"owned by uid {info.st_uid}"
            raise UnsafeFile(
                path, f"{where}: is a symbolic link {owner}: refused (it could redirect the file)"
            )
        if hops >= MAX_LINK_HOPS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
        return os.readlink("", dir_fd=step)
    finally:
        os.close(step)


def write_replace(path: str, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically, never writing through a link planted there."""
    directory, name = open_parent(path)
    try:
        _replace_in(directory, name, data, mode)
    finally:
        os.close(directory)


def _replace_in(directory: int, name: str, data: bytes, mode: int) -> None:
    for attempt in range(100):
        tmp = f".{name}.{os.getpid()}.{attempt}.tmp"
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(tmp, flags, mode, dir_fd=directory)
        except FileExistsError:
            continue  # planted, or left by a crash: never reuse a name we did not create
        except PermissionError:
            # A directory we may not write (a pidfile an admin created for us in /run): only a
            # file of our own, with one link, is rewritten in place.
            _rewrite_own(directory, name, data)
            return
        break
    else:
        raise UnsafeFile(name, "no free temporary name beside it")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, name, src_dir_fd=directory, dst_dir_fd=directory)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=directory)
        except OSError:
            pass
        raise


def _rewrite_own(directory: int, name: str, data: bytes) -> None:
    try:
        fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory)
    except OSError as exc:
        raise _refuse_link(name, exc) from None
    try:
        info = _regular(fd, name)
        if info.st_nlink != 1 or info.st_uid != os.geteuid():
            raise UnsafeFile(name, "its directory is not writable, and it is not our own file to rewrite")
        os.ftruncate(fd, 0)
        os.write(fd, data)
    finally:
        os.close(fd)


def open_append(path: str, mode: int = 0o640) -> int:
    """A descriptor appending to ``path`` (created if missing): a regular file with one link, no symlink."""
    # O_NONBLOCK: opening a FIFO for writing would otherwise wait for a reader forever.
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    directory, name = open_parent(path)
    try:
        fd = os.open(name, flags, mode, dir_fd=directory)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a FIFO nobody reads
            raise UnsafeFile(path, "is a FIFO, not a regular file") from None
        raise _refuse_link(path, exc) from None
    finally:
        os.close(directory)
    try:
        info = _regular(fd, path)
        if info.st_nlink != 1:
            raise UnsafeFile(path, f"has {info.st_nlink} hard links: refused (a link could redirect it)")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bounded(path: str, limit: int = MAX_CONFIG_BYTES, follow: bool = True) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; ``follow=False`` refuses a symlink."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _refuse_link(path, exc) from None
    try:
        info = _regular(fd, path)
        if info.st_size > limit:
            raise UnsafeFile(path, f"is {info.st_size} bytes, over the limit of {limit}")
        chunks = []
        left = limit + 1  # a file growing while read must not slip past the bound
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:
            raise UnsafeFile(path, f"grew past the limit of {limit} bytes while read")
        return data
    finally:
        os.close(fd)


def private_directory(path: str) -> None:
    """Make sure ``path`` is a directory only this user may write (created 0755 if missing)."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeFile(path, "is not a directory: refused")
    if info.st_uid != os.geteuid():
        raise UnsafeFile(path, f"is owned by uid {info.st_uid}, not {os.geteuid()}: refused")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeFile(path, f"is writable by others (mode {info.st_mode & 0o7777:o}): refused")

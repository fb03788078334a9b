"""Running as another user: uid and gid dropped after the sockets are bound, chown-socket, and a
check that nginx's usual user can reach a unix socket as created.

The order is uWSGI's: bind as root (a port below 1024, a socket in /run), give the socket files
their owner, then drop groups, gid and uid, in that order (setgid is no longer allowed once the
uid is gone), and only then import the app, so its code never runs as root. A reload re-executes
the master as the unprivileged user; the sockets are inherited, and dropping to the user it
already is changes nothing.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from .config import Config
from .safefile import open_parent

# The users distributions run nginx's workers as: Debian and Ubuntu, Fedora/RHEL/Alpine, Arch.
NGINX_USERS = ("www-data", "nginx", "http")
MAX_ID = 0xFFFFFFFE  # (uid_t)-1 means "unchanged" to chown and setreuid


class PrivilegeError(Exception):
    """A uid, gid or chown-socket setting cannot be applied; the message names the option and why."""


def _number(option: str, value: str) -> int:
    number = int(value)
    if number > MAX_ID:
        raise PrivilegeError(f"option '{option}': {value} is out of range (0..{MAX_ID})")
    return number


def lookup_user(option: str, value: str) -> tuple[int, pwd.struct_passwd | None]:
    """The uid for a user name or number, with its passwd entry (None for a number without one)."""
    if not value:
        raise PrivilegeError(f"option '{option}': expected a user name or number, got an empty value")
    if value.isdigit():
        uid = _number(option, value)
        try:
            return uid, pwd.getpwuid(uid)
        except KeyError:
            return uid, None
    try:
        entry = pwd.getpwnam(value)
    except KeyError:
        raise PrivilegeError(f"option '{option}': there is no user named {value!r} on this machine") from None
    return entry.pw_uid, entry


def lookup_group(option: str, value: str) -> int:
    """The gid for a group name or number."""
    if not value:
        raise PrivilegeError(f"option '{option}': expected a group name or number, got an empty value")
    if value.isdigit():
        return _number(option, value)
    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise PrivilegeError(
            f"option '{option}': there is no group named {value!r} on this machine"
        ) from None


def user_name(uid: int) -> str | None:
    """The name of ``uid``, or None when the user database has no entry for it."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def group_name(gid: int) -> str | None:
    """The name of ``gid``, or None when the group database has no entry for it."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def describe_user(uid: int) -> str:
    """``33 (www-data)``, or the bare number for a uid without a passwd entry."""
    name = user_name(uid)
    return f"{uid} ({name})" if name else str(uid)


def describe_group(gid: int) -> str:
    """``33 (www-data)``, or the bare number for a gid without a group entry."""
    name = group_name(gid)
    return f"{gid} ({name})" if name else str(gid)


@dataclass(frozen=True)
class Privileges:
    """uid, gid and chown-socket, resolved to numbers before anything is bound."""

    uid: int | None = None
    gid: int | None = None
    user: str | None = None  # the uid's name: its supplementary groups come from the group database
    socket_owner: tuple[int, int] | None = None  # for os.chown; -1 leaves that part unchanged

    @classmethod
    def from_config(cls, config: Config) -> Privileges:
        """Resolve the names and numbers in uid, gid and chown-socket; an unknown one is an error."""
        uid = gid = None
        user = None
        if config.uid is not None:
            uid, entry = lookup_user("uid", config.uid)
            if entry is not None:
                user, gid = entry.pw_name, entry.pw_gid
            elif config.gid is None:
                # Keeping root's group would leave the app a member of group 0.
                raise PrivilegeError(
                    f"option 'uid': uid {uid} has no entry in the user database, so its group is "
                    "unknown: set gid too"
                )
        if config.gid is not None:
            gid = lookup_group("gid", config.gid)
        owner = _socket_owner(config.chown_socket) if config.chown_socket is not None else None
        return cls(uid, gid, user, owner)

    def chown(self, paths: Sequence[str]) -> None:
        """Give the unix socket files at ``paths`` to the chown-socket owner."""
        if self.socket_owner is None:
            return
        for path in paths:
            try:
                # Neither the file nor a directory above it through someone else's link: whoever
                # may write there could have put a link since bind, and root would give away
                # another file of that name.
                directory, name = open_parent(path)
                try:
                    os.chown(name, *self.socket_owner, dir_fd=directory, follow_symlinks=False)
                finally:
                    os.close(directory)
            except OSError as exc:
                raise PrivilegeError(f"option 'chown-socket': cannot chown {path}: {exc.strerror}") from None

    def drop(self) -> str | None:
        """Switch to gid and uid (root only); returns a line for the log, or None if nothing changed.

        Already being that user and group is not an error: a reload re-executes the master after
        the first image dropped privileges.
        """
        if self.uid is None and self.gid is None:
            return None
        euid, egid = os.geteuid(), os.getegid()
        if euid != 0:
            if self.uid in (None, euid) and self.gid in (None, egid):
                return None
            wanted = [f"uid {describe_user(self.uid)}"] if self.uid is not None else []
            if self.gid is not None:
                wanted.append(f"gid {describe_group(self.gid)}")
            raise PrivilegeError(
                f"cannot switch to {' and '.join(wanted)}: binserve runs as uid {describe_user(euid)}, gid "
                f"{describe_group(egid)}, and only root may change user or group. Start it as root "
                "(it binds the sockets, then drops to uid and gid), or remove the uid and gid options"
            )
        assert self.gid is not None, "from_config sets the user's group along with uid"
        try:
            if self.user is not None:
                os.initgroups(self.user, self.gid)
            else:
                os.setgroups([self.gid])  # root's own supplementary groups must not stay with the app
            os.setgid(self.gid)
            if self.uid is not None:
                os.setuid(self.uid)
        except OSError as exc:
            raise PrivilegeError(f"cannot drop privileges: {exc.strerror}") from None
        groups = ", ".join(map(str, sorted(os.getgroups())))
        return (
            f"dropped privileges: running as uid {describe_user(os.getuid())}, "
            f"gid {describe_group(os.getgid())}, groups {groups}"
        )


def _socket_owner(value: str) -> tuple[int, int]:
    """``(uid, gid)`` for chown-socket's USER, USER:GROUP, USER: (the user's group) or :GROUP."""
    user, sep, group = value.partition(":")
    if not user and not group:
        raise PrivilegeError(f"option 'chown-socket': expected USER, USER:GROUP or :GROUP, got {value!r}")
    uid, gid, entry = -1, -1, None
    if user:
        uid, entry = lookup_user("chown-socket", user)
    if group:
        gid = lookup_group("chown-socket", group)
    elif sep:
        if entry is None:
            raise PrivilegeError(
                f"option 'chown-socket': {value!r}: uid {uid} has no entry in the user database, "
                "so its group is unknown: write USER:GROUP"
            )
        gid = entry.pw_gid
    return uid, gid


# -- can nginx connect? ------------------------------------------------------------------------
@dataclass(frozen=True)
class Account:
    """A user as the kernel's permission checks see it: its uid and all its groups."""

    name: str
    uid: int
    gid: int
    groups: frozenset[int]


def nginx_accounts() -> list[Account]:
    """The usual nginx users that exist here; root is left out (it may connect anywhere)."""
    found = []
    for name in NGINX_USERS:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid != 0:
            # nginx's workers call initgroups, so the supplementary groups count.
            groups = frozenset(os.getgrouplist(name, entry.pw_gid))
            found.append(Account(name, entry.pw_uid, entry.pw_gid, groups))
    return found


def permits(account: Account, info: os.stat_result, bit: int) -> bool:
    """Whether ``account`` has permission ``bit`` (``stat.S_IWOTH``, ``stat.S_IXOTH``) on a file.

    The kernel uses one class, the first that applies: owner, then group, then other; an owner
    without the bit is refused even when "other" has it. ACLs are not consulted.
    """
    if info.st_uid == account.uid:
        return bool(info.st_mode & (bit << 6))
    if info.st_gid in account.groups:
        return bool(info.st_mode & (bit << 3))
    return bool(info.st_mode & bit)


def _path_stats(path: str) -> tuple[list[tuple[str, os.stat_result]], tuple[str, os.stat_result]]:
    """Every directory on the way to ``path`` (through symlinks too), and the file itself."""
    seen: dict[str, os.stat_result] = {}
    for route in (os.path.abspath(path), os.path.realpath(path)):
        for parent in reversed(_parents(route)):
            if parent not in seen:
                seen[parent] = os.stat(parent)
    return list(seen.items()), (path, os.stat(path))


def _parents(path: str) -> list[str]:
    parents = []
    while (parent := os.path.dirname(path)) != path:
        parents.append(parent)
        path = parent
    return parents


def _owner(info: os.stat_result) -> str:
    return f"{user_name(info.st_uid) or info.st_uid}:{group_name(info.st_gid) or info.st_gid}"


def access_warning(
    account: Account, directories: Sequence[tuple[str, os.stat_result]], sock: tuple[str, os.stat_result]
) -> str | None:
    """The warning for ``account`` and the socket described by these stats, or None if it may connect.

    connect() needs search (x) permission on every directory on the way and write permission on
    the socket file; the first closed directory is named (further ones would be noise).
    """
    closed = next((item for item in directories if not permits(account, item[1], stat.S_IXOTH)), None)
    writable = permits(account, sock[1], stat.S_IWOTH)
    if closed is None and writable:
        return None
    path, info = sock
    problems = []
    if closed is not None:
        where, dir_info = closed
        problems.append(
            f"the directory {where} ({stat.filemode(dir_info.st_mode)} {_owner(dir_info)}) is not searchable "
            f"by {account.name}: give {account.name} search (x) permission on it, or put the socket in a "
            "directory nginx can traverse (such as /run/APP/)"
        )
    if not writable:
        group = group_name(account.gid) or account.gid
        problems.append(
            f"the socket ({stat.filemode(info.st_mode)} {_owner(info)}) is not writable by {account.name}: "
            f"set chmod-socket = 660 with chown-socket = :{group}, or chmod-socket = 666"
        )
    return (
        f"warning: if nginx runs as {account.name}, it cannot connect to {path}: it would log "
        f'"connect() to unix:{path} failed (13: Permission denied)" and answer 502 Bad Gateway; '
        + "; ".join(problems)
    )


def nginx_access_warnings(path: str) -> list[str]:
    """One warning per usual nginx user present here that could not connect to the unix socket ``path``."""
    accounts = nginx_accounts()
    if not accounts:
        return []
    directories, sock = _path_stats(path)
    return [text for account in accounts if (text := access_warning(account, directories, sock))]

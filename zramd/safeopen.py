"""Open a path without following symbolic links: an openat walk from ``/``.

Used by the backing file and the config file, both of which decide what the
server does, so a name that someone else could redirect must be refused.

Each component of the path is opened with ``O_PATH | O_NOFOLLOW`` relative
to the directory before it, so no symbolic link is followed anywhere on the
path and the file opened is the one inside the directories checked (no race
between a check and the open).  ``walk_to_parent`` returns the open
directory holding the last name; ``open_trusted_regular`` also checks each
directory (owned by root or us, not writable by others unless sticky, as
/tmp is) and opens the last name ``O_RDONLY | O_NONBLOCK | O_NOFOLLOW`` (a
FIFO does not block) and accepts only a regular file owned by root or us,
not writable by group or others.

A refusal is an ``UnsafePath`` (an OSError) of one line that starts with
what the file is (``"config file PATH"``); any other failure (no such file,
permission denied) is the plain OSError of the call, for the caller to word.

No state, no locking; imports nothing from zramd.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

DirCheck = Callable[[str, os.stat_result], None]


class UnsafePath(OSError):
    """The path cannot be used safely; the message is one line."""


def is_link(name: str, dir_fd: int) -> bool:
    """Whether ``name`` in the directory ``dir_fd`` is a symbolic link."""
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def link_message(what: str, path: str, link: str) -> str:
    """One line: ``path`` is, or goes through, the symbolic link ``link``."""
    where = "is" if os.path.abspath(path) == link else f"goes through {link}, which is"
    return (
        f"{what} {path} {where} a symbolic link: zramd never follows links here "
        f"(give the real path, {os.path.realpath(path)})"
    )


def walk_to_parent(path: str, what: str, check_dir: DirCheck | None = None) -> tuple[int, str]:
    """Open the directory holding ``path`` without following any symbolic
    link on the way; return ``(dir_fd, file name)``.  ``check_dir(dir path,
    its fstat)`` is called for ``/`` and every directory below it."""
    full = os.path.abspath(path)
    parts = [p for p in full.split("/") if p]
    if not parts:
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    dir_fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    walked = ""
    try:
        if check_dir is not None:
            check_dir("/", os.fstat(dir_fd))
        for part in parts[:-1]:
            walked += "/" + part
            try:
                fd = os.open(
                    part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
                )
            except OSError as exc:
                if exc.errno == errno.ENOTDIR and is_link(part, dir_fd):
                    raise UnsafePath(errno.ELOOP, link_message(what, path, walked)) from None
                raise
            os.close(dir_fd)
            dir_fd = fd
            if check_dir is not None:
                check_dir(walked, os.fstat(dir_fd))
        return dir_fd, parts[-1]
    except BaseException:
        os.close(dir_fd)
        raise


def trusted_dir_check(what: str, path: str) -> DirCheck:
    """A ``check_dir`` that refuses a directory someone else could change:
    owned by another user than root or us, or writable by others without
    the sticky bit."""

    def check(dir_path: str, st: os.stat_result) -> None:
        if st.st_uid not in (0, os.geteuid()):
            raise UnsafePath(
                errno.EPERM,
                f"{what} {path}: directory {dir_path} belongs to another user "
                f"(uid {st.st_uid}): refused",
            )
        if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
            raise UnsafePath(
                errno.EPERM,
                f"{what} {path}: directory {dir_path} is writable by others without the "
                f"sticky bit (mode {stat.S_IMODE(st.st_mode):04o}): refused",
            )

    return check


def check_trusted_file(what: str, path: str, st: os.stat_result) -> None:
    """Refuse a file owned by another user than root or us, or writable by
    group or others."""
    if st.st_uid not in (0, os.geteuid()):
        raise UnsafePath(
            errno.EPERM, f"{what} {path} belongs to another user (uid {st.st_uid}): refused"
        )
    if st.st_mode & 0o022:
        raise UnsafePath(
            errno.EPERM,
            f"{what} {path} is writable by others (mode {stat.S_IMODE(st.st_mode):o}): "
            f"refused (chmod go-w {path})",
        )


def check_owner_only(what: str, path: str, st: os.stat_result) -> None:
    """Refuse a file or device that is not ours alone: another owner than
    this process's euid, or any access for group or others."""
    uid = os.geteuid()
    if st.st_uid != uid:
        raise UnsafePath(
            errno.EPERM,
            f"{what} {path} belongs to uid {st.st_uid}, not to this server's uid {uid}: refused",
        )
    if st.st_mode & 0o077:
        raise UnsafePath(
            errno.EPERM,
            f"{what} {path} is accessible to group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 it first",
        )


def open_trusted_regular(path: str, what: str) -> int:
    """A read-only descriptor of the regular file ``path``, every directory
    on the way and the file itself checked; the caller closes it."""
    dir_fd, name = walk_to_parent(path, what, trusted_dir_check(what, path))
    try:
        try:
            fd = os.open(
                name,
                os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC,
                dir_fd=dir_fd,
            )
        except OSError as exc:
            if exc.errno == errno.ELOOP and is_link(name, dir_fd):
                raise UnsafePath(
                    errno.ELOOP, link_message(what, path, os.path.abspath(path))
                ) from None
            raise
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(errno.EINVAL, f"{what} {path} is not a regular file: refused")
        check_trusted_file(what, path, st)
        return fd
    except BaseException:
        os.close(fd)
        raise

"""Socket and pid-file paths: claiming them at start, signalling readiness.

A path zramd is about to bind (the NBD socket, the control socket) is in one
of four states, and each has one answer (docs/design.md#security):

- nothing there: bind;
- a socket nobody listens on (left by ``kill -9``): stale, remove it;
- a socket a server accepts connections on: refuse to start;
- anything else (a regular file, a directory, a symbolic link, a socket we
  cannot probe): refuse to start and never delete it.

The pid file follows the same rule: one naming a process that is gone is
stale and removed; a live one refuses the start; anything that is not a
regular file of ours is left alone.  It is created exclusively
(``O_EXCL | O_NOFOLLOW``, mode 0600) once the sockets listen, so that its
existence means "ready".  ``sd_notify`` sends systemd's ``READY=1``
datagram itself (no libsystemd).

There is a window between the check and the bind in which another process
could create the path; bind then fails with one line.  No state, no locking.
"""

from __future__ import annotations

import os
import socket
import stat


class PathError(RuntimeError):
    """A path we must bind or create is taken; the message is one line."""


def peer_uid_allowed(uid: int) -> bool:
    """Whether a peer with this uid may use a zramd Unix socket (NBD or
    control): our own uid and root.  The sockets' modes (0600) say so
    already; this check holds where a mode was opened up by mistake."""
    return uid in (0, os.getuid())


def socket_state(path: str) -> str:
    """'absent', 'stale', 'live' or 'other' (not a socket, or not probeable)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "absent"
    if not stat.S_ISSOCK(st.st_mode):
        return "other"
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return "live"
    except ConnectionRefusedError:
        return "stale"
    except OSError:
        return "other"  # e.g. EACCES: someone else's socket
    finally:
        probe.close()


def claim_socket_path(path: str, label: str) -> bool:
    """Make ``path`` free to bind: remove a stale socket, refuse anything
    else that is there.  Returns whether a stale socket was removed."""
    state = socket_state(path)
    if state == "absent":
        return False
    if state == "live":
        raise PathError(f"{label} {path} is in use by another server")
    if state == "other":
        what = _file_type(path)
        raise PathError(f"{label} path {path} is taken by {what}: not removing it")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise PathError(f"cannot remove the stale {label} {path}: {exc.strerror}") from None
    return True


def _file_type(path: str) -> str:
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return "something that vanished"
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISSOCK, "a socket we cannot probe"),
        (stat.S_ISFIFO, "a FIFO"),
    ):
        if test(mode):
            return name
    return "a device or special file"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def claim_pid_file(path: str) -> None:
    """Refuse a pid file naming a live process, or anything that is not
    our regular pid file; remove a stale one."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise PathError(f"pid file path {path} is taken by {_file_type(path)}: not removing it")
    if st.st_uid != os.geteuid():
        raise PathError(f"pid file {path} belongs to uid {st.st_uid}: not removing it")
    try:
        with open(path, "rb") as f:
            pid = int(f.read(32).strip() or b"x")
    except ValueError:
        raise PathError(f"{path} exists and is not a pid file: not removing it") from None
    if pid > 0 and _pid_alive(pid):
        raise PathError(
            f"pid file {path} names a running process ({pid}): is zramd already running?"
        )
    os.unlink(path)


def write_pid_file(path: str, pid: int) -> None:
    """Create ``path`` exclusively (no symlinks followed), mode 0600."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise PathError(f"cannot create pid file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(f"{pid}\n")


def remove_pid_file(path: str, pid: int) -> None:
    """Remove ``path`` if it still names ``pid`` (never someone else's)."""
    try:
        with open(path, "rb") as f:
            if int(f.read(32).strip() or b"0") != pid:
                return
        os.unlink(path)
    except (OSError, ValueError):
        pass


def sd_notify(message: str) -> str | None:
    """Send ``message`` (e.g. ``READY=1``) to systemd's NOTIFY_SOCKET if
    set; return None, or why it failed."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return None
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        return exc.strerror or str(exc)
    return None

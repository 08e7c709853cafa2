"""TLS for the NBD endpoint: checking the credentials nbdkit will load, and
the URIs and commands a client uses to attach.

nbdkit does the TLS itself (GnuTLS): ``--tls=require`` with either a
pre-shared key file (``--tls-psk FILE``, lines ``username:hexkey``) or an
X.509 directory (``--tls-certificates DIR`` with ``server-cert.pem``,
``server-key.pem`` and, for ``--tls-verify-peer``, ``ca-cert.pem``).  This
module only checks, before nbdkit starts, that the files are there, well
formed and readable by nobody else (a key others can read authenticates
them too), so that a mistake is one line instead of a failed handshake
later.  Why TCP needs TLS: docs/design.md#security.

No state, no locking.
"""

from __future__ import annotations

import os
import re
import stat
from urllib.parse import quote

_PSK_LINE = re.compile(r"^([^:\s]+):([0-9a-fA-F]+)$")
CERT_FILES = ("server-cert.pem", "server-key.pem")


class TLSError(ValueError):
    """Bad TLS credentials; the message is one line naming the file."""


def _check_private(path: str, what: str) -> os.stat_result:
    """``path`` is a regular file (not a symlink) that only its owner (us or
    root) can read."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise TLSError(f"{what} {path}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise TLSError(f"{what} {path} is a symbolic link: give the file itself")
    if not stat.S_ISREG(st.st_mode):
        raise TLSError(f"{what} {path} is not a regular file")
    if st.st_uid not in (0, os.geteuid()):
        raise TLSError(f"{what} {path} belongs to uid {st.st_uid}, not to this user or root")
    if st.st_mode & 0o077:
        raise TLSError(
            f"{what} {path} is accessible by others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}): chmod 600 {path}"
        )
    if not os.access(path, os.R_OK):
        raise TLSError(f"{what} {path} is not readable")
    return st


def psk_username(path: str) -> str:
    """Check a PSK file (``username:hexkey`` lines, owner-only); return the
    first username (the one the start banner shows)."""
    _check_private(path, "PSK file")
    users = []
    with open(path, encoding="ascii", errors="replace") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            m = _PSK_LINE.match(line)
            if not m or len(m.group(2)) % 2:
                raise TLSError(f"PSK file {path} line {number} is not username:hexkey")
            if len(m.group(2)) < 32:
                raise TLSError(
                    f"PSK file {path} line {number}: the key is shorter than "
                    f"16 bytes (32 hex digits)"
                )
            users.append(m.group(1))
    if not users:
        raise TLSError(f"PSK file {path} holds no key (lines username:hexkey)")
    return users[0]


def check_certificates(directory: str, verify_peer: bool) -> None:
    """Check an nbdkit X.509 directory: certificate and private key present,
    the key owner-only; ``ca-cert.pem`` too when client certificates are
    verified."""
    if not os.path.isdir(directory):
        raise TLSError(f"TLS certificates directory {directory} does not exist")
    needed = CERT_FILES + (("ca-cert.pem",) if verify_peer else ())
    for name in needed:
        if not os.path.isfile(os.path.join(directory, name)):
            raise TLSError(f"TLS certificates directory {directory} has no {name}")
    _check_private(os.path.join(directory, "server-key.pem"), "TLS private key")


def nbd_uri(
    *,
    socket_path: str | None,
    address: str,
    port: int | None,
    tls: bool,
    psk_file: str | None,
    psk_user: str | None,
    certificates: str | None,
) -> str:
    """The NBD URI a client (libnbd, nbdinfo, qemu-img) attaches with."""
    query = []
    if socket_path:
        query.append(f"socket={quote(os.path.abspath(socket_path), safe='/')}")
    if tls and psk_file:
        query.append(f"tls-psk-file={quote(os.path.abspath(psk_file), safe='/')}")
    elif tls and certificates:
        query.append(f"tls-certificates={quote(os.path.abspath(certificates), safe='/')}")
    user = f"{psk_user}@" if tls and psk_user else ""
    scheme = "nbds" if tls else "nbd"
    if socket_path:
        return f"{scheme}+unix://{user}/?{'&'.join(query)}"
    host = f"[{address}]" if ":" in address else address
    suffix = f"?{'&'.join(query)}" if query else ""
    return f"{scheme}://{user}{host}:{port}/{suffix}"


def qemu_object(psk_file: str | None, psk_user: str | None, certificates: str | None) -> str:
    """qemu's ``-object`` for the client credentials (qemu reads
    ``DIR/keys.psk`` for a PSK, ``DIR/ca-cert.pem`` for X.509)."""
    if psk_file:
        return (
            f"tls-creds-psk,id=tls0,endpoint=client,"
            f"dir={os.path.dirname(os.path.abspath(psk_file))},username={psk_user}"
        )
    assert certificates is not None
    return f"tls-creds-x509,id=tls0,endpoint=client,dir={os.path.abspath(certificates)}"

"""The control socket: one JSON request per line, one JSON reply per line.

Request:  ``{"cmd": "stats", "args": {...}}``
Reply:    ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``

``ControlServer`` owns a listening Unix socket (mode 0600, and peers whose
uid is neither ours nor root are refused via SO_PEERCRED) and one accept
thread; each client connection gets its own daemon thread.  Threads block in
C (``accept``, ``recv``), never spin.  The handler is called from those
threads and must do its own locking (the store's commands do).  ``stop()``
shuts the listening socket down, which wakes ``accept``, and unlinks the path.

``call()`` is the client side used by the CLI and the tests.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading

log = logging.getLogger("zramd.control")

MAX_LINE_BYTES = 64 * 1024
TIMEOUT_SECONDS = 30.0


class ControlError(RuntimeError):
    """The server refused a command, or could not be reached."""


def unix_socket_in_use(path: str) -> bool:
    """Whether a server accepts connections on the Unix socket ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


class ControlServer:
    def __init__(self, path: str, handler):
        self.path = path
        self.handler = handler  # dict request -> dict reply
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from .sockets import PathError, claim_socket_path

        try:  # a stale socket is removed; anything else is never deleted
            claim_socket_path(self.path, "control socket")
        except PathError as exc:
            raise ControlError(str(exc)) from None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(self.path)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept_loop, name="zramd-control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        if self._thread is not None:
            self._thread.join(5)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _accept_loop(self) -> None:
        while True:
            sock = self._sock
            if sock is None:
                return
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(
                target=self._serve_client, args=(conn,), name="zramd-control-client", daemon=True
            ).start()

    def _peer_allowed(self, conn: socket.socket) -> bool:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return uid in (0, os.getuid())

    def _serve_client(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as stream:
            if not self._peer_allowed(conn):
                return
            for line in stream:
                if len(line) > MAX_LINE_BYTES:
                    reply = {"ok": False, "error": "request too long"}
                else:
                    reply = self._handle_line(line)
                stream.write(json.dumps(reply).encode() + b"\n")
                stream.flush()

    def _handle_line(self, line: bytes) -> dict:
        try:
            request = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "malformed request: not JSON"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {
                "ok": False,
                "error": 'malformed request: expected {"cmd": NAME, "args": {...}}',
            }
        try:
            return {"ok": True, "result": self.handler(request)}
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # never kill the server for one bad command
            log.exception("control command %r failed", request.get("cmd"))
            return {"ok": False, "error": f"internal error: {exc}"}


def call(path: str, cmd: str, timeout: float = TIMEOUT_SECONDS, **args):
    """Send one command; return its result or raise ControlError."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(json.dumps({"cmd": cmd, "args": args}).encode() + b"\n")
            with sock.makefile("rb") as stream:
                line = stream.readline(MAX_LINE_BYTES + 1)
    except FileNotFoundError:
        raise ControlError(f"no zramd control socket at {path} (is the server running?)") from None
    except OSError as exc:
        raise ControlError(f"cannot reach zramd at {path}: {exc.strerror or exc}") from None
    if not line:
        raise ControlError(f"zramd at {path} closed the connection without a reply")
    reply = json.loads(line)
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "unknown error"))
    return reply.get("result")

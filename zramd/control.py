"""The control socket: one JSON request per line, one JSON reply per line.

Request:  ``{"cmd": "stats", "args": {...}}``
Reply:    ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``

``ControlServer`` owns a listening Unix socket (mode 0600, and peers whose
uid is neither ours nor root are refused via SO_PEERCRED) and one accept
thread; each client connection gets its own daemon thread.  Threads block in
C (``accept``, ``recv``), never spin.  The handler is called from those
threads and must do its own locking (the store's commands do).  ``stop()``
shuts the listening socket down, which wakes ``accept``, and unlinks the path.

Hostile or broken clients (docs/design.md#security): a request line is
read with ``recv`` into a buffer that never holds more than
``max_line_bytes`` + 1 bytes; a longer line gets one error reply and the
connection is closed.  A client that does not complete a request line
within ``idle_timeout_s`` (of connecting or of its last reply) is
disconnected; at most ``max_clients`` are served at once (one more gets
an error line and is closed at once, by the accept thread).  A connection's
next request waits for a pause that grows with what its last one cost
(``MIN_REQUEST_INTERVAL_S``, ``REQUEST_COST_FACTOR``), requests of all
connections together start at most one per ``ADMISSION_INTERVAL_S`` (turns
given out under ``_admission_lock``, waited for without it), and a line that does
not start with ``{`` is refused before any parsing.  Every request
gets exactly one reply line, whatever it holds: bad JSON, deep nesting
(the parser's RecursionError, and a nesting limit on what parsed), wrong
types, huge numbers; error texts are cut to ``MAX_ERROR_CHARS`` so a
request is never echoed back whole.  A client thread never dies of an
exception.

``call()`` is the client side used by the CLI and the tests.
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import struct
import threading
import time

from .sockets import peer_uid_allowed

log = logging.getLogger("zramd.control")

MAX_LINE_BYTES = 64 * 1024
TIMEOUT_SECONDS = 30.0
# A control client is a command-line tool or a metrics scrape: one request,
# one reply, then it hangs up.  These bound what a stuck or hostile one costs.
MAX_CLIENTS = 8
CLIENT_IDLE_TIMEOUT_S = 10.0
MAX_NESTING = 8  # requests are {"cmd": ..., "args": {key: scalar}}: depth 2
MAX_ERROR_CHARS = 300
# What a request costs the I/O path: it runs on a thread of nbdkit's process,
# under the GIL every request thread needs.  After each reply a connection
# waits at least MIN_REQUEST_INTERVAL_S since that request began, and at
# least REQUEST_COST_FACTOR times what the request took, so one connection
# holds the GIL at most 1/(1 + factor) of the time; a hang-up ends the wait
# (docs/design.md#security).
MIN_REQUEST_INTERVAL_S = 0.002
REQUEST_COST_FACTOR = 50
MAX_PAUSE_S = 1.0  # a long writeback does not keep its connection waiting for long
# Across all connections together, requests start at most one per
# ADMISSION_INTERVAL_S: each one wakes a thread that takes the GIL from the
# request threads, and eight paced connections still woke one every 0.25 ms
# (docs/design.md#security).  200 a second is far more than the CLI, the
# wrapper and a scrape every second need.
ADMISSION_INTERVAL_S = 0.005


class ControlError(RuntimeError):
    """The server refused a command, or could not be reached."""


class ControlServer:
    def __init__(
        self,
        path: str,
        handler,
        max_clients: int = MAX_CLIENTS,
        idle_timeout_s: float = CLIENT_IDLE_TIMEOUT_S,
        max_line_bytes: int = MAX_LINE_BYTES,
    ):
        self.path = path
        self.handler = handler  # dict request -> dict reply
        self.max_clients = max_clients
        self.idle_timeout_s = idle_timeout_s
        self.max_line_bytes = max_line_bytes
        self._client_slots = threading.BoundedSemaphore(max_clients)
        self._admission_lock = threading.Lock()
        self._next_admission = 0.0  # time.monotonic() the next request may start
        self.refused_clients = 0  # over max_clients (accept thread only)
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
            if not self._client_slots.acquire(blocking=False):
                self.refused_clients += 1
                conn.settimeout(1.0)
                error = f"too many control clients (at most {self.max_clients} at once)"
                self._send(conn, {"ok": False, "error": error})
                conn.close()
                continue
            try:
                threading.Thread(
                    target=self._serve_client,
                    args=(conn,),
                    name="zramd-control-client",
                    daemon=True,
                ).start()
            except RuntimeError:  # cannot start a thread: refuse this one
                self._client_slots.release()
                conn.close()

    def _peer_allowed(self, conn: socket.socket) -> bool:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return peer_uid_allowed(uid)

    def _serve_client(self, conn: socket.socket) -> None:
        try:
            with conn:
                if not self._peer_allowed(conn):
                    return
                for line in self._lines(conn):
                    conn.settimeout(self.idle_timeout_s)  # the reply: a client that does not read
                    if line is None:
                        error = f"request longer than {self.max_line_bytes} bytes"
                        self._send(conn, {"ok": False, "error": error})
                        return  # the rest of that line is not worth reading
                    wait = self._admission_wait()
                    if wait > 0:
                        _pause(conn, wait)
                    started = time.monotonic()
                    if not self._send(conn, self._handle_line(line)):
                        return
                    took = time.monotonic() - started
                    # Pace this connection's next request by what this one cost
                    # (waiting releases the GIL): docs/design.md#security
                    pause = max(MIN_REQUEST_INTERVAL_S - took, REQUEST_COST_FACTOR * took)
                    _pause(conn, min(MAX_PAUSE_S, pause))
        except Exception:  # never let a client thread die with a traceback
            log.exception("control client failed")
        finally:
            self._client_slots.release()

    def _admission_wait(self) -> float:
        """Seconds until this request's turn: turns are ADMISSION_INTERVAL_S
        apart across every connection, given out in arrival order."""
        with self._admission_lock:
            now = time.monotonic()
            turn = max(now, self._next_admission)
            self._next_admission = turn + ADMISSION_INTERVAL_S
        return turn - now

    def _lines(self, conn: socket.socket):
        """Yield request lines (without the newline); None for a line longer
        than ``max_line_bytes``.  Holds at most ``max_line_bytes`` + 1 bytes.
        Each line must arrive whole within ``idle_timeout_s`` of the previous
        reply (a byte now and then does not keep a client alive)."""
        limit = self.max_line_bytes
        buf = bytearray()
        deadline = time.monotonic() + self.idle_timeout_s
        while True:
            newline = buf.find(b"\n")
            if newline >= 0:
                line = bytes(buf[:newline])
                del buf[: newline + 1]
                yield line if len(line) <= limit else None
                deadline = time.monotonic() + self.idle_timeout_s
                continue
            if len(buf) > limit:
                yield None
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                conn.settimeout(left)
                chunk = conn.recv(min(65536, limit + 1 - len(buf)))
            except OSError:  # timed out, reset
                return
            if not chunk:
                return
            buf += chunk

    def _send(self, conn: socket.socket, reply: dict) -> bool:
        try:
            data = json.dumps(reply).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            data = json.dumps({"ok": False, "error": f"internal error: {exc}"}).encode()
        try:
            conn.sendall(data + b"\n")
            return True
        except OSError:
            return False

    def _handle_line(self, line: bytes) -> dict:
        if not line.lstrip()[:1] == b"{":  # cheap: no parse of what cannot be a request
            return {"ok": False, "error": "malformed request: not JSON"}
        try:
            request = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: "[" * 60000
            return {"ok": False, "error": "malformed request: not JSON"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {
                "ok": False,
                "error": 'malformed request: expected {"cmd": NAME, "args": {...}}',
            }
        if request.get("args") is not None and not isinstance(request["args"], dict):
            return {"ok": False, "error": "args must be an object"}
        if _nesting(request) > MAX_NESTING:
            return {"ok": False, "error": f"malformed request: nested deeper than {MAX_NESTING}"}
        try:
            return {"ok": True, "result": self.handler(request)}
        except ControlError as exc:
            return {"ok": False, "error": _cut(str(exc))}
        except Exception as exc:  # never kill the server for one bad command
            log.exception("control command %s failed", _cut(repr(request.get("cmd")), 80))
            return {"ok": False, "error": _cut(f"internal error: {exc}")}


def _pause(conn: socket.socket, seconds: float) -> None:
    """Wait ``seconds``, or less if the client hangs up: a client that is
    gone does not keep its slot for the pause (data it sends meanwhile waits)."""
    poller = select.poll()
    poller.register(conn, select.POLLRDHUP | select.POLLHUP)
    poller.poll(seconds * 1000)


def _nesting(value) -> int:
    """How deeply lists and dicts nest in ``value`` (iterative: no recursion)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            if depth > MAX_NESTING:
                return depth
            stack.extend((child, depth + 1) for child in item)
    return deepest


def _cut(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """One line of at most ``limit`` characters: a request is never echoed
    back whole."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def call(path: str, cmd: str, timeout: float = TIMEOUT_SECONDS, **args):
    """Send one command; return its result or raise ControlError."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            try:
                sock.sendall(json.dumps({"cmd": cmd, "args": args}).encode() + b"\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused (e.g. too many clients): its one line may be there
            with sock.makefile("rb") as stream:
                line = stream.readline(MAX_LINE_BYTES + 1)
    except FileNotFoundError:
        raise ControlError(f"no zramd control socket at {path} (is the server running?)") from None
    except OSError as exc:
        raise ControlError(f"cannot reach zramd at {path}: {exc.strerror or exc}") from None
    if not line:
        raise ControlError(f"zramd at {path} closed the connection without a reply")
    try:
        reply = json.loads(line)
    except ValueError:
        raise ControlError(f"zramd at {path} sent a malformed reply") from None
    if not isinstance(reply, dict):
        raise ControlError(f"zramd at {path} sent a malformed reply")
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "unknown error"))
    return reply.get("result")

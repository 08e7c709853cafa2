"""Serving one page to many scrapers at a bounded cost: the metrics
endpoint's HTTP server and the cache of its page.

Why (docs/design.md#metrics): the endpoint is a loopback TCP port, so any
local user can scrape it as often and as many times at once as they like;
what that costs the device and the wrapper must not grow with it.

Data structures and invariants:

- ``PageCache`` holds the last rendering and when its read started.  A page
  is reused while younger than ``max_age_seconds``; at most one read runs at
  a time (``_reading``), and scrapes that need a newer page wait on the
  condition for that read instead of starting their own.  So the renderer
  (one ``stats`` command per device, one control connection at a time) runs
  at most once per ``max_age_seconds`` whatever the scrape rate.
- ``PageServer`` serves at most ``max_clients`` connections at once, each
  on its own daemon thread holding one of ``_slots``; a connection that
  finds no slot is answered 503 by the accept thread without blocking and
  closed.  A request head must arrive whole (at most ``MAX_REQUEST_BYTES``)
  within ``read_timeout_seconds`` of the connection, however slowly it
  trickles; then the connection is closed.  Threads: one accept thread plus
  at most ``max_clients``.  Every reply closes the connection.

Locking: ``PageCache._cond`` guards the page, its time and ``_reading``;
the renderer runs outside it.  ``PageServer`` shares only the cache and the
semaphore between threads.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from collections.abc import Callable

log = logging.getLogger("zramd.metrics")

# Bounds of the metrics endpoint (docs/design.md#metrics): the page is read
# again at most every CACHE_SECONDS; MAX_SCRAPES connections are served at
# once; a request head must come within READ_TIMEOUT_SECONDS.
CACHE_SECONDS = 1.0
MAX_SCRAPES = 4
READ_TIMEOUT_SECONDS = 5.0
MAX_REQUEST_BYTES = 8192  # a request line and its headers
PATHS = ("/metrics", "/")


class PageCache:
    """The last page ``render()`` gave, shared by every scrape for
    ``max_age_seconds`` from the start of the read that made it."""

    def __init__(
        self,
        render: Callable[[], bytes],
        max_age_seconds: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._render = render
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._cond = threading.Condition()
        self._page: bytes | None = None
        self._read_at = -math.inf  # clock() when the read of _page started
        self._reading = False
        self.reads = 0  # renders started (tests, and the bench's cost per scrape)

    def page(self, wait_seconds: float) -> bytes | None:
        """A page at most ``max_age_seconds`` old, reading one if needed; if
        another thread's read is in flight, wait for it (at most
        ``wait_seconds``; then the older page, or None if there is none)."""
        deadline = self._clock() + wait_seconds
        with self._cond:
            while True:
                if self._page is not None and self._clock() - self._read_at < self.max_age_seconds:
                    return self._page
                if not self._reading:
                    break
                left = deadline - self._clock()
                if left <= 0 or not self._cond.wait(left):
                    return self._page
            self._reading = True
            self.reads += 1
            started = self._clock()
        page = None
        try:
            page = self._render()
            return page
        finally:
            with self._cond:
                self._reading = False
                if page is not None:
                    self._page, self._read_at = page, started
                self._cond.notify_all()


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    )
    if status.startswith("503"):
        head += "Retry-After: 1\r\n"
    return head.encode() + b"\r\n" + body


BUSY = _response("503 Service Unavailable", b"busy: too many scrapes at once\n")


def read_head(conn: socket.socket, timeout_seconds: float) -> bytes | None:
    """The request head (up to the blank line), or None if it does not come
    whole within ``timeout_seconds`` or is longer than MAX_REQUEST_BYTES."""
    buf = bytearray()
    deadline = time.monotonic() + timeout_seconds
    while b"\r\n\r\n" not in buf and b"\n\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or len(buf) > MAX_REQUEST_BYTES:
            return None
        try:
            conn.settimeout(left)
            chunk = conn.recv(MAX_REQUEST_BYTES + 1 - len(buf))
        except OSError:  # timed out, reset
            return None
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


class PageServer:
    """A small HTTP/1.1 server of one page (``page(wait_seconds)``) on
    ``host:port``, bounded as the module docstring says."""

    def __init__(
        self,
        host: str,
        port: int,
        page: Callable[[float], bytes | None],
        content_type: str,
        max_clients: int = MAX_SCRAPES,
        read_timeout_seconds: float = READ_TIMEOUT_SECONDS,
        wait_seconds: float = 10.0,
    ):
        self._page = page
        self.content_type = content_type
        self.max_clients = max_clients
        self.read_timeout_seconds = read_timeout_seconds
        self.wait_seconds = wait_seconds
        self._slots = threading.BoundedSemaphore(max_clients)
        self.refused = 0  # connections answered 503 (accept thread only)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock: socket.socket | None = socket.create_server(
            (host, port), family=family, backlog=64
        )
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name="zramd-metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes accept
        except OSError:
            pass
        sock.close()
        self._thread.join(5)

    def _accept_loop(self) -> None:
        while True:
            sock = self._sock
            if sock is None:
                return
            try:
                conn, _ = sock.accept()
            except OSError:
                if self._sock is None:
                    return
                time.sleep(0.01)  # EMFILE and the like: do not spin
                continue
            if not self._slots.acquire(blocking=False):
                self.refused += 1
                _refuse(conn)
                continue
            try:
                threading.Thread(
                    target=self._serve, args=(conn,), name="zramd-metrics-client", daemon=True
                ).start()
            except RuntimeError:  # cannot start a thread: refuse this one
                self._slots.release()
                _refuse(conn)

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                head = read_head(conn, self.read_timeout_seconds)
                if head is None:
                    return
                reply = self._reply(head)
                conn.settimeout(self.read_timeout_seconds)  # a client that does not read
                conn.sendall(reply)
        except OSError:
            pass
        except Exception:  # never let a client thread die with a traceback
            log.exception("metrics scrape failed")
        finally:
            self._slots.release()

    def _reply(self, head: bytes) -> bytes:
        parts = head.split(b"\r\n" if b"\r\n" in head else b"\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return _response("400 Bad Request", b"bad request\n")
        method, target = parts[0], parts[1].split(b"?", 1)[0].decode("latin-1")
        if method not in (b"GET", b"HEAD"):
            return _response("405 Method Not Allowed", b"GET only\n")
        if target not in PATHS:
            return _response("404 Not Found", b"the metrics are at /metrics\n")
        page = self._page(self.wait_seconds)
        if page is None:
            return BUSY
        reply = _response("200 OK", page, self.content_type)
        return reply[: len(reply) - len(page)] if method == b"HEAD" else reply


def _refuse(conn: socket.socket) -> None:
    """503 without ever blocking the accept thread, then close."""
    try:
        conn.setblocking(False)
        try:
            conn.recv(MAX_REQUEST_BYTES)  # what came already: closing on it would reset
        except OSError:
            pass
        conn.send(BUSY)
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        conn.close()

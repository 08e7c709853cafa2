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
- ``PageServer`` has one loop thread that accepts and reads request heads
  without blocking, at most ``max_pending`` connections at a time; a head
  must arrive whole (at most ``MAX_REQUEST_BYTES``) within
  ``read_timeout_seconds`` of the connection, however slowly it trickles,
  or the connection is closed.  A whole head is answered on its own daemon
  thread holding one of ``max_clients`` slots (``_slots``); a connection
  that finds the pending table full or no slot free is answered 503 by the
  loop without blocking.  Threads: the loop plus at most ``max_clients``.
  Every reply closes the connection.

Locking: ``PageCache._cond`` guards the page, its time and ``_reading``;
the renderer runs outside it.  ``PageServer``'s pending table belongs to
the loop thread; the client threads share only the cache and the
semaphore.
"""

from __future__ import annotations

import logging
import math
import os
import selectors
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
MAX_PENDING = 128  # connections whose request head is still coming
ACCEPTS_PER_SECOND = 100  # connections taken from the backlog, on average
ACCEPT_BURST = 20  # ... and at once
LOOP_NICE = 19  # Linux: a thread's nice value is its own (setpriority on its tid)
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

    def fresh(self) -> bytes | None:
        """The page if it is young enough to reuse, else None; never waits
        for a read (the server's loop thread asks this)."""
        with self._cond:
            if self._clock() - self._read_at < self.max_age_seconds:
                return self._page
            return None

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


class AcceptBudget:
    """A token bucket of connections: ``per_second`` on average, ``burst``
    at once.  Only the loop thread uses it."""

    def __init__(
        self,
        per_second: float,
        burst: int = ACCEPT_BURST,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.per_second = per_second
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.per_second)
        self._at = now

    def wait_seconds(self) -> float:
        """0 if a connection may be accepted now, else how long until one may."""
        self._refill()
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.per_second

    def spend(self) -> None:
        self._refill()
        self._tokens -= 1


class _Connection:
    """A connection the loop thread owns: its request head so far, then the
    reply left to send, and the time by which both must be done."""

    __slots__ = ("sock", "head", "reply", "deadline")

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock = sock
        self.head = bytearray()
        self.reply = b""
        self.deadline = deadline


class PageServer:
    """A small HTTP/1.1 server of one page, ``cache``'s (a ``PageCache``),
    on ``host:port``, bounded as the module docstring says."""

    def __init__(
        self,
        host: str,
        port: int,
        cache: PageCache,
        content_type: str,
        max_clients: int = MAX_SCRAPES,
        read_timeout_seconds: float = READ_TIMEOUT_SECONDS,
        wait_seconds: float = 10.0,
        max_pending: int = MAX_PENDING,
        accepts_per_second: float = ACCEPTS_PER_SECOND,
    ):
        self.cache = cache
        self.content_type = content_type
        self.max_clients = max_clients
        self.read_timeout_seconds = read_timeout_seconds
        self.wait_seconds = wait_seconds
        self.max_pending = max_pending
        self._slots = threading.BoundedSemaphore(max_clients)
        self.budget = AcceptBudget(accepts_per_second)
        self.refused = 0  # connections answered 503 (loop thread only)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host, port), family=family, backlog=64)
        self._sock.setblocking(False)
        self.port = self._sock.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = False
        self._conns: dict[socket.socket, _Connection] = {}
        self._sel = selectors.DefaultSelector()
        self._thread = threading.Thread(target=self._loop, name="zramd-metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._wake_w.send(b"x")
        self._thread.join(5)
        for sock in (self._sock, self._wake_r, self._wake_w):
            sock.close()

    def _loop(self) -> None:
        """Accept (paced by ``budget``), read request heads and send cached
        pages without blocking: a connection costs a descriptor and its
        buffers; a thread only while its page must be read first."""
        lower_priority()
        sel = self._sel
        sel.register(self._wake_r, selectors.EVENT_READ)
        accepting = False
        try:
            while not self._stopping:
                wait = self.budget.wait_seconds()
                if accepting != (wait == 0):  # out of budget: leave them in the backlog
                    accepting = wait == 0
                    if accepting:
                        sel.register(self._sock, selectors.EVENT_READ)
                    else:
                        sel.unregister(self._sock)
                now = time.monotonic()
                waits = [c.deadline - now for c in self._conns.values()]
                if not accepting:
                    waits.append(wait)
                timeout = max(0.0, min(waits)) if waits else None
                for key, _ in sel.select(timeout):
                    if key.fileobj is self._sock:
                        self._accept()
                    elif key.fileobj is not self._wake_r:
                        conn = self._conns[key.fileobj]  # type: ignore[index]
                        try:
                            self._step(conn)
                        except Exception:  # one bad connection never ends the loop
                            log.exception("metrics scrape failed")
                            if conn.sock in self._conns:
                                self._drop(conn)
                now = time.monotonic()
                for conn in [c for c in self._conns.values() if c.deadline <= now]:
                    self._drop(conn)
        finally:
            for conn in list(self._conns.values()):
                self._drop(conn)
            sel.close()

    def _accept(self) -> None:
        try:
            sock, _ = self._sock.accept()
        except OSError:  # BlockingIOError (nothing there after all), EMFILE
            return
        self.budget.spend()
        if len(self._conns) >= self.max_pending:
            self.refused += 1
            _refuse(sock)
            return
        sock.setblocking(False)
        self._conns[sock] = _Connection(sock, time.monotonic() + self.read_timeout_seconds)
        self._sel.register(sock, selectors.EVENT_READ)

    def _drop(self, conn: _Connection) -> None:
        del self._conns[conn.sock]
        self._sel.unregister(conn.sock)
        conn.sock.close()

    def _step(self, conn: _Connection) -> None:
        """The connection is readable (head still coming) or writable."""
        if conn.reply:
            try:
                sent = conn.sock.send(conn.reply)
            except BlockingIOError:
                return
            except OSError:
                sent = len(conn.reply)
            conn.reply = conn.reply[sent:]
            if not conn.reply:
                self._drop(conn)
            return
        try:
            chunk = conn.sock.recv(MAX_REQUEST_BYTES + 1 - len(conn.head))
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        conn.head += chunk
        complete = b"\r\n\r\n" in conn.head or b"\n\n" in conn.head
        if not complete:
            if not chunk or len(conn.head) > MAX_REQUEST_BYTES:
                self._drop(conn)  # hung up, reset, or too long
            return
        reply = self._route(bytes(conn.head))
        if reply is None:  # the page: the cached one, else a thread reads it
            page = self.cache.fresh()
            if page is None:
                self._hand_over(conn)
                return
            reply = self._page_reply(conn.head, page)
        conn.reply = reply
        self._sel.modify(conn.sock, selectors.EVENT_WRITE)
        self._step(conn)

    def _hand_over(self, conn: _Connection) -> None:
        """Let a client thread wait for the page and send it."""
        del self._conns[conn.sock]
        self._sel.unregister(conn.sock)
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            _refuse(conn.sock)
            return
        try:
            threading.Thread(
                target=self._serve,
                args=(conn.sock, bytes(conn.head)),
                name="zramd-metrics-client",
                daemon=True,
            ).start()
        except RuntimeError:  # cannot start a thread: refuse this one
            self._slots.release()
            _refuse(conn.sock)

    def _serve(self, sock: socket.socket, head: bytes) -> None:
        try:
            with sock:
                page = self.cache.page(self.wait_seconds)
                reply = BUSY if page is None else self._page_reply(head, page)
                sock.settimeout(self.read_timeout_seconds)  # a client that does not read
                sock.sendall(reply)
        except OSError:
            pass
        except Exception:  # never let a client thread die with a traceback
            log.exception("metrics scrape failed")
        finally:
            self._slots.release()

    @staticmethod
    def _route(head: bytes) -> bytes | None:
        """The reply to a request that is not for the page; None if it is."""
        parts = head.split(b"\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return _response("400 Bad Request", b"bad request\n")
        method, target = parts[0], parts[1].split(b"?", 1)[0].decode("latin-1")
        if method not in (b"GET", b"HEAD"):
            return _response("405 Method Not Allowed", b"GET only\n")
        if target not in PATHS:
            return _response("404 Not Found", b"the metrics are at /metrics\n")
        return None

    def _page_reply(self, head: bytes | bytearray, page: bytes) -> bytes:
        reply = _response("200 OK", page, self.content_type)
        return reply[: len(reply) - len(page)] if head.startswith(b"HEAD ") else reply


def lower_priority() -> None:
    """Give the calling thread (and the threads it starts) the lowest CPU
    priority: a scrape flood then takes what nbdkit leaves over."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOOP_NICE)
    except OSError:
        pass


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

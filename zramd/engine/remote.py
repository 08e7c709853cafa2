"""The remote tier: written-back pages on any NBD export, through libnbd.

The same block interface as ``BackingFile`` (backing.py) offers to the
store, to writeback.py and to the packer of compressed writeback
(packlog.py): ``alloc``/``free``/``give_back``/``write``/``write_many``/
``read``/``read_block``/``read_backed``/``free_backed``/``has_freed``/
``discard_freed``/``check_size``/``used_blocks``/``touched_blocks``/
``stats``/``close``, and ``path``, ``nr_blocks``, ``write_errors``,
``last_error``, ``freed_total``, so writeback runs unchanged; the export
is cut into 4 KiB blocks, block ``n`` at byte ``n * 4096``.  ``--backing-uri`` takes libnbd's URIs: ``nbd://``,
``nbds://``, ``nbd+unix://``, ``nbds+unix://`` (TLS by PSK with the
``tls-psk-file=`` query, or X.509 with ``tls-certificates=``); any other
scheme is refused with one line.  docs/design.md#remote-tier.

Data structure
--------------
Blocks: ``_free`` (a stack of freed and already discarded blocks, reused
first), ``_dirty`` (freed, not yet discarded), ``_next`` (the first block
never handed out) and ``_used``, as in backing.py.  The tier holds at most
``min(export size, size_bytes) // 4096`` blocks: the export bounds it.

Encryption at rest is always on (the remote never sees plaintext): pages
are sealed with backing.py's ``seal`` (AEAD, a key made in this process and
never written anywhere, a nonce from a 64-bit write counter and the block
number, the block number as associated data).  The 16-byte tag and the
counter live in RAM: ``_tags`` and ``_ctrs`` (0 = block not in use), grown
as ``_next`` grows, 24 bytes per block ever used.  So a block the remote
lost (restarted empty, a fresh export), changed or replayed reads as EIO
(``bd_auth_errors``), never as stale data.

Connections: a pool of at most ``handles`` libnbd handles (``_idle``, the
connected ones nobody uses; ``_slots``, a semaphore bounding the commands
in flight), each used by one thread at a time with libnbd's aio calls and
``poll`` (which release the GIL), so reads from several request threads
and the writeback thread are in flight at once.  Each command has a
deadline (``timeout_s``, ``--backing-timeout``): past it the handle is
closed and the command fails (ETIMEDOUT, counted).  A connection that
dies drops every idle handle and arms a reconnect backoff (``_retry_at``,
doubling from ``RECONNECT_MIN_S`` to ``RECONNECT_MAX_S``).  While it runs,
writes and discards fail at once (writeback stalls, pages stay in RAM); a
read ignores it and tries to connect within its own deadline (a swap-in
is worth a connection attempt; a refused one fails at once).

Write-behind: ``write`` runs on the writeback thread only (``_writer_lock``)
and uses its own connection (``_writer``): it sends the sealed page with
``aio_pwrite`` and returns, keeping up to ``WRITE_WINDOW_PAGES`` writes in
flight (``_pending``: block -> ``_Pending``, the sealed bytes, its counter
and cookie).  The store installs the page as written back at once; until
the remote acknowledges it, ``read`` opens it from ``_pending`` (RAM), and
a refused write or a lost connection only sends the same bytes again by
the next ``_pump`` (the next write, or ``check_size`` at the start of the
next writeback run): nothing is lost, and at most the window stays in RAM
while the remote is away.  A block freed while its write is in flight is
reusable only once it is acknowledged (``_release_after``): two writes of
one block are never in flight at once.

Failure rules: a failed write raises OSError (writeback gives the block
back, keeps the page in RAM and stalls, writeback.py); a failed or timed
out read is an EIO for that request alone (``remote_read_errors``); pages
in RAM are served as ever.  A discard that fails is counted and its
blocks are reused anyway: what they hold is ciphertext under a key only
this process has, and a counter that no longer matches.  Discard is NBD
trim, or write-zeroes where the export cannot trim, done by the
``zramd-remote-trim`` thread (started at the first free): ``discard_freed``
only hands it the freed blocks, so no NBD request of a client (a trim, a
rewrite of a written-back page) waits for the remote; ``alloc`` waits for
it (at most ``timeout_s``) only when freed blocks are all that is left.  A write or discard
that *timed out* is different: the server may only be slow and carry it
out later, after a newer page went to the same block on another
connection, so its blocks go to ``_quarantined`` and are never reused
(``remote_quarantined_blocks``; capacity lost, never a page).

Locking
-------
``_lock`` guards the blocks, the sidecar, ``_pending``, the pool lists, the
backoff and the counters; no libnbd call runs under it.  ``_trim_cond``
(on ``_lock``) hands ``_dirty`` to the trimmer and wakes ``alloc`` when
blocks come back.  ``_writer_lock``
(taken before ``_lock``, never inside it) makes the writer connection and
``_pump`` one thread's.  ``free`` is called with the
store's lock held (store lock, then ours); it only moves the block to
``_dirty``.  A reader racing with a free sees the block's counter change
and returns zeros, and the store loads the slot again (store.py), as
backing.py does.
"""

from __future__ import annotations

import array
import errno
import logging
import threading
import time
import urllib.parse
from collections import deque

from ..units import PAGE_SIZE
from .backing import (
    SIDECAR_STEP_BLOCKS,
    TAG_BYTES,
    ZERO_PAGE,
    BackingError,
    BackingFull,
    PartialWrite,
    make_aead,
    seal,
    unseal,
)

SCHEMES = ("nbd", "nbds", "nbd+unix", "nbds+unix")
DEFAULT_CIPHER = "aes-256-gcm"
# Handles (connections) to the export: commands in flight at once; reads of
# several request threads and the writeback thread: docs/design.md#remote-tier
REMOTE_HANDLES = 4
# Longest a read of a remote page waits (--backing-timeout's default):
# docs/design.md#remote-tier
DEFAULT_TIMEOUT_S = 30
# Reconnect backoff after a lost connection: docs/design.md#remote-tier
RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 5.0
# Pages written back and not yet acknowledged, at most: writes in flight on
# the writer connection (docs/design.md#remote-tier)
WRITE_WINDOW_PAGES = 16
# Recent command latencies kept for the p50/p99 in stats: docs/design.md#remote-tier
LATENCY_SAMPLES = 1024
# A clean stop trims what we wrote, waiting at most this long for it.
CLOSE_TRIM_S = 5.0
# Query parameters of a URI that are not secrets: everything else is
# stripped from the URI shown in stats, logs and errors.
PUBLIC_QUERY = ("socket",)

log = logging.getLogger("zramd.remote")


class _Timeout(Exception):
    """A command passed its deadline."""


class _Pending:
    """A sealed page sent and not yet acknowledged (``RemoteBacking._pending``)."""

    __slots__ = ("block", "ctr", "sealed", "buf", "cookie", "sent_at")

    def __init__(self, block: int, ctr: int, sealed: bytes):
        self.block, self.ctr, self.sealed = block, ctr, sealed
        self.buf = None
        self.cookie = 0  # 0: to be (re)sent
        self.sent_at = 0.0


def check_uri(uri: str) -> None:
    """Refuse a URI libnbd's connect_uri would not take as a remote tier."""
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme not in SCHEMES:
        raise BackingError(
            errno.EINVAL,
            f"backing URI {public_uri(uri)!r}: scheme must be one of "
            f"{', '.join(s + '://' for s in SCHEMES)}",
        )


def public_uri(uri: str) -> str:
    """``uri`` without its secrets: no password in the authority, no query
    parameter but ``socket`` (tls-psk-file, tls-certificates and any other
    are dropped)."""
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        return "<unparsable URI>"
    netloc = parts.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        netloc = f"{user.split(':', 1)[0]}@{host}"
    query = [
        (k, v)
        for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if k in PUBLIC_QUERY
    ]
    kept = urllib.parse.urlencode(query, safe="/")
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{kept}" if kept else "")


def _percentile(samples: list[float], q: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _nbd():
    try:
        import nbd
    except ImportError:  # pragma: no cover - a system package
        raise BackingError(
            errno.EINVAL, "a remote backing tier needs libnbd's Python bindings (python3-libnbd)"
        ) from None
    return nbd


def probe(uri: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> int:
    """Connect once and check the export as ``RemoteBacking`` does, writing
    nothing (for the wrapper: a bad remote is one line before nbdkit
    starts); the export's size in bytes, or BackingError."""
    check_uri(uri)
    nbd = _nbd()
    h = nbd.NBD()
    shown = public_uri(uri)
    try:
        h.set_uri_allow_local_file(True)
        h.aio_connect_uri(uri)
        deadline = time.monotonic() + timeout_s
        while h.aio_is_connecting():
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                raise BackingError(errno.ETIMEDOUT, f"backing URI {shown}: connect timed out")
            h.poll(max(1, int(left_s * 1000)))
        if not h.aio_is_ready():
            raise BackingError(errno.ECONNREFUSED, f"backing URI {shown}: connection failed")
        if h.is_read_only():
            raise BackingError(errno.EROFS, f"backing URI {shown} is a read-only export")
        size_bytes = h.get_size()
    except nbd.Error as exc:
        raise BackingError(exc.errno or errno.EIO, f"backing URI {shown}: {exc.string}") from None
    if size_bytes < PAGE_SIZE:
        raise BackingError(errno.EINVAL, f"backing URI {shown} holds no whole 4 KiB block")
    return size_bytes


class RemoteBacking:
    """Written-back pages on an NBD export (module docstring)."""

    is_device = False

    def __init__(
        self,
        uri: str,
        size_bytes: int,
        cipher: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        handles: int = REMOTE_HANDLES,
    ):
        check_uri(uri)
        self._nbd = _nbd()
        self._uri = uri  # may name secrets' files: never shown
        self.path = public_uri(uri)
        self.cipher = cipher or DEFAULT_CIPHER
        self._aead = make_aead(self.cipher)
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(handles)
        self._idle: list = []
        self._retry_at = 0.0
        self._backoff_s = 0.0
        self.connected = False
        self.reconnects = 0
        self.disconnects = 0
        self._free: list[int] = []
        self._dirty: list[int] = []
        self._next = 0
        self._used = 0
        self._wctr = 0
        self._ctrs = array.array("Q")
        self._tags = bytearray()
        self._quarantined: set[int] = set()  # blocks never reused (_quarantine_blocks)
        self._pending: dict[int, _Pending] = {}  # block -> its write in flight
        self._release_after: set[int] = set()  # freed while in flight
        self._writer = None  # the writer connection (write, _pump)
        self._by_cookie: dict[int, _Pending] = {}  # writes in flight on it
        self._writer_lock = threading.Lock()
        self._trim_cond = threading.Condition(self._lock)  # the trimmer's work and its end
        self._trimmer: threading.Thread | None = None  # started at the first free
        self._trimming = 0  # blocks the trimmer holds now
        self._closing = False
        self.write_timeouts = 0
        self.write_failures = 0  # writes the remote refused or lost (sent again)
        self.write_errors = 0
        self.read_errors = 0
        self.read_timeouts = 0
        self.last_error = ""
        self.discarded_blocks = 0
        self.discard_errors = 0
        self.auth_errors = 0
        self.freed_total = 0
        self._read_lat: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self._write_lat: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.export_bytes = 0  # learnt at the first connection
        self.nr_blocks = 0
        try:
            h = self._connect(time.monotonic() + timeout_s)
        except OSError as exc:
            raise BackingError(
                exc.errno or errno.EIO, f"backing URI {self.path}: {exc.strerror or exc}"
            ) from None
        if h.is_read_only():
            raise BackingError(errno.EROFS, f"backing URI {self.path} is a read-only export")
        self.export_bytes = h.get_size()
        self._can_trim, self._can_zero = h.can_trim(), h.can_zero()
        self.nr_blocks = min(self.export_bytes, size_bytes) // PAGE_SIZE
        if not self.nr_blocks:
            raise BackingError(errno.EINVAL, f"backing URI {self.path} holds no whole 4 KiB block")
        self._idle.append(h)
        # old contents are meaningless to us (and never authenticate): trim once,
        # best effort; but not one that may still land on pages written later
        if not self._discard(0, self.nr_blocks, deadline=time.monotonic() + timeout_s):
            raise BackingError(errno.ETIMEDOUT, f"backing URI {self.path}: no answer to a trim")

    # -- connections ---------------------------------------------------------
    def _connect(self, deadline: float):
        """A new handle, connected and ready, or OSError (deadline included)."""
        nbd = self._nbd
        h = nbd.NBD()
        try:
            h.set_handle_name("zramd-remote")
            h.set_uri_allow_local_file(True)  # tls-psk-file=, tls-certificates=
            h.aio_connect_uri(self._uri)
            while h.aio_is_connecting():
                left_s = deadline - time.monotonic()
                if left_s <= 0:
                    raise OSError(errno.ETIMEDOUT, "connect timed out")
                h.poll(max(1, int(left_s * 1000)))
            if not h.aio_is_ready():
                raise OSError(errno.ECONNREFUSED, "connection failed")
        except nbd.Error as exc:
            raise OSError(exc.errno or errno.EIO, exc.string or "connection failed") from None
        with self._lock:
            if not self.connected and self.disconnects:
                self.reconnects += 1
                log.warning("remote tier %s reconnected", self.path)
            self.connected = True
            self._backoff_s = self._retry_at = 0.0  # it answers again: no more waiting
            size = h.get_size()
        if size < self.nr_blocks * PAGE_SIZE:  # a reconnection to a smaller export
            log.error(
                "remote tier %s came back with %d bytes: blocks beyond read as I/O errors",
                self.path,
                size,
            )
        return h

    def _take(self, deadline: float, wait: bool):
        """An idle handle, or a new connection if the backoff allows."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
            retry_at = self._retry_at
        if not wait and time.monotonic() < retry_at:
            raise OSError(errno.ENOTCONN, f"remote {self.path} is disconnected")
        try:  # a read tries at once, within its own deadline
            return self._connect(deadline)
        except OSError:
            self._lost(None)
            raise

    def _lost(self, h) -> None:
        """A connection failed: drop it and the idle ones (libnbd closes a
        handle when its last reference goes), arm the backoff."""
        with self._lock:
            idle, self._idle = self._idle, []
            was = self.connected
            self.connected = False
            if was:
                self.disconnects += 1
            self._backoff_s = min(RECONNECT_MAX_S, max(RECONNECT_MIN_S, self._backoff_s * 2))
            self._retry_at = time.monotonic() + self._backoff_s
        if was:
            log.warning("remote tier %s disconnected: writeback stalls, reads wait", self.path)
        del h, idle

    def _command(self, start, deadline: float, wait: bool = False) -> float:
        """Run ``start(handle) -> cookie`` on a pooled handle until it
        completes or ``deadline``; its latency in seconds, or OSError."""
        nbd = self._nbd
        if not self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise OSError(errno.ETIMEDOUT, f"remote {self.path}: every connection is busy")
        try:
            h = self._take(deadline, wait)
            started = time.monotonic()
            try:
                cookie = start(h)
                while not h.aio_command_completed(cookie):
                    left_s = deadline - time.monotonic()
                    if left_s <= 0:
                        raise _Timeout
                    h.poll(max(1, int(left_s * 1000)))
            except nbd.Error as exc:
                if h.aio_is_ready():  # the command failed, the connection did not
                    with self._lock:
                        self._idle.append(h)
                else:
                    self._lost(h)
                raise OSError(exc.errno or errno.EIO, exc.string or "remote I/O error") from None
            except _Timeout:
                self._lost(h)
                raise OSError(errno.ETIMEDOUT, f"no answer in {self.timeout_s:g} s") from None
            with self._lock:
                self._idle.append(h)
            return time.monotonic() - started
        finally:
            self._slots.release()

    # -- blocks --------------------------------------------------------------
    def alloc(self) -> int:
        """A block for writeback; when only freed blocks are left, wait (at
        most ``timeout_s``) for the trimmer to make them reusable."""
        with self._trim_cond:
            deadline = 0.0
            while True:
                if self._free:
                    block = self._free.pop()
                    break
                if self._next < self.nr_blocks:
                    block = self._next
                    self._next += 1
                    if len(self._ctrs) < self._next:
                        grow = min(SIDECAR_STEP_BLOCKS, self.nr_blocks - len(self._ctrs))
                        self._ctrs.extend([0] * grow)
                        self._tags.extend(bytes(TAG_BYTES * grow))
                    break
                now = time.monotonic()
                deadline = deadline or now + self.timeout_s
                if not (self._dirty or self._trimming) or now >= deadline:
                    raise BackingFull(
                        errno.ENOSPC, f"remote tier {self.path} is full ({self.nr_blocks} blocks)"
                    )
                self._wake_trimmer_locked()
                self._trim_cond.wait(deadline - now)
            self._used += 1
            return block

    def free(self, block: int) -> None:
        """Give back the block of a written-back page (store lock held)."""
        self._release(block, freed=1)

    def give_back(self, block: int) -> None:
        """Give back a block writeback took but never installed (not in
        ``freed_total``: no space came back, see writeback.py)."""
        self._release(block, freed=0)

    def _release(self, block: int, freed: int) -> None:
        with self._lock:
            if block in self._pending:  # reusable once its write is acknowledged
                self._release_after.add(block)
            elif block not in self._quarantined:
                self._dirty.append(block)
            self._used -= 1
            self.freed_total += freed
            self._ctrs[block] = 0  # a racing reader sees the change

    def has_freed(self) -> bool:
        return bool(self._dirty)

    def discard_freed(self) -> None:
        """Hand every freed block to the trimmer thread and return: no
        request waits for the remote to trim (the module docstring)."""
        with self._trim_cond:
            if self._dirty:
                self._wake_trimmer_locked()

    def _wake_trimmer_locked(self) -> None:
        if self._trimmer is None and not self._closing:
            self._trimmer = threading.Thread(
                target=self._trim_loop, name="zramd-remote-trim", daemon=True
            )
            self._trimmer.start()
        self._trim_cond.notify_all()

    def _trim_loop(self) -> None:
        while True:
            with self._trim_cond:
                self._trim_cond.wait_for(lambda: self._dirty or self._closing)
                if not self._dirty:
                    return  # closing
                blocks, self._dirty = self._dirty, []
                self._trimming = len(blocks)
            try:
                self._trim(blocks)
            finally:
                with self._trim_cond:
                    self._trimming = 0
                    self._trim_cond.notify_all()

    def _trim(self, blocks: list[int]) -> None:
        """Trim ``blocks`` (in runs), then make them reusable, or quarantine
        the runs whose trim timed out."""
        blocks.sort()
        deadline = time.monotonic() + self.timeout_s
        start = prev = blocks[0]
        for block in blocks[1:] + [None]:
            if block is not None and block == prev + 1:
                prev = block
                continue
            if not self._discard(start, prev - start + 1, deadline):
                self._quarantine_blocks(range(start, prev + 1))
            if block is not None:
                start = prev = block
        with self._lock:
            reusable = [b for b in blocks if b not in self._quarantined]
            self._free.extend(reversed(reusable))
            self.discarded_blocks += len(reusable)

    def _discard(self, first: int, count: int, deadline: float) -> bool:
        """NBD trim (or write-zeroes) of blocks ``first .. first+count-1``;
        an error is counted, not raised.  False if it timed out: the server
        may still carry it out later (see ``_quarantine_blocks``)."""
        offset, length = first * PAGE_SIZE, count * PAGE_SIZE
        if not length or not (self._can_trim or self._can_zero):
            return True
        if self._can_trim:

            def start(h):
                return h.aio_trim(length, offset)
        else:

            def start(h):
                return h.aio_zero(length, offset)

        try:
            self._command(start, deadline)
        except OSError as exc:
            with self._lock:
                self.discard_errors += 1
                self.last_error = f"discard: {exc.strerror or exc}"
            return exc.errno != errno.ETIMEDOUT
        return True

    def _quarantine_blocks(self, blocks) -> None:
        """Never reuse these blocks: a command on them timed out, and a
        server that was only slow may still carry it out after a newer
        page is written there (on another connection, in any order), which
        would lose that page (an EIO, never stale data: module docstring)."""
        with self._lock:
            self._quarantined.update(blocks)

    # -- data ------------------------------------------------------------------
    def write(self, block: int, page) -> None:
        """Seal one page and send it; return once it is in flight (at most
        ``WRITE_WINDOW_PAGES`` are: the oldest is waited for).  Until the
        remote acknowledges it, the sealed page stays in ``_pending`` and is
        read from there, and resent after a failure: nothing is lost.  An
        error (the window cannot drain) is counted and raised: the caller
        keeps its page in RAM and gives the block back."""
        with self._lock:
            self._wctr += 1
            ctr = self._wctr
        sealed = seal(self._aead, ctr, block, page)
        with self._writer_lock:  # one writer at a time (the writeback thread)
            try:
                self._pump(WRITE_WINDOW_PAGES - 1)
            except OSError as exc:
                with self._lock:
                    self.write_errors += 1
                    self.last_error = f"{exc.strerror or exc}"
                raise
            with self._lock:
                self._ctrs[block] = ctr
                self._tags[block * TAG_BYTES : (block + 1) * TAG_BYTES] = sealed[PAGE_SIZE:]
                self._pending[block] = _Pending(block, ctr, sealed)
            try:
                self._send(self._pending[block])
            except OSError:
                pass  # resent by the next _pump; the page is safe in _pending

    def _send(self, p: _Pending) -> None:
        """Issue the write of a pending page on the writer connection."""
        h = self._writer
        if h is None:
            raise OSError(errno.ENOTCONN, "no writer connection")
        p.buf = self._nbd.Buffer.from_buffer(p.sealed[:PAGE_SIZE])
        p.sent_at = time.monotonic()
        try:
            p.cookie = h.aio_pwrite(p.buf, p.block * PAGE_SIZE)
            self._by_cookie[p.cookie] = p
        except self._nbd.Error as exc:
            p.cookie = 0
            self._writer_lost()
            raise OSError(exc.errno or errno.EIO, exc.string or "remote write failed") from None

    def _pump(self, keep: int) -> None:
        """Retire acknowledged writes, resend failed ones, and wait until at
        most ``keep`` pages are pending (each waits at most ``timeout_s``).
        OSError when that cannot be done (the remote is down)."""
        nbd = self._nbd
        while True:
            if self._writer is None:
                self._writer = self._connect_writer()
            with self._lock:
                pending = list(self._pending.values())
            for p in pending:
                if not p.cookie:
                    self._send(p)  # raises if the connection is gone
            failed = self._retire_completed()
            if failed is not None:  # each failed page is sent again next time
                raise OSError(failed.errno or errno.EIO, failed.string or "remote write failed")
            with self._lock:
                pending = list(self._pending.values())
            if len(pending) <= keep:
                return
            now = time.monotonic()
            if any(p.cookie and now - p.sent_at > self.timeout_s for p in pending):
                # any write sent on that connection may still land: resent
                # identical, and their blocks never reused once freed
                self._quarantine_blocks([p.block for p in pending])
                self._writer_lost()
                with self._lock:
                    self.write_timeouts += 1
                raise OSError(errno.ETIMEDOUT, f"no answer in {self.timeout_s:g} s")
            h = self._writer
            if h is None:
                continue
            try:
                h.poll(max(1, int(self.timeout_s * 1000)))
            except nbd.Error:
                self._writer_lost()

    def _retire_completed(self):
        """Retire every write the writer connection completed; the first
        error (its page is marked to be sent again), or None."""
        nbd = self._nbd
        failed = None
        while self._writer is not None:
            h = self._writer
            try:
                cookie = h.aio_peek_command_completed()
            except nbd.Error:
                return failed  # nothing in flight
            if cookie <= 0:
                return failed
            p = self._by_cookie.pop(cookie, None)
            try:
                h.aio_command_completed(cookie)
            except nbd.Error as exc:
                if p is not None and p.cookie == cookie:
                    self._write_failed(p, exc)
                    failed = failed or exc
                continue
            if p is not None and p.cookie == cookie:
                self._retire(p)
        return failed

    def _write_failed(self, p: _Pending, exc) -> None:
        """The server refused a write, or its connection died: it is sent
        again (same bytes) by the next ``_pump``, in the next write or
        writeback run; the caller raises (writeback stalls)."""
        p.cookie = 0
        with self._lock:
            self.write_failures += 1
            self.last_error = f"write: {exc.string or exc}"
        if self._writer is not None and not self._writer.aio_is_ready():
            self._writer_lost()

    def _retire(self, p: _Pending) -> None:
        with self._lock:
            self._write_lat.append(time.monotonic() - p.sent_at)
            if self._pending.get(p.block) is p:
                del self._pending[p.block]
            if p.block in self._release_after:  # freed while in flight: reusable now
                self._release_after.discard(p.block)
                if p.block not in self._quarantined:
                    self._dirty.append(p.block)

    def _connect_writer(self):
        with self._lock:
            retry_at = self._retry_at
        if time.monotonic() < retry_at:
            raise OSError(errno.ENOTCONN, f"remote {self.path} is disconnected")
        try:
            return self._connect(time.monotonic() + self.timeout_s)
        except OSError:
            self._lost(None)
            raise

    def _writer_lost(self) -> None:
        with self._lock:
            for p in self._pending.values():
                p.cookie = 0
        self._by_cookie.clear()
        self._writer = None
        self._lost(None)

    def write_many(self, blocks: list[int], pages: list) -> None:
        """``write`` of each page to its block, in order, through the write
        window; an error raises ``PartialWrite`` naming the blocks sent
        before it (they are in use, as after a success)."""
        written: set[int] = set()
        for block, page in zip(blocks, pages, strict=True):
            try:
                self.write(block, page)
            except OSError as exc:
                raise PartialWrite(
                    exc.errno or errno.EIO, exc.strerror or str(exc), written
                ) from None
            written.add(block)

    def read_block(self, block: int) -> bytes | None:
        """The 4 KiB in ``block``, authenticated; None if the block is not
        in use (or was freed or rewritten during the read)."""
        with self._lock:
            if not (self._ctrs[block] if block < len(self._ctrs) else 0):
                return None
        page = self.read(block)
        return None if page is ZERO_PAGE else page

    def read_backed(self, entry) -> bytes:
        """The page of a store's ``Backed`` entry (a raw page)."""
        return self.read(entry.block)

    def free_backed(self, entry) -> None:
        """The store let go of a ``Backed`` entry (a raw page)."""
        self.free(entry.block)

    def read(self, block: int) -> bytes:
        with self._lock:
            ctr = self._ctrs[block] if block < len(self._ctrs) else 0
            tag = bytes(self._tags[block * TAG_BYTES : (block + 1) * TAG_BYTES])
            pending = self._pending.get(block)
        if not ctr:
            return ZERO_PAGE  # freed meanwhile: the store loads the slot again
        if pending is not None and pending.ctr == ctr:  # not acknowledged yet: ours
            return unseal(self._aead, ctr, block, pending.sealed[:PAGE_SIZE], tag)
        buf = self._nbd.Buffer(PAGE_SIZE)
        offset = block * PAGE_SIZE
        try:
            took_s = self._command(
                lambda h: h.aio_pread(buf, offset), time.monotonic() + self.timeout_s, wait=True
            )
        except OSError as exc:
            with self._lock:
                if self._ctrs[block] != ctr:
                    return ZERO_PAGE  # freed or rewritten during our read: reload
                self.read_errors += 1
                self.read_timeouts += exc.errno == errno.ETIMEDOUT
                self.last_error = f"read: {exc.strerror or exc}"
            raise OSError(
                errno.EIO, f"remote block {block} of {self.path}: {exc.strerror or exc}"
            ) from None
        with self._lock:
            self._read_lat.append(took_s)
        try:
            return unseal(self._aead, ctr, block, bytes(buf.to_bytearray()), tag)
        except Exception:  # cryptography's InvalidTag
            with self._lock:
                if self._ctrs[block] != ctr:
                    return ZERO_PAGE
                self.auth_errors += 1
            raise OSError(
                errno.EIO,
                f"remote block {block} of {self.path} failed authentication (lost or changed)",
            ) from None

    def check_size(self) -> None:
        """At the start of each writeback run: retire the writes the remote
        acknowledged since the last run (without waiting).  A shrunk export
        is logged when a connection comes back (``_connect``)."""
        if not self._writer_lock.acquire(blocking=False):
            return
        try:
            h = self._writer
            if h is not None and self._pending:
                try:
                    while h.poll(0) == 1:
                        pass
                    self._pump(len(self._pending))
                except (OSError, self._nbd.Error):
                    pass  # the next write sees it again
        finally:
            self._writer_lock.release()

    # -- accounting --------------------------------------------------------------
    def used_blocks(self) -> int:
        with self._lock:
            return self._used

    def touched_blocks(self) -> int:
        with self._lock:
            return self._next

    def stats(self) -> dict:
        with self._lock:
            reads, writes = list(self._read_lat), list(self._write_lat)
            return {
                "backing_discarded_blocks": self.discarded_blocks,
                "backing_discard_errors": self.discard_errors,
                "backing_encryption": self.cipher,
                "bd_auth_errors": self.auth_errors,
                "bd_checksum_errors": 0,
                "backing_tier": "remote",
                "remote_connected": int(self.connected),
                "remote_held_bytes": self._used * PAGE_SIZE,
                "remote_export_bytes": self.export_bytes,
                "remote_read_errors": self.read_errors,
                "remote_read_timeouts": self.read_timeouts,
                "remote_disconnects": self.disconnects,
                "remote_reconnects": self.reconnects,
                "remote_quarantined_blocks": len(self._quarantined),
                "remote_write_pending_pages": len(self._pending),
                "remote_write_timeouts": self.write_timeouts,
                "remote_write_failures": self.write_failures,
                "remote_read_latency_p50_seconds": _percentile(reads, 0.50),
                "remote_read_latency_p99_seconds": _percentile(reads, 0.99),
                "remote_write_latency_p50_seconds": _percentile(writes, 0.50),
                "remote_write_latency_p99_seconds": _percentile(writes, 0.99),
            }

    def close(self) -> None:
        """Clean stop: trim what we wrote (best effort), close the handles."""
        with self._trim_cond:
            self._closing = True
            self._trim_cond.notify_all()
            trimmer = self._trimmer
        if trimmer is not None:
            trimmer.join()
        with self._writer_lock:
            self._writer = None  # nothing needs its writes any more
        with self._lock:
            touched = self._next
            closed = not self._idle and not self.connected
        if not closed:
            self._discard(0, touched, time.monotonic() + min(self.timeout_s, CLOSE_TRIM_S))
        with self._lock:
            self._idle = []  # the handles close as they go
            self.connected = False

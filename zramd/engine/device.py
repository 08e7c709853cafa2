"""The device: zram's front end, between the NBD callbacks and the store.

It decides, per write, where compression happens:

``inline``  in the request thread, straight from nbdkit's buffer (the
            compressor's output is already a stable copy: no snapshot).
``async``   stable writes: snapshot the request (``bytes(buf)``), stage
            its pages as ``Pending`` in the store, reply; workers compress
            and install.
``hybrid``  requests of ``HYBRID_MIN_BYTES`` or more go async, smaller
            ones inline.

Inline is the default: under the GIL a worker only adds hand-offs, and
``make bench`` measures async well behind inline on both 4 KiB and 128 KiB
writes (docs/design.md#compression-modes; the numbers are in
docs/bench/results.md).

FUA writes are always inline (installed before the reply).  When staged
(pending) data would pass ``pending_limit_bytes``, the write is compressed
inline instead (back-pressure: memory stays bounded, the client slows down
to the compression rate).  ``drain`` (NBD flush, client close, shutdown)
waits until every write acknowledged before it is installed.

The ``no-stable-writes`` fault injection stages a view of nbdkit's own
buffer instead of a snapshot, which nbdkit reuses for the next request: the
2016 stable-pages bug, on purpose, for tests that prove the hazard
(docs/design.md#stable-writes).  It is refused unless explicitly unlocked
(see config).

Automatic compaction (compaction.py) runs on its own thread, started and
stopped with the device; so does the cold-page sweeper (cold.py), whose
thread exists only while its policy is on.

With a backing file, ``writeback`` (see writeback.py) moves pages out of
RAM; a write that finds memory above the high watermark first waits for it
(unless writeback is stalled).  Writes and trims that free written-back
pages discard their file blocks before the reply, outside the store's lock
(backing.py, docs/design.md#security).

Locking: none of its own; the store and the workers lock for themselves.
Counters here are bumped by request threads without a lock and are only
approximate under concurrency (they are diagnostics, not zram's stats).
"""

from __future__ import annotations

from ..units import PAGE_SHIFT, PAGE_SIZE
from .cold import ColdSweeper
from .compaction import AutoCompactor
from .store import PageStore
from .workers import CompressionWorkers

MODES = ("inline", "async", "hybrid")

# Each constant's measurement and the command that re-measures it are in
# docs/design.md#tuning-constants.
# Pages handed to a worker at once: compression on another thread pays only
# at 64 KiB or more per call.
WORKER_BATCH_PAGES = 16
# hybrid: requests at least this large go to the workers (same measurement).
HYBRID_MIN_BYTES = 64 * 1024
# Most snapshot bytes waiting for workers: freed snapshots stay in the heap
# (RSS keeps the high-water mark); 16M kept async's speed with the least RSS.
DEFAULT_PENDING_LIMIT_BYTES = 16 << 20


class Device:
    def __init__(
        self,
        store: PageStore,
        mode: str = "inline",
        workers: int = 1,
        pending_limit_bytes: int = DEFAULT_PENDING_LIMIT_BYTES,
        stable_writes: bool = True,
        writeback=None,
        auto_compact: bool = True,
        recompress_after_s: float = 0,
        cold_target_pct: float | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"unknown compression mode {mode!r} (choose from {', '.join(MODES)})")
        self.store = store
        self.mode = mode
        self.stable_writes = stable_writes
        self.pending_limit_bytes = pending_limit_bytes
        self.workers = CompressionWorkers(store, workers) if mode != "inline" else None
        self.async_min_bytes = 0 if mode == "async" else HYBRID_MIN_BYTES
        # With nothing to decide per write (inline, no watermarks), the
        # adapter calls the store directly: one Python call less per request.
        self.direct_write = store.write if mode == "inline" and writeback is None else None
        # Requests the device adds nothing to go straight to the store: the
        # adapter binds these once, so they cost no extra Python call.
        self.read = store.read
        self.discard = store.discard if writeback is None else self.discard_with_backing
        self.extents = store.extents
        self.writeback = writeback
        self.compactor = AutoCompactor(store) if auto_compact else None
        self.cold = ColdSweeper(store, writeback, recompress_after_s, cold_target_pct)
        self.backpressure_inline = 0
        self.fua_inline = 0

    # -- life cycle ------------------------------------------------------
    def start(self) -> None:
        if self.workers is not None:
            self.workers.start()
        if self.writeback is not None:
            self.writeback.start()
        if self.compactor is not None:
            self.compactor.start()
        self.cold.start()

    def stop(self) -> None:
        """Drain pending work and end the workers and the writeback thread
        (the cold sweeper first: it may be waiting for a writeback run)."""
        self.cold.stop()
        if self.workers is not None:
            self.workers.stop()
        if self.writeback is not None:
            self.writeback.stop()
        if self.compactor is not None:
            self.compactor.stop()

    def drain(self) -> None:
        """Wait until every write acknowledged so far is installed: NBD
        flush, a client's close, and shutdown."""
        if self.workers is not None:
            self.workers.wait()

    # -- I/O ---------------------------------------------------------------
    def write(self, buf, offset: int, fua: bool = False) -> None:
        wb = self.writeback
        if wb is None:
            return self._write(buf, offset, fua)
        if self.store.mem_used_total > wb.high_watermark > 0:
            wb.throttle()
        try:
            self._write(buf, offset, fua)
        finally:
            if wb.has_freed():  # a rewritten written-back page
                wb.discard_freed()

    def discard_with_backing(self, offset: int, length: int) -> None:
        """Trim / write-zeroes with a backing file: the blocks of the
        written-back pages it frees are discarded before the reply
        (docs/design.md#security)."""
        try:
            self.store.discard(offset, length)
        finally:
            wb = self.writeback
            if wb.has_freed():
                wb.discard_freed()

    def _write(self, buf, offset: int, fua: bool) -> None:
        store = self.store
        workers = self.workers
        length = len(buf)
        if workers is None or length < self.async_min_bytes or length < PAGE_SIZE:
            store.write(buf, offset)
            return
        if fua:
            self.fua_inline += 1
            store.write(buf, offset)
            return
        if (store.pending_pages + (length >> PAGE_SHIFT)) * PAGE_SIZE > self.pending_limit_bytes:
            self.backpressure_inline += 1
            store.write(buf, offset)
            return
        data = memoryview(bytes(buf)) if self.stable_writes else buf
        staged = store.stage(data, offset)
        for i in range(0, len(staged), WORKER_BATCH_PAGES):
            workers.submit(staged[i : i + WORKER_BATCH_PAGES])

    # -- stats -------------------------------------------------------------
    def stats(self) -> dict:
        s = self.store.stats()
        s.update(
            {
                "compress_mode": self.mode,
                "stable_writes": self.stable_writes,
                "workers": self.workers.nworkers if self.workers else 0,
                "pending_limit": self.pending_limit_bytes if self.workers else 0,
                "worker_backlog": self.workers.backlog() if self.workers else 0,
                "worker_errors": self.workers.worker_errors if self.workers else 0,
                "worker_trims": self.workers.trims if self.workers else 0,
                "backpressure_inline": self.backpressure_inline,
                "fua_inline": self.fua_inline,
            }
        )
        if self.writeback is not None:
            s.update(self.writeback.stats())
        s.update(self.cold.stats())
        return s

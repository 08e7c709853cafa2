"""The device: zram's front end, between the NBD callbacks and the store.

It decides, per write, where compression happens:

``inline``  in the request thread, straight from nbdkit's buffer (the
            compressor's output is already a stable copy: no snapshot).
``async``   stable writes: snapshot the request (``bytes(buf)``: about
            0.1 us per 4 KiB, 2.6 us per 128 KiB), stage its pages as
            ``Pending`` in the store, reply; workers compress and install.
``hybrid``  requests of ``HYBRID_MIN_BYTES`` or more go async, smaller
            ones inline.

Inline is the default, from ``make bench`` on this machine kind (2 cores,
fio nbd engine, same run; docs/bench/results.md): 4 KiB randwrite qd16
inline 80k IOPS, hybrid 82k, async 28k (1 worker) and 24k (2 workers);
128 KiB sequential write inline 491 MB/s, hybrid 357, async 302 and 302.
(An earlier run: 79k / 80k / 27k / 21k and 433 / 327 / 285 / 259 MB/s.)
Under the GIL a worker only adds hand-offs: on two cores the request thread
and fio already keep both busy.

FUA writes are always inline (installed before the reply).  When staged
(pending) data would pass ``pending_limit_bytes``, the write is compressed
inline instead (back-pressure: memory stays bounded, the client slows down
to the compression rate).  ``flush`` waits until every write acknowledged
before it is installed; ``drain`` (client close, shutdown) waits for all.

The ``no-stable-writes`` fault injection stages a view of nbdkit's own
buffer instead of a snapshot, which nbdkit reuses for the next request: the
2016 stable-pages bug, on purpose, for tests that prove the hazard.  It is
refused unless explicitly unlocked (see config).

With a backing file, ``writeback`` (see writeback.py) moves pages out of
RAM; a write that finds memory above the high watermark first waits for it.

Locking: none of its own; the store and the workers lock for themselves.
Counters here are bumped by request threads without a lock and are only
approximate under concurrency (they are diagnostics, not zram's stats).
"""

from __future__ import annotations

from .store import PAGE_SIZE, PageStore
from .workers import CompressionWorkers

MODES = ("inline", "async", "hybrid")

# Pages per worker batch: parallel compression pays only at 64 KiB or more
# per call (x1.9 with 2 threads), not at 4 KiB (x0.98) (design.md 4).
BATCH_PAGES = 16
# hybrid: requests at least this large go to the workers, from the same
# measurement (compression only pays on another thread at 64 KiB or more).
HYBRID_MIN_BYTES = 64 * 1024
# Snapshots waiting for workers stay in the heap after they are freed (RSS
# keeps the high-water mark).  128 KiB sequential writes, async, 256 MiB on
# this machine kind: 64M limit 343-354 MB/s, 204 MB peak RSS; 16M 360-362
# MB/s, 176 MB; 4M 310-314 MB/s, 166 MB.  16M keeps the speed for 28 MB less.
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
        self.discard = store.discard
        self.extents = store.extents
        self.writeback = writeback
        self.backpressure_inline = 0
        self.fua_inline = 0

    # -- life cycle ------------------------------------------------------
    def start(self) -> None:
        if self.workers is not None:
            self.workers.start()
        if self.writeback is not None:
            self.writeback.start()

    def stop(self) -> None:
        """Drain pending work and end the workers and the writeback thread."""
        if self.workers is not None:
            self.workers.stop()
        if self.writeback is not None:
            self.writeback.stop()

    def drain(self) -> None:
        if self.workers is not None:
            self.workers.wait()

    # -- I/O ---------------------------------------------------------------
    def write(self, buf, offset: int, fua: bool = False) -> None:
        store = self.store
        workers = self.workers
        length = len(buf)
        wb = self.writeback
        if wb is not None and store.mem_used_total > wb.high_watermark > 0:
            wb.throttle()
        if workers is None or length < self.async_min_bytes or length < PAGE_SIZE:
            store.write(buf, offset)
            return
        if fua:
            self.fua_inline += 1
            store.write(buf, offset)
            return
        if (store.pending_pages + (length >> 12)) * PAGE_SIZE > self.pending_limit_bytes:
            self.backpressure_inline += 1
            store.write(buf, offset)
            return
        data = memoryview(bytes(buf)) if self.stable_writes else buf
        staged = store.stage(data, offset)
        for i in range(0, len(staged), BATCH_PAGES):
            workers.submit(staged[i : i + BATCH_PAGES])

    def flush(self) -> None:
        if self.workers is not None:
            self.workers.wait()

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
                "backpressure_inline": self.backpressure_inline,
                "fua_inline": self.fua_inline,
            }
        )
        if self.writeback is not None:
            s.update(self.writeback.stats())
        return s

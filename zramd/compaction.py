"""Automatic compaction: zram compacts from the kernel's shrinker (memory
pressure) or on ``echo 1 > compact``; a process has no shrinker, so zramd
compacts when fragmentation passes a threshold.

Why these numbers: docs/design.md#page-arena-and-memory-accounting.

Policy: after a free, the store compares the arena's free spot bytes with
``store._compact_trigger_bytes`` (one attribute compare on the I/O path)
and, past it, kicks this thread.  The thread runs ``store.compact()`` if at
least ``AUTO_MIN_BYTES`` could be given back, then sets the next trigger
to the free bytes left plus ``max(AUTO_MIN_BYTES, AUTO_RATIO *
block_bytes)``, so it never runs again until that much more was freed
(no busy loop when the free space cannot be compacted: the tails of 119
classes' blocks).

Data structure: one daemon thread, ``zramd-compact``, blocked in C on an
``Event`` (never spinning).  ``kick`` only sets the event.  Locking: the
store's compaction lock serialises it with the ``compact`` command; the
store's lock is taken by the compaction itself, a batch at a time.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("zramd.compaction")

AUTO_MIN_BYTES = 16 << 20
AUTO_RATIO = 0.25


class AutoCompactor:
    def __init__(self, store, min_bytes: int = AUTO_MIN_BYTES, ratio: float = AUTO_RATIO):
        self.store = store
        self.min_bytes = min_bytes
        self.ratio = ratio
        self._event = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.runs = 0
        self.pages_freed = 0
        store.compactor = self
        self._set_trigger()

    def _set_trigger(self) -> None:
        arena = self.store._arena
        with self.store._lock:
            self.store._compact_trigger_bytes = arena.free_spot_bytes + max(
                self.min_bytes, int(self.ratio * arena.block_bytes)
            )

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="zramd-compact", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop = True
            self._event.set()
            self._thread.join()
            self._thread = None
        self.store.compactor = None
        self.store._compact_trigger_bytes = 1 << 62

    def kick(self) -> None:
        """Called by the store (lock held) when the trigger is passed."""
        self.store._compact_trigger_bytes = 1 << 62  # once until the next run
        self._event.set()

    def _run(self) -> None:
        while True:
            self._event.wait()
            self._event.clear()
            if self._stop:
                return
            try:
                if self.store.fragmented_bytes() >= self.min_bytes:
                    result = self.store.compact()
                    self.runs += 1
                    self.pages_freed += result["pages_freed"]
            except Exception:  # keep serving
                log.exception("automatic compaction failed")
            finally:
                self._set_trigger()

"""Automatic compaction: zram compacts from the kernel's shrinker (memory
pressure) or on ``echo 1 > compact``; a process has no shrinker, so zramd
compacts when fragmentation passes a threshold.

Why these numbers: docs/design.md#page-arena-and-memory-accounting.

Policy: every ``AUTO_CHECK_FREES`` frees (the arena's ``epoch`` counts
them; the store arms the check with ``store.arm_compaction`` and its I/O
path makes one compare after a free), this thread looks at what compaction could give
back (whole blocks' worth of free spots per class, O(classes)) and
compacts if that is at least ``max(AUTO_MIN_BYTES, AUTO_RATIO *
block_bytes)``.  Fragmentation only grows by frees, so nothing is checked
while pages are only being added, and free space that no compaction can
reclaim (the tails of up to 119 classes' blocks) never makes it loop.

Data structure: one daemon thread, ``zramd-compact``, blocked in C on an
``Event`` (never spinning).  ``kick`` only sets the event.  Locking: the
store's compaction lock serialises it with the ``compact`` command; the
store's lock is taken by the compaction itself, a batch at a time, and
briefly here to read the arena's counters.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("zramd.compaction")

AUTO_CHECK_FREES = 4096
AUTO_MIN_BYTES = 16 << 20
AUTO_RATIO = 0.125


class AutoCompactor:
    def __init__(
        self,
        store,
        min_bytes: int = AUTO_MIN_BYTES,
        ratio: float = AUTO_RATIO,
        check_frees: int = AUTO_CHECK_FREES,
    ):
        self.store = store
        self.min_bytes = min_bytes
        self.ratio = ratio
        self.check_frees = check_frees
        self._event = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.runs = 0
        self.checks = 0
        self.pages_freed = 0
        store.compactor = self
        self._arm()

    def _arm(self) -> None:
        """Ask for the next check after ``check_frees`` more frees."""
        self.store.arm_compaction(self.check_frees)

    def threshold_bytes(self, block_bytes: int) -> int:
        return max(self.min_bytes, int(self.ratio * block_bytes))

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
        self.store.disarm_compaction()

    def kick(self) -> None:
        """Called by the store (its lock held, the check disarmed) when the
        check is due."""
        self._event.set()

    def _run(self) -> None:
        while True:
            self._event.wait()
            self._event.clear()
            if self._stop:
                return
            try:
                self.checks += 1
                fragmented_bytes, block_bytes = self.store.compaction_figures()
                due = fragmented_bytes >= self.threshold_bytes(block_bytes)
                if due:
                    result = self.store.compact()
                    self.runs += 1
                    self.pages_freed += result["pages_freed"]
            except Exception:  # keep serving
                log.exception("automatic compaction failed")
            finally:
                self._arm()

"""Asynchronous compression workers.

Data structure
--------------
``_queue`` is a ``queue.SimpleQueue`` (C) of ``(seq, batch)`` items; a batch
is a list of ``(index, Pending)`` pages that the store staged.  Workers take
one item at a time, call ``store.complete_all`` for the batch (it
compresses each page and installs, under one lock acquisition, those
not rewritten meanwhile; if it raises, ``store.complete`` page by page
finds the page at fault, which stays pending) and mark the sequence
number done.  ``None`` on the queue stops one worker.

Flush bookkeeping: ``_submitted`` is the last sequence number handed out;
``_watermark`` is the highest number such that every item up to it is done;
``_done`` holds numbers done above the watermark (workers finish out of
order).  ``wait()`` blocks until ``_watermark`` reaches the last number
handed out when it was called: a flush waits for exactly the work
acknowledged before it, not for later writes.

Memory after a burst: the request thread's snapshots (``bytes`` of a
whole request, 256 KiB for a swap-out write) come from glibc's malloc
arenas, which keep freed memory for the next burst; so once a worker has
found the queue empty for ``TRIM_IDLE_S`` after doing work, it gives the
free malloc pages back (``heap.trim`` without a collection, counted in
``trims``).  Under steady load the queue is never idle that long and no
trim runs (docs/design.md#compression-modes, "Memory after a burst").

Locking
-------
``_cond`` (a Condition) guards ``_submitted``, ``_watermark`` and ``_done``.
The store's own lock is taken inside ``store.complete``, never while holding
``_cond``.  Workers block in C (``SimpleQueue.get``, codec calls) and never
spin: a spinning thread starves the request thread of the GIL and IOPS
collapse (docs/design.md#tuning-constants).
"""

from __future__ import annotations

import logging
import queue
import threading

from . import heap

log = logging.getLogger("zramd.workers")

# How long the queue stays empty before a worker that did work trims the
# heap (docs/design.md#compression-modes, "Memory after a burst").
TRIM_IDLE_S = 0.2
# Batches a worker takes off the queue at once when they queued up while it
# compressed (docs/design.md#compression-modes).
DRAIN_MAX_BATCHES = 8


class CompressionWorkers:
    def __init__(self, store, nworkers: int, name: str = "zramd-compress"):
        if nworkers < 1:
            raise ValueError("need at least one worker")
        self.store = store
        self.nworkers = nworkers
        self.name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._submitted = 0
        self._watermark = 0
        self._done: set[int] = set()
        self._threads: list[threading.Thread] = []
        self.worker_errors = 0
        self.trims = 0  # heap trims after a burst (module doc)

    def start(self) -> None:
        for i in range(self.nworkers):
            t = threading.Thread(target=self._run, name=f"{self.name}-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def submit(self, batch: list) -> int:
        """Queue a batch of staged pages; return its sequence number."""
        with self._cond:
            self._submitted += 1
            seq = self._submitted
        self._queue.put((seq, batch))
        return seq

    def wait(self) -> None:
        """Block until every batch submitted so far has been installed or
        superseded (batches submitted meanwhile are not waited for)."""
        with self._cond:
            target = self._submitted
            while self._watermark < target:
                self._cond.wait()

    def backlog(self) -> int:
        """Batches submitted and not yet done."""
        with self._cond:
            return self._submitted - self._watermark - len(self._done)

    def stop(self) -> None:
        """Finish all queued work, then end the threads."""
        self.wait()
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join()
        self._threads.clear()

    def _run(self) -> None:
        complete, complete_all = self.store.complete, self.store.complete_all
        owed = False  # work done since this worker last trimmed the heap
        while True:
            if owed:
                try:
                    item = self._queue.get(timeout=TRIM_IDLE_S)
                except queue.Empty:
                    owed = False
                    if self.backlog() == 0:
                        heap.trim(collect=False)
                        self.trims += 1
                    continue
            else:
                item = self._queue.get()
            if item is None:
                return
            owed = True
            seqs, batch = [item[0]], list(item[1])
            stop = False
            while len(seqs) < DRAIN_MAX_BATCHES:  # what queued up meanwhile, in one go
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                seqs.append(more[0])
                batch += more[1]
            try:
                complete_all(batch)  # one codec call and one lock for all of it
            except Exception:  # page by page, to find the one that fails
                for index, pending in batch:
                    try:
                        complete(index, pending)
                    except Exception:  # the page stays pending: readable, not lost
                        self.worker_errors += 1
                        log.exception("compressing page %d failed", index)
            for seq in seqs:
                self._mark_done(seq)
            if stop:
                return

    def _mark_done(self, seq: int) -> None:
        with self._cond:
            self._done.add(seq)
            advanced = False
            while self._watermark + 1 in self._done:
                self._watermark += 1
                self._done.remove(self._watermark)
                advanced = True
            if advanced:
                self._cond.notify_all()

"""Writeback: moving pages from RAM to the backing file (zram's
CONFIG_ZRAM_WRITEBACK), on command and by an automatic policy.

On command (zram's ``writeback`` knob): ``idle``, ``huge``, ``huge_idle``
or ``incompressible`` pages, optionally at most N pages.  With
``writeback_limit_enable`` on, ``writeback_limit`` (pages) is a budget that
each written page uses up, as in zram.

Automatic policy (zram has none): when ``mem_used_total`` passes the high
watermark, the coldest pages (oldest access first) are written back until
it is below the low watermark.  Writers that find memory above the high
watermark wait (at most ``THROTTLE_MAX_S``) for the policy to catch up, so
memory stays near the high watermark however fast the client writes; the
hard cap remains ``mem_limit``.

Stall: a policy run that writes nothing (backing file full, a write error
such as a full disk, ``writeback_limit`` used up, nothing to write back)
marks writeback *stalled* (``stall_reason``); while stalled, writers above
the high watermark go on at once (``throttle_skipped``) instead of waiting
for a writeback that cannot free anything.  The stall ends when something
changes: the block of a written-back page is freed by a trim or a rewrite
(``backing.freed_total`` moves; a block a run took and gave back itself,
after a failed write or for a superseded page, does not count: it brings
no space back, and counting it made every writer wait again on a full
disk), the limit or the watermarks are set, or a run writes pages again; a
writer also retries one policy run (without waiting) every
``STALL_RETRY_S``, for causes we cannot observe (space freed on the
filesystem).

Each page is written raw to a freshly allocated block (or, with
``pack``, its compressed form packed with others: packlog.py), then
installed as ``Backed`` only if its slot still holds the entry that was
written (a page rewritten while under writeback keeps the new data; its
block is freed).  Pages go out ``batch_pages`` at a time (zram's
writeback_batch_size): the batch's blocks are written together, one
``pwritev`` per run of contiguous blocks (docs/design.md#packed-writeback).
A job may name its pages (zram's ``page_index=`` / ``page_indexes=``):
then every named page that holds a payload in RAM is a candidate.
Packed, freed objects leave dead bytes in blocks that still hold live
ones: after a free, a ``("repack", None)`` job (queued once until it
runs) rewrites at most ``REPACK_MAX_BLOCKS`` such blocks, and queues the
next run behind the waiting jobs while any is left (packlog.py ``repack``).
Candidates come from ``store.candidates`` (scan.py) as ``(index, handle)``;
a candidate whose slot holds another handle is skipped, and ``store.commit_backed``
checks the content again under the store's lock.
A failed write (disk full, I/O error) frees the block, leaves the page in
RAM, is counted and ends that run; serving goes on.

Data structure: one thread, ``zramd-writeback``, takes jobs from a
``SimpleQueue`` (blocking in C; never spinning): ``("writeback", Job)``,
``("policy", None)``, ``("repack", None)`` and ``None`` to stop.  ``_cond`` guards the counters,
the limits and the watermarks, and wakes throttled writers.  Lock order:
the store's lock and the backing file's are never taken while ``_cond``
is held.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from .arena import FLAG_BIT, TAG_MASK, TAG_OBJ
from .backing import alloc_blocks
from .packlog import PRIMARY, SECONDARY
from .store import Backed

log = logging.getLogger("zramd.writeback")

WRITEBACK_TYPES = ("idle", "huge", "huge_idle", "incompressible")  # zram's writeback types
# Pages per batch (zram's writeback_batch_size): written together, and
# between checks of the watermark and the throttled writers: 64 pages =
# 256 KiB of file writes (docs/design.md#packed-writeback).
WRITEBACK_BATCH_PAGES = 64
MAX_WRITEBACK_BATCH_PAGES = 4096
# Pages laid out together when packed: 64 fill the blocks to 81% on the
# real-program corpus, 256 to 90%, 1024 to 92% (docs/design.md#packed-writeback).
PACK_WINDOW_PAGES = 1024
# Blocks one repack run rewrites at most: about a batch of pages' worth
# of I/O, so the thread gets back to policy runs soon
# (docs/design.md#packed-writeback).
REPACK_MAX_BLOCKS = 64
# Longest a writer waits above the high watermark before going on anyway
# (when nothing can be written back: backing file full or failing).
THROTTLE_MAX_S = 2.0
# While stalled, a writer asks for one more policy run at most this often
# (it never waits for it): a full disk may have been given space meanwhile.
STALL_RETRY_S = 1.0


class Job:
    def __init__(self, wb_type: str, limit: int | None, pages: list | None = None):
        self.wb_type = wb_type
        self.limit = limit
        self.pages = pages  # [(first, last)] page indexes, or None
        self.result: dict | None = None
        self.done = threading.Event()


class Writeback:
    def __init__(
        self,
        store,
        backing,
        high_watermark: int = 0,
        low_watermark: int = 0,
        pack=None,
        batch_pages: int = WRITEBACK_BATCH_PAGES,
    ):
        self.store = store
        self.backing = backing
        self.pack = pack  # a packlog.PackLog: --writeback-compressed
        self.batch_pages = batch_pages
        self._repack_queued = False
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._policy_queued = False
        self.high_watermark = high_watermark
        self.low_watermark = low_watermark
        self.writeback_limit_enable = False
        self.writeback_limit = 0
        # counters
        self.wb_runs = 0
        self.wb_superseded = 0
        self.wb_failed = 0
        self.wb_backing_full = 0
        self.policy_runs = 0
        self.throttled_writes = 0
        # stall (see module docstring); guarded by _cond
        self.stall_reason: str | None = None
        self.stalls = 0  # times writeback became stalled
        self.throttle_skipped = 0  # writers above the high mark that did not wait
        self._stall_freed = 0  # backing.freed_total when the stall began
        self._stall_retry_at = 0.0

    # -- life cycle ------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="zramd-writeback", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        self.backing.close()

    # -- requests ----------------------------------------------------------
    def request(
        self,
        wb_type: str,
        limit: int | None = None,
        timeout: float | None = None,
        pages: list[tuple[int, int]] | None = None,
    ) -> dict:
        """Run a writeback of ``wb_type`` pages on the writeback thread; wait.
        With ``pages`` (``[(first, last)]`` page indexes, both included:
        zram's ``page_index=`` / ``page_indexes=``), of those pages instead."""
        if pages is not None:
            for first, last in pages:
                if not 0 <= first <= last < self.store.nr_pages:
                    raise ValueError(
                        f"page range {first}-{last} is not inside the device "
                        f"(pages 0-{self.store.nr_pages - 1})"
                    )
            wb_type = "page_index"
        elif wb_type not in WRITEBACK_TYPES:
            raise ValueError(
                f"unknown writeback type {wb_type!r} (choose from {', '.join(WRITEBACK_TYPES)})"
            )
        job = Job(wb_type, limit, pages)
        self._queue.put(("writeback", job))
        if not job.done.wait(timeout) or job.result is None:
            raise TimeoutError("writeback did not finish in time")
        return job.result

    def set_watermarks(self, high: int, low: int) -> None:
        if high < 0 or low < 0 or low > high:
            raise ValueError("watermarks need 0 <= low <= high")
        with self._cond:
            self.high_watermark, self.low_watermark = high, low
            self._unstall()
        self.kick()

    def set_limit(self, enable: bool | None = None, pages: int | None = None) -> None:
        if pages is not None and pages < 0:
            raise ValueError("writeback_limit must not be negative")
        with self._cond:
            if enable is not None:
                self.writeback_limit_enable = enable
            if pages is not None:
                self.writeback_limit = pages
            self._unstall()
        self.kick()

    def set_batch_size(self, pages: int) -> None:
        """zram's writeback_batch_size: pages written together."""
        if not 1 <= pages <= MAX_WRITEBACK_BATCH_PAGES:
            raise ValueError(f"writeback_batch_size must be 1 to {MAX_WRITEBACK_BATCH_PAGES}")
        self.batch_pages = pages

    def has_freed(self) -> bool:
        """Whether a free left work: blocks to discard, or packed blocks
        with dead bytes to repack."""
        return self.backing.has_freed() or (self.pack is not None and self.pack.has_dead())

    def discard_freed(self) -> None:
        """After a request freed written-back pages: discard the emptied
        blocks now (before the reply: docs/design.md#security) and queue a
        repack for blocks that hold dead objects beside live ones."""
        if self.backing.has_freed():
            self.backing.discard_freed()
        if self.pack is not None and self.pack.has_dead():
            with self._cond:
                if self._repack_queued:
                    return
                self._repack_queued = True
            self._queue.put(("repack", None))

    def kick(self) -> None:
        """Ask for a policy run if memory is above the high watermark."""
        high = self.high_watermark
        if high and self.store.mem_used_total > high:
            with self._cond:
                if self._policy_queued:
                    return
                self._policy_queued = True
            self._queue.put(("policy", None))

    def throttle(self) -> None:
        """Called by a writer that found memory above the high watermark:
        wait for the policy, unless writeback is stalled."""
        retry = False
        with self._cond:
            if self.stall_reason is not None:
                if self.backing.freed_total != self._stall_freed:
                    self._unstall()  # space came back: try again (and wait)
                else:
                    self.throttle_skipped += 1
                    now = time.monotonic()
                    if now < self._stall_retry_at:
                        return
                    self._stall_retry_at = now + STALL_RETRY_S
                    retry = True
        self.kick()
        if retry:
            return
        with self._cond:
            self.throttled_writes += 1
            self._cond.wait_for(
                lambda: (
                    not self.high_watermark
                    or self.store.mem_used_total <= self.high_watermark
                    or self.stall_reason is not None
                ),
                THROTTLE_MAX_S,
            )

    def _unstall(self) -> None:
        """Something changed: writers wait for writeback again (_cond held)."""
        self.stall_reason = None

    def _stall(self, reason: str, freed_before: int) -> None:
        """Writeback cannot progress: writers stop waiting for it.  A block
        freed since ``freed_before`` (the start of the run) ends the stall
        at the next throttled write."""
        with self._cond:
            if self.stall_reason is None:
                self.stalls += 1
                log.warning(
                    "writeback stalled (%s): writers above the high watermark no longer wait",
                    reason,
                )
            self.stall_reason = reason
            self._stall_freed = freed_before
            self._stall_retry_at = time.monotonic() + STALL_RETRY_S
            self._cond.notify_all()

    # -- the thread ------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            what, job = item
            try:
                if what == "writeback":
                    started, cpu_started = time.monotonic(), time.thread_time()
                    result = self._writeback(self._candidates(job), job.limit)
                    result["elapsed_s"] = round(time.monotonic() - started, 6)
                    # this thread's CPU time (user and system): steadier than
                    # elapsed_s on a shared machine (tools/packed_writeback_bench.py)
                    result["cpu_s"] = round(time.thread_time() - cpu_started, 6)
                    job.result = result
                elif what == "repack":
                    self._repack()
                else:
                    with self._cond:
                        self._policy_queued = False
                    self._policy()
            except Exception as exc:  # keep serving; report to the caller
                log.exception("writeback failed")
                if job is not None:
                    job.result = {"error": str(exc)}
            finally:
                if job is not None:
                    job.done.set()
                with self._cond:
                    self._cond.notify_all()

    def _candidates(self, job: Job) -> list:
        if job.pages is None:
            return self.store.candidates(job.wb_type)
        handles = self.store.slot_tables()[0]
        seen: set[int] = set()
        out = []
        for first, last in job.pages:
            for i in range(first, last + 1):
                if handles[i] & TAG_MASK == TAG_OBJ and i not in seen:
                    seen.add(i)
                    out.append((i, handles[i]))
        return out

    def _repack(self) -> None:
        """One bounded repack run; if dead blocks remain, queue the next run
        behind whatever jobs wait (a policy run is never starved by it)."""
        with self._cond:
            self._repack_queued = False
        out = self.pack.repack(self.store, REPACK_MAX_BLOCKS)
        with self._cond:
            self._cond.notify_all()
        if out["error"] or not out["blocks"]:
            return  # a full or failing backing store: the next free tries again
        self.discard_freed()  # queues the next run if blocks with dead objects remain

    def _budget(self, want: int | None) -> int | None:
        with self._cond:
            if self.writeback_limit_enable:
                return self.writeback_limit if want is None else min(want, self.writeback_limit)
        return want

    def _writeback(
        self, candidates: list, limit: int | None, until_bytes: int | None = None
    ) -> dict:
        """Write back ``candidates`` in order, ``batch_pages`` at a time; stop
        at ``limit`` pages, at the writeback_limit budget, when memory is at
        most ``until_bytes``, or at the first backing-file error."""
        store = self.store
        budget = self._budget(limit)
        result: dict[str, Any] = {
            "written": 0,
            "superseded": 0,
            "candidates": len(candidates),
            "error": None,
        }
        with self._cond:
            self.wb_runs += 1
        self.backing.check_size()  # a file cut outside zramd: say so once
        pos = 0
        # packed, a window of pages is laid out together (fuller blocks) and
        # written batch_pages blocks at a time
        window = max(self.batch_pages, PACK_WINDOW_PAGES) if self.pack else self.batch_pages
        handles = store.slot_tables()[0]
        while pos < len(candidates):
            want = window
            if budget is not None:
                want = min(want, budget - result["written"])
                if want <= 0:
                    break
            indexes: list[int] = []
            entries: list = []  # each (handle, payload): store.entry's tuple
            while pos < len(candidates) and len(indexes) < want:
                index, handle = candidates[pos]
                pos += 1
                # the slot still holds the candidate, and the entry read is of that handle
                entry = store.entry(index) if handles[index] == handle else None
                if type(entry) is not tuple or entry[0] != handle:
                    result["superseded"] += 1
                    continue
                indexes.append(index)
                entries.append(entry)
            out = self._write_batch(indexes, entries)
            result["written"] += out["written"]
            result["superseded"] += out["superseded"]
            with self._cond:
                self.wb_backing_full += out["full"]
                self.wb_failed += out["failed"]
                self._cond.notify_all()  # wake throttled writers between batches
            if out["error"]:
                result["error"] = out["error"]
                break
            if until_bytes is not None and store.mem_used_total <= until_bytes:
                break
        return self._finish(result)

    def _write_batch(self, indexes: list[int], entries: list) -> dict:
        """Store pages ``indexes`` (``entries``: what each slot held, as
        ``(handle, payload)``) on the backing store, packed or raw."""
        if self.pack is not None:
            return self.pack.store_pages(
                self.store,
                indexes,
                entries,
                [entry[1] for entry in entries],
                [SECONDARY if entry[0] & FLAG_BIT else PRIMARY for entry in entries],
                self.batch_pages,
            )
        return self._write_raw(indexes, entries)

    def _write_raw(self, indexes: list[int], entries: list) -> dict:
        """Each page raw in a block of its own, the batch's writes together."""
        store, backing = self.store, self.backing
        out: dict[str, Any] = {
            "written": 0,
            "superseded": 0,
            "full": 0,
            "failed": 0,
            "error": None,
        }
        blocks, full = alloc_blocks(backing, len(indexes))
        if full:
            out["full"], out["error"] = 1, full
            del indexes[len(blocks) :], entries[len(blocks) :]
        try:
            backing.write_many(blocks, [store.decode(entry) for entry in entries])
        except OSError as exc:
            written: set[int] = getattr(exc, "written", set())  # whole before the error
            for block in blocks:
                if block not in written:
                    backing.give_back(block)  # not space that came back: the stall holds
            backing.discard_freed()
            keep = [i for i, block in enumerate(blocks) if block in written]
            indexes = [indexes[i] for i in keep]
            entries = [entries[i] for i in keep]
            blocks = [blocks[i] for i in keep]
            out["failed"], out["full"] = 1, 0
            out["error"] = f"backing file write failed: {exc.strerror or exc}"
        done = store.commit_backed(indexes, entries, [Backed(block) for block in blocks])
        for block, ok in zip(blocks, done, strict=True):
            if ok:
                out["written"] += 1
            else:  # rewritten while under writeback: the new data wins
                backing.give_back(block)
                out["superseded"] += 1
        if backing.has_freed():
            backing.discard_freed()  # they hold old pages: out with them
        return out

    def _finish(self, result: dict) -> dict:
        if self.backing.has_freed():
            self.backing.discard_freed()
        with self._cond:
            self.wb_superseded += result["superseded"]
            if self.writeback_limit_enable:
                self.writeback_limit = max(0, self.writeback_limit - result["written"])
        return result

    def _policy(self) -> None:
        """Write back the coldest pages until memory is below the low mark."""
        while True:
            high, low = self.high_watermark, self.low_watermark
            if not high or self.store.mem_used_total <= low:
                return
            with self._cond:
                self.policy_runs += 1
                freed_before = self.backing.freed_total
            result = self._writeback(self.store.candidates("cold"), None, until_bytes=low)
            with self._cond:
                limited = self.writeback_limit_enable and self.writeback_limit == 0
                if result["written"]:
                    self._unstall()
            if result["written"] and not result["error"] and not limited:
                continue  # progress: go on until below the low mark
            if self.store.mem_used_total > self.high_watermark > 0:
                # above the mark and this is as far as writeback gets
                reason = result["error"] or (
                    "writeback_limit used up" if limited else "nothing to write back"
                )
                self._stall(reason, freed_before)
            return

    def stats(self) -> dict:
        used, touched = self.backing.used_blocks(), self.backing.touched_blocks()
        backing_stats = self.backing.stats()
        if self.pack is not None:
            backing_stats |= self.pack.stats()
        with self._cond:
            return backing_stats | {
                "bd_blocks": used,
                "writeback_compressed": self.pack is not None,
                "writeback_batch_pages": self.batch_pages,
                "backing_file": self.backing.path,
                "backing_blocks": self.backing.nr_blocks,
                "backing_used_blocks": used,
                "backing_touched_blocks": touched,
                "bd_write_errors": self.backing.write_errors,
                "bd_last_error": self.backing.last_error,
                "bd_full_events": self.wb_backing_full,
                "writeback_runs": self.wb_runs,
                "writeback_superseded": self.wb_superseded,
                "writeback_failed": self.wb_failed,
                "writeback_limit": self.writeback_limit,
                "writeback_limit_enable": self.writeback_limit_enable,
                "high_watermark": self.high_watermark,
                "low_watermark": self.low_watermark,
                "policy_runs": self.policy_runs,
                "throttled_writes": self.throttled_writes,
                "writeback_stalled": int(self.stall_reason is not None),
                "writeback_stall_reason": self.stall_reason or "",
                "writeback_stalls": self.stalls,
                "throttle_skipped": self.throttle_skipped,
            }

"""The page store: zram's slot table, in Python.

Data structure
--------------
``_slots`` is a list with one entry per 4 KiB page (``index = offset >> 12``;
a list costs 11 ns per get/set, design.md section 4).  An entry is a single
immutable object, so its state and its data change together in one list
store, and a reader loads it once without a lock:

=====================  ==============================================  =========
entry                  meaning                                          zram name
=====================  ==============================================  =========
``None``               never written, or freed (trim, write-zeroes)     (empty)
``int``                same-filled page: this 8-byte little-endian      ZRAM_SAME
                       word repeated 512 times (``0``: zero page)
``bytes``, len < 4096  compressed with the store's codec
``bytes``, len 4096    huge page: incompressible, stored raw            ZRAM_HUGE
=====================  ==============================================  =========

A stored compressed page costs its payload plus one ``bytes`` object header
(33 bytes) plus one list pointer (8 bytes): about 49 bytes of metadata.

Invariants (whenever ``_lock`` is free)
---------------------------------------
- ``pages_stored`` = number of non-``None`` entries; ``orig_data_size`` =
  ``pages_stored * 4096`` (zram counts same pages here too);
- ``compr_data_size`` = sum of ``len(entry)`` over ``bytes`` entries;
- ``mem_used_total`` = sum of ``len(entry) + BYTES_HEADER`` over ``bytes``
  entries (same pages cost nothing, as in zram);
- ``same_pages`` / ``huge_pages`` = number of ``int`` / 4096-byte entries;
- ``mem_used_total <= mem_limit`` whenever a limit is set, except when the
  limit was lowered below current use at run time (as in zram).

Locking
-------
``_lock`` guards every store into ``_slots`` and every counter.  Writers do
the expensive work outside it (compression releases the GIL): they build the
new entries first, then install all entries of one request at once under
the lock, after checking ``mem_limit`` for the request as a whole, so a
request is installed entirely or not at all and a failed write changes
nothing.  A partial-page write (read-modify-write) remembers the entry it
read and installs only if the slot still holds that very object; otherwise
it merges again with the newer entry.  Readers take no lock.
"""

from __future__ import annotations

import errno
import sys
import threading

from .codecs import Codec
from .units import PAGE_SHIFT, PAGE_SIZE

PAGE_MASK = PAGE_SIZE - 1
ZERO_PAGE = bytes(PAGE_SIZE)
WORD_SIZE = 8
WORDS_PER_PAGE = PAGE_SIZE // WORD_SIZE

# A compressed page of this size or more is stored raw (huge).  zram uses
# zsmalloc's huge_class_size, 3264 bytes with 4 KiB pages on x86-64: a
# larger object would take a whole zspage slot anyway.  We use the same cut so
# that compression ratios compare like with like against kernel zram.
HUGE_THRESHOLD = 3264

# What CPython spends on a bytes object besides its payload
# (sys.getsizeof(b"") == 33 on 64-bit CPython 3.11).
BYTES_HEADER = sys.getsizeof(b"")

# nbdkit extent types (nbdkit.EXTENT_HOLE / EXTENT_ZERO), so that this module
# does not import nbdkit.
EXTENT_DATA = 0
EXTENT_HOLE = 1
EXTENT_ZERO = 2

MM_STAT_FIELDS = (
    "orig_data_size", "compr_data_size", "mem_used_total", "mem_limit",
    "mem_used_max", "same_pages", "pages_compacted", "huge_pages",
    "huge_pages_since",
)
IO_STAT_FIELDS = ("failed_reads", "failed_writes", "invalid_io", "notify_free")

_ANY = object()  # "install whatever the slot holds now" (full-page writes)


class StoreError(OSError):
    """An I/O error with the errno the NBD client should see."""


def same_filled_word(page) -> int | None:
    """The repeated 8-byte word if ``page`` is same-filled, else None.

    ``ZERO_PAGE.startswith(page)`` is a memcmp (~0.1 us, design.md 4); the
    general case first rejects pages whose first and last words differ.
    """
    if ZERO_PAGE.startswith(page):
        return 0
    first = bytes(page[:WORD_SIZE])
    if first != page[-WORD_SIZE:]:
        return None
    if bytes(page) != first * WORDS_PER_PAGE:
        return None
    return int.from_bytes(first, "little")


def _entry_cost(entry) -> tuple[int, int, int, int, int]:
    """(stored, compr_bytes, mem_bytes, same, huge) that ``entry`` adds."""
    if entry is None:
        return 0, 0, 0, 0, 0
    if type(entry) is int:
        return 1, 0, 0, 1, 0
    n = len(entry)
    return 1, n, n + BYTES_HEADER, 0, 1 if n == PAGE_SIZE else 0


class PageStore:
    """A compressed RAM disk of ``size_bytes`` (whole pages); see module doc."""

    def __init__(self, size_bytes: int, codec: Codec, mem_limit_bytes: int = 0):
        if size_bytes <= 0 or size_bytes & PAGE_MASK:
            raise ValueError(f"size must be a positive whole number of pages: {size_bytes}")
        self.size_bytes = size_bytes
        self.nr_pages = size_bytes >> PAGE_SHIFT
        self.codec = codec
        self._slots: list = [None] * self.nr_pages
        self._lock = threading.Lock()
        # mm_stat
        self.pages_stored = 0
        self.compr_data_size = 0
        self.mem_used_total = 0
        self.mem_limit = mem_limit_bytes
        self.mem_used_max = 0
        self.same_pages = 0
        self.huge_pages = 0
        self.huge_pages_since = 0
        # io_stat
        self.failed_reads = 0
        self.failed_writes = 0
        self.invalid_io = 0
        self.notify_free = 0
        # request counters (zram's block-layer "stat"), for rates
        self.num_reads = 0
        self.num_writes = 0
        self.num_discards = 0

    # ------------------------------------------------------------------
    # encoding
    def encode(self, page):
        """The slot entry for one 4 KiB page (bytes-like); no locks, no state.

        The result never refers to ``page``: compressed output and raw copies
        are new objects, so nbdkit may reuse its buffer after we return.
        """
        word = same_filled_word(page)
        if word is not None:
            return word
        out = self.codec.compress(page, HUGE_THRESHOLD)
        return bytes(page) if out is None else out

    def decode(self, entry) -> bytes:
        """The 4 KiB page an entry stands for."""
        if type(entry) is bytes:
            return entry if len(entry) == PAGE_SIZE else self.codec.decompress(entry)
        if entry is None or entry == 0:
            return ZERO_PAGE
        return entry.to_bytes(WORD_SIZE, "little") * WORDS_PER_PAGE

    # ------------------------------------------------------------------
    # I/O
    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size_bytes:
            with self._lock:
                self.invalid_io += 1
            raise StoreError(errno.EINVAL, f"I/O beyond the end of the device: "
                                           f"offset {offset} length {length}")

    def read(self, buf, offset: int) -> None:
        """Fill the writable buffer ``buf`` from ``offset``."""
        length = len(buf)
        self._check_range(offset, length)
        slots = self._slots
        try:
            if length == PAGE_SIZE and not offset & PAGE_MASK:
                buf[:] = self.decode(slots[offset >> PAGE_SHIFT])
            else:
                pos = 0
                while pos < length:
                    index, start = divmod(offset + pos, PAGE_SIZE)
                    n = min(PAGE_SIZE - start, length - pos)
                    page = self.decode(slots[index])
                    buf[pos:pos + n] = page if n == PAGE_SIZE else page[start:start + n]
                    pos += n
        except Exception as exc:
            with self._lock:
                self.failed_reads += 1
                self.num_reads += 1
            raise StoreError(errno.EIO, f"read failed at offset {offset}: {exc}") from exc
        with self._lock:
            self.num_reads += 1

    def write(self, data, offset: int) -> None:
        """Store ``data`` (bytes-like) at ``offset``: all of it, or nothing."""
        length = len(data)
        self._check_range(offset, length)
        try:
            if length == PAGE_SIZE and not offset & PAGE_MASK:
                self._install([(offset >> PAGE_SHIFT, self.encode(data), _ANY)], writes=1)
                return
            full = []
            edges = []  # (index, start, data slice) of partial pages
            pos = 0
            while pos < length:
                index, start = divmod(offset + pos, PAGE_SIZE)
                n = min(PAGE_SIZE - start, length - pos)
                if n == PAGE_SIZE:
                    full.append((index, self.encode(data[pos:pos + n]), _ANY))
                else:
                    edges.append((index, start, data[pos:pos + n]))
                pos += n
            self._install_with_edges(full, edges, writes=1)
        except StoreError:
            raise
        except Exception as exc:
            with self._lock:
                self.failed_writes += 1
            raise StoreError(errno.EIO, f"write failed at offset {offset}: {exc}") from exc

    def discard(self, offset: int, length: int) -> None:
        """Trim / write-zeroes: free whole pages, zero the partial edges.

        Every whole page discarded counts in ``notify_free``, as zram counts
        each page of a discard bio.
        """
        self._check_range(offset, length)
        end = offset + length
        first_full = (offset + PAGE_MASK) >> PAGE_SHIFT
        end_full = end >> PAGE_SHIFT
        edges = []
        if first_full > end_full:  # inside one page
            edges.append((offset >> PAGE_SHIFT, offset & PAGE_MASK, bytes(length)))
        else:
            if offset & PAGE_MASK:
                edges.append((offset >> PAGE_SHIFT, offset & PAGE_MASK,
                              bytes(PAGE_SIZE - (offset & PAGE_MASK))))
            if end & PAGE_MASK:
                edges.append((end_full, 0, bytes(end & PAGE_MASK)))
        full = [(index, None, _ANY) for index in range(first_full, end_full)]
        self._install_with_edges(full, edges, discards=1, freed=len(full))

    # ------------------------------------------------------------------
    # installing entries
    def _install_with_edges(self, full, edges, **counters) -> None:
        """Merge partial pages into their current entries and install all.

        If another writer changed an edge page between our read and our
        install, merge again with its entry (a page never loses an update).
        """
        while True:
            changes = list(full)
            for index, start, part in edges:
                old = self._slots[index]
                page = bytearray(self.decode(old))
                page[start:start + len(part)] = part
                changes.append((index, self.encode(page), old))
            if self._install(changes, **counters):
                return

    def _install(self, changes, writes=0, discards=0, freed=0) -> bool:
        """Install ``[(index, new_entry, expected_old)]`` atomically.

        Returns False (installing nothing) if a slot no longer holds its
        expected entry; raises ENOSPC (installing nothing) if a write request
        as a whole would take memory use over ``mem_limit``.  Discards are
        not refused: zeroing a partial edge may grow a page by a few bytes,
        and a trim must not fail for lack of memory.
        """
        slots = self._slots
        with self._lock:
            if len(changes) == 1:  # the 4 KiB hot path, without a loop
                index, new, expected = changes[0]
                old = slots[index]
                if expected is not _ANY and old is not expected:
                    return False
                o_st, o_cb, o_mem, o_same, o_huge = _entry_cost(old)
                n_st, n_cb, n_mem, n_same, n_huge = _entry_cost(new)
                d_mem = n_mem - o_mem
                if writes and self.mem_limit and d_mem > 0 \
                        and self.mem_used_total + d_mem > self.mem_limit:
                    self.failed_writes += writes
                    raise StoreError(errno.ENOSPC, "mem_limit reached")
                slots[index] = new
                self.pages_stored += n_st - o_st
                self.compr_data_size += n_cb - o_cb
                self.same_pages += n_same - o_same
                self.huge_pages += n_huge - o_huge
                self.huge_pages_since += n_huge
            else:
                d_mem = 0
                olds = []
                for index, new, expected in changes:
                    old = slots[index]
                    if expected is not _ANY and old is not expected:
                        return False
                    olds.append(old)
                    d_mem += _entry_cost(new)[2] - _entry_cost(old)[2]
                if writes and self.mem_limit and d_mem > 0 \
                        and self.mem_used_total + d_mem > self.mem_limit:
                    self.failed_writes += writes
                    raise StoreError(errno.ENOSPC, "mem_limit reached")
                d_st = d_cb = d_same = d_huge = new_huge = 0
                for (index, new, _), old in zip(changes, olds):
                    slots[index] = new
                    o_st, o_cb, _m, o_same, o_huge = _entry_cost(old)
                    n_st, n_cb, _m, n_same, n_huge = _entry_cost(new)
                    d_st += n_st - o_st
                    d_cb += n_cb - o_cb
                    d_same += n_same - o_same
                    d_huge += n_huge - o_huge
                    new_huge += n_huge
                self.pages_stored += d_st
                self.compr_data_size += d_cb
                self.same_pages += d_same
                self.huge_pages += d_huge
                self.huge_pages_since += new_huge
            self.mem_used_total += d_mem
            if self.mem_used_total > self.mem_used_max:
                self.mem_used_max = self.mem_used_total
            self.num_writes += writes
            self.num_discards += discards
            self.notify_free += freed
        return True

    # ------------------------------------------------------------------
    # block status
    def extents(self, offset: int, length: int, req_one: bool = False):
        """Runs of pages as ``[(offset, length, type)]`` covering the range.

        Empty pages are holes that read as zeros, zero-filled same pages are
        zeros, everything else is data.  The first run starts at the page
        holding ``offset`` (nbdkit trims it).
        """
        self._check_range(offset, length)
        slots = self._slots
        first = offset >> PAGE_SHIFT
        end = (offset + length + PAGE_MASK) >> PAGE_SHIFT
        runs = []
        run_start = first
        run_type = None
        for index in range(first, end):
            entry = slots[index]
            if entry is None:
                kind = EXTENT_HOLE | EXTENT_ZERO
            elif entry == 0 and type(entry) is int:
                kind = EXTENT_ZERO
            else:
                kind = EXTENT_DATA
            if kind != run_type:
                if run_type is not None:
                    runs.append((run_start << PAGE_SHIFT, (index - run_start) << PAGE_SHIFT, run_type))
                    if req_one:
                        return runs
                run_start, run_type = index, kind
        runs.append((run_start << PAGE_SHIFT, (end - run_start) << PAGE_SHIFT, run_type))
        return runs

    # ------------------------------------------------------------------
    # stats and knobs
    def stats(self) -> dict:
        """A consistent snapshot of every counter, by zram's names."""
        with self._lock:
            return {
                "orig_data_size": self.pages_stored << PAGE_SHIFT,
                "compr_data_size": self.compr_data_size,
                "mem_used_total": self.mem_used_total,
                "mem_limit": self.mem_limit,
                "mem_used_max": self.mem_used_max,
                "same_pages": self.same_pages,
                "pages_compacted": 0,
                "huge_pages": self.huge_pages,
                "huge_pages_since": self.huge_pages_since,
                "failed_reads": self.failed_reads,
                "failed_writes": self.failed_writes,
                "invalid_io": self.invalid_io,
                "notify_free": self.notify_free,
                "num_reads": self.num_reads,
                "num_writes": self.num_writes,
                "num_discards": self.num_discards,
                "disksize": self.size_bytes,
                "comp_algorithm": self.codec.describe(),
            }

    def set_mem_limit(self, limit_bytes: int) -> None:
        """zram's mem_limit knob; 0 means no limit."""
        if limit_bytes < 0:
            raise ValueError("mem_limit must not be negative")
        with self._lock:
            self.mem_limit = limit_bytes

    def reset_mem_used_max(self) -> None:
        """zram's ``echo 0 > mem_used_max``: restart the peak from now."""
        with self._lock:
            self.mem_used_max = self.mem_used_total

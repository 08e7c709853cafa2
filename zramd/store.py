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
``Pending``            accepted, waiting for an async compression
                       worker: holds the page's stable snapshot
``Recompressed``       compressed again with the secondary codec        ZRAM_COMP_PRIORITY
``Backed``             written back to the backing file, at a block     ZRAM_WB
=====================  ==============================================  =========

Beside the slot table, ``_flags`` (a bytearray: ``IDLE``, ``INCOMPRESSIBLE``,
zram's names) and ``_atime`` (an ``array('I')`` of deciseconds since the
store was made, zram's ac_time) describe each page; they are reset when a
page is rewritten, and an access clears ``IDLE``.  Those updates take no lock
(a racing reader can at worst leave a page marked idle a little longer).

With per-page checksums on, ``_sums[index]`` holds the checksum of the page
data (computed on the stable data at write time) for ``bytes`` and
``Pending`` entries; a read verifies it after decompression.

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
- ``pending_pages`` = number of ``Pending`` entries, each counted as an
  uncompressed page (4096 in ``compr_data_size``, 4096 + header in
  ``mem_used_total``: the snapshot is in RAM), so ``mem_limit`` is reserved
  for the worst case before the write is acknowledged;
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
it merges again with the newer entry.  Readers take no lock, except with
checksums on, where an entry and its checksum are loaded together under it.
A ``Backed`` page's file block is freed when the slot is rewritten (under
the lock), so a reader that read a block checks afterwards that the slot
still holds the same ``Backed`` object; if not, it loads the slot again.
A worker installs a compressed page only if the slot still holds the very
``Pending`` object it compressed (identity is the generation check): a
stale result never overwrites newer data.
"""

from __future__ import annotations

import array
import errno
import sys
import threading
import time

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

# A compressed page this small may be same-filled (lz4 makes 26-33 bytes of
# one, zstd 19-25): only then is the word test worth its 0.3 us.
SAME_CANDIDATE_MAX_BYTES = 64

# What CPython spends on a bytes object besides its payload
# (sys.getsizeof(b"") == 33 on 64-bit CPython 3.11).
BYTES_HEADER = sys.getsizeof(b"")

# nbdkit extent types (nbdkit.EXTENT_HOLE / EXTENT_ZERO), so that this module
# does not import nbdkit.
EXTENT_DATA = 0
EXTENT_HOLE = 1
EXTENT_ZERO = 2

MM_STAT_FIELDS = (
    "orig_data_size",
    "compr_data_size",
    "mem_used_total",
    "mem_limit",
    "mem_used_max",
    "same_pages",
    "pages_compacted",
    "huge_pages",
    "huge_pages_since",
)
IO_STAT_FIELDS = ("failed_reads", "failed_writes", "invalid_io", "notify_free")
BD_STAT_FIELDS = ("bd_count", "bd_reads", "bd_writes")

_ANY = object()  # "install whatever the slot holds now" (full-page writes)


class StoreError(OSError):
    """An I/O error with the errno the NBD client should see."""


class Pending:
    """A page accepted for asynchronous compression.

    ``data`` is a stable snapshot of the page (a 4096-byte bytes-like view),
    unless the no-stable-writes fault injection put a view of nbdkit's own
    buffer there.  ``gen`` numbers pending pages in order of acceptance.
    """

    __slots__ = ("data", "gen")

    def __init__(self, data, gen: int):
        self.data = data
        self.gen = gen

    def __repr__(self):
        return f"Pending(gen={self.gen})"


def same_filled_word(page) -> int | None:
    """The repeated 8-byte word if ``page`` is same-filled, else None.

    ``ZERO_PAGE.startswith(page)`` is a memcmp (~0.1 us, design.md 4); the
    general case first rejects pages whose first and last words differ
    (``startswith`` compares with a memoryview slice by memcmp; ``==``
    would go element by element).
    """
    if ZERO_PAGE.startswith(page):
        return 0
    first = bytes(page[:WORD_SIZE])
    if not first.startswith(page[-WORD_SIZE:]):
        return None
    if bytes(page) != first * WORDS_PER_PAGE:
        return None
    return int.from_bytes(first, "little")


class Recompressed:
    """A page compressed again with the store's secondary codec."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data


class Backed:
    """A page written back to the backing file, at ``block`` (4 KiB units)."""

    __slots__ = ("block",)

    def __init__(self, block: int):
        self.block = block


# page flags (zram's names)
IDLE = 1
INCOMPRESSIBLE = 2

PENDING_COST = (1, PAGE_SIZE, PAGE_SIZE + BYTES_HEADER, 0, 0)
BACKED_COST = (1, 0, 0, 0, 0)
RECOMPRESSED_HEADER = BYTES_HEADER + sys.getsizeof(Recompressed(b""))


def _entry_cost(entry) -> tuple[int, int, int, int, int]:
    """(stored, compr_bytes, mem_bytes, same, huge) that ``entry`` adds."""
    if entry is None:
        return 0, 0, 0, 0, 0
    t = type(entry)
    if t is bytes:
        n = len(entry)
        return 1, n, n + BYTES_HEADER, 0, 1 if n == PAGE_SIZE else 0
    if t is int:
        return 1, 0, 0, 1, 0
    if t is Pending:
        return PENDING_COST
    if t is Backed:
        return BACKED_COST
    n = len(entry.data)
    return 1, n, n + RECOMPRESSED_HEADER, 0, 0


class ChecksumError(StoreError):
    """A page's data does not match the checksum taken when it was written."""


class PageStore:
    """A compressed RAM disk of ``size_bytes`` (whole pages); see module doc.

    ``checksum`` is None or a function page -> int (see ``checksums``).
    ``recomp_codec`` is the secondary codec for ``recompress``; ``backing``
    a ``BackingFile`` for written-back pages (both optional).
    """

    def __init__(
        self,
        size_bytes: int,
        codec: Codec,
        mem_limit_bytes: int = 0,
        checksum=None,
        recomp_codec: Codec | None = None,
        backing=None,
    ):
        if size_bytes <= 0 or size_bytes & PAGE_MASK:
            raise ValueError(f"size must be a positive whole number of pages: {size_bytes}")
        self.size_bytes = size_bytes
        self.nr_pages = size_bytes >> PAGE_SHIFT
        self.codec = codec
        self.checksum = checksum
        self._slots: list = [None] * self.nr_pages
        self._sums = array.array("Q", bytes(8 * self.nr_pages)) if checksum else None
        self._flags = bytearray(self.nr_pages)
        self._atime = array.array("I", bytes(4 * self.nr_pages))
        self._t0 = time.monotonic()
        self._lock = threading.Lock()
        self._gen = 0
        self.recomp_codec = recomp_codec
        self.backing = backing
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
        # asynchronous compression and integrity
        self.pending_pages = 0
        self.pages_staged = 0  # pages handed to workers, ever
        self.pages_superseded = 0  # worker results dropped: the page changed meanwhile
        self.pages_compressed_async = 0  # worker results installed
        self.checksum_errors = 0
        # bd_stat (4 KiB units) and the secondary codec
        self.bd_count = 0
        self.bd_reads = 0
        self.bd_writes = 0
        self.recompressed_pages = 0

    def now(self) -> int:
        """The store's clock for ``_atime``: deciseconds since creation."""
        return int((time.monotonic() - self._t0) * 10)

    # ------------------------------------------------------------------
    # encoding
    def encode(self, page):
        """The slot entry for one 4 KiB page (bytes-like); no locks, no state.

        The result never refers to ``page``: compressed output and raw copies
        are new objects, so nbdkit may reuse its buffer after we return.
        Zero pages are caught first (a memcmp); other same-filled pages
        compress to at most 33 bytes (lz4; zstd 25), so the word test runs
        only on tiny outputs, or when nothing compressed (the none codec).
        """
        if ZERO_PAGE.startswith(page):
            return 0
        out = self.codec.compress(page, HUGE_THRESHOLD)
        if out is None or len(out) <= SAME_CANDIDATE_MAX_BYTES:
            word = same_filled_word(page)
            if word is not None:
                return word
        return bytes(page) if out is None else out

    def decode(self, entry):
        """The 4 KiB page (bytes-like) an entry stands for."""
        t = type(entry)
        if t is bytes:
            return entry if len(entry) == PAGE_SIZE else self.codec.decompress(entry)
        if entry is None or entry == 0:
            return ZERO_PAGE
        if t is Pending:
            return entry.data
        if t is Recompressed:
            return self.recomp_codec.decompress(entry.data)
        if t is Backed:
            return self.backing.read(entry.block)
        return entry.to_bytes(WORD_SIZE, "little") * WORDS_PER_PAGE

    def _load(self, index: int):
        """(entry, page) of one slot; the page verified against its checksum,
        and a written-back page re-checked against a concurrent rewrite."""
        while True:
            if self._sums is None:
                entry = self._slots[index]
            else:
                with self._lock:
                    entry = self._slots[index]
                    expected = self._sums[index]
            page = self.decode(entry)
            t = type(entry)
            if t is Backed:
                if self._slots[index] is not entry:
                    continue  # rewritten while we read: the block may be reused
                with self._lock:
                    self.bd_reads += 1
            if (
                self._sums is not None
                and t is not int
                and entry is not None
                and self.checksum(page) != expected
            ):
                with self._lock:
                    self.checksum_errors += 1
                raise ChecksumError(errno.EIO, f"page {index}: data does not match its checksum")
            return entry, page

    def _sum(self, page) -> int:
        return self.checksum(page) if self._sums is not None else 0

    # ------------------------------------------------------------------
    # I/O
    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size_bytes:
            with self._lock:
                self.invalid_io += 1
            raise StoreError(
                errno.EINVAL, f"I/O beyond the end of the device: offset {offset} length {length}"
            )

    def read(self, buf, offset: int) -> None:
        """Fill the writable buffer ``buf`` from ``offset``."""
        length = len(buf)
        if offset < 0 or offset + length > self.size_bytes:
            self._check_range(offset, length)
        now = self.now()
        try:
            if length == PAGE_SIZE and not offset & PAGE_MASK:
                index = offset >> PAGE_SHIFT
                entry = self._slots[index]
                if self._sums is None and type(entry) is bytes:  # the hot path
                    buf[:] = entry if len(entry) == PAGE_SIZE else self.codec.decompress(entry)
                else:
                    buf[:] = self._load(index)[1]
                self._atime[index] = now
                self._flags[index] &= ~IDLE
            else:
                pos = 0
                while pos < length:
                    index, start = divmod(offset + pos, PAGE_SIZE)
                    n = min(PAGE_SIZE - start, length - pos)
                    page = self._load(index)[1]
                    buf[pos : pos + n] = page if n == PAGE_SIZE else page[start : start + n]
                    self._atime[index] = now
                    self._flags[index] &= ~IDLE
                    pos += n
        except Exception as exc:
            with self._lock:
                self.failed_reads += 1
            if isinstance(exc, ChecksumError):
                raise
            raise StoreError(errno.EIO, f"read failed at offset {offset}: {exc}") from exc
        finally:
            # A rate for `stats --watch`, not a zram stat: bumped without the
            # lock (+= on an attribute is not interrupted by a thread switch
            # in CPython 3.11, but that is an implementation detail).
            self.num_reads += 1

    def write(self, data, offset: int) -> None:
        """Store ``data`` (bytes-like) at ``offset``, compressing in this
        thread: all of it, or nothing."""
        if len(data) == PAGE_SIZE and not offset & PAGE_MASK and 0 <= offset < self.size_bytes:
            try:  # the 4 KiB hot path: one page, no loops
                entry = self.encode(data)
                checksum = self.checksum(data) if self._sums is not None else 0
            except Exception as exc:
                with self._lock:
                    self.failed_writes += 1
                raise StoreError(errno.EIO, f"write failed at offset {offset}: {exc}") from exc
            self._install_one(offset >> PAGE_SHIFT, entry, checksum)
        else:
            self._write(data, offset, None)

    def _install_one(self, index: int, new, checksum: int) -> None:
        """``_install`` for one full-page write (the hot path), unrolled;
        what depends only on ``new`` is worked out before taking the lock."""
        n_st, n_cb, n_mem, n_same, n_huge = _entry_cost(new)
        now = self.now()
        with self._lock:
            old = self._slots[index]
            o_st, o_cb, o_mem, o_same, o_huge = _entry_cost(old)
            d_mem = n_mem - o_mem
            if self.mem_limit and d_mem > 0 and self.mem_used_total + d_mem > self.mem_limit:
                self.failed_writes += 1
                raise StoreError(errno.ENOSPC, "mem_limit reached")
            self._slots[index] = new
            self._flags[index] = 0
            self._atime[index] = now
            if self._sums is not None:
                self._sums[index] = checksum
            if type(old) is not bytes and old is not None and type(old) is not int:
                self._forget(old)
            self.pages_stored += n_st - o_st
            self.compr_data_size += n_cb - o_cb
            self.same_pages += n_same - o_same
            self.huge_pages += n_huge - o_huge
            self.huge_pages_since += n_huge
            self.mem_used_total += d_mem
            if self.mem_used_total > self.mem_used_max:
                self.mem_used_max = self.mem_used_total
            self.num_writes += 1

    def stage(self, data, offset: int) -> list:
        """Accept ``data`` for asynchronous compression: all of it, or nothing.

        ``data`` must be stable (a snapshot): full pages are installed as
        ``Pending`` entries that refer to it, after the same-page test; any
        partial edge pages are merged and compressed here.  Returns the
        ``[(index, pending)]`` a worker must ``complete``.
        """
        staged: list = []
        self._write(data, offset, staged)
        return staged

    def _write(self, data, offset: int, staged: list | None) -> None:
        length = len(data)
        self._check_range(offset, length)
        try:
            full = []
            edges = []  # (index, start, data slice) of partial pages
            pos = 0
            while pos < length:
                index, start = divmod(offset + pos, PAGE_SIZE)
                n = min(PAGE_SIZE - start, length - pos)
                page = data[pos : pos + n]
                if n < PAGE_SIZE:
                    edges.append((index, start, page))
                elif staged is None:
                    full.append((index, self.encode(page), _ANY, self._sum(page)))
                else:
                    word = same_filled_word(page)
                    if word is not None:
                        full.append((index, word, _ANY, 0))
                    else:
                        self._gen += 1  # racy increments only make numbers repeat
                        entry = Pending(page, self._gen)
                        full.append((index, entry, _ANY, self._sum(page)))
                        staged.append((index, entry))
                pos += n
            self._install_with_edges(full, edges, writes=1, staged=len(staged or ()))
        except StoreError:
            raise
        except Exception as exc:
            with self._lock:
                self.failed_writes += 1
            raise StoreError(errno.EIO, f"write failed at offset {offset}: {exc}") from exc

    def complete(self, index: int, pending: Pending) -> bool:
        """Worker side: compress a staged page and install it if the slot
        still holds ``pending``; return whether it was installed."""
        if self._slots[index] is not pending:  # superseded already: skip the work
            with self._lock:
                self.pages_superseded += 1
            return False
        entry = self.encode(pending.data)
        if self._install([(index, entry, pending, None)], compressed_async=1):
            return True
        with self._lock:
            self.pages_superseded += 1
        return False

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
                edges.append(
                    (
                        offset >> PAGE_SHIFT,
                        offset & PAGE_MASK,
                        bytes(PAGE_SIZE - (offset & PAGE_MASK)),
                    )
                )
            if end & PAGE_MASK:
                edges.append((end_full, 0, bytes(end & PAGE_MASK)))
        full = [(index, None, _ANY, 0) for index in range(first_full, end_full)]
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
                old, page = self._load(index)
                page = bytearray(page)
                page[start : start + len(part)] = part
                changes.append((index, self.encode(page), old, self._sum(page)))
            if self._install(changes, **counters):
                return

    def _forget(self, old) -> None:
        """Bookkeeping for a special entry leaving its slot (lock held)."""
        t = type(old)
        if t is Pending:
            self.pending_pages -= 1
        elif t is Backed:
            self.bd_count -= 1
            self.backing.free(old.block)
        elif t is Recompressed:
            self.recompressed_pages -= 1

    def _install(
        self, changes, writes=0, discards=0, freed=0, staged=0, compressed_async=0
    ) -> bool:
        """Install ``[(index, new_entry, expected_old, checksum)]`` atomically.

        Returns False (installing nothing) if a slot no longer holds its
        expected entry; raises ENOSPC (installing nothing) if a write request
        as a whole would take memory use over ``mem_limit``.  Discards and
        worker installs (which only shrink a page) are not refused: zeroing
        a partial edge may grow a page by a few bytes, and a trim must not
        fail for lack of memory.  A checksum of None keeps the slot's own.
        """
        slots = self._slots
        sums = self._sums
        with self._lock:
            d_st = d_cb = d_mem = d_same = d_huge = new_huge = 0
            for index, new, expected, _sum in changes:
                old = slots[index]
                if expected is not _ANY and old is not expected:
                    return False
                o_st, o_cb, o_mem, o_same, o_huge = _entry_cost(old)
                n_st, n_cb, n_mem, n_same, n_huge = _entry_cost(new)
                d_st += n_st - o_st
                d_cb += n_cb - o_cb
                d_mem += n_mem - o_mem
                d_same += n_same - o_same
                d_huge += n_huge - o_huge
                new_huge += n_huge
            if (
                writes
                and self.mem_limit
                and d_mem > 0
                and self.mem_used_total + d_mem > self.mem_limit
            ):
                self.failed_writes += writes
                raise StoreError(errno.ENOSPC, "mem_limit reached")
            now = self.now()
            flags = self._flags
            atime = self._atime
            for index, new, _, checksum in changes:
                old = slots[index]
                if old is not None and type(old) is not bytes and type(old) is not int:
                    self._forget(old)
                t = type(new)
                if t is Pending:
                    self.pending_pages += 1
                elif t is Backed:
                    self.bd_count += 1
                elif t is Recompressed:
                    self.recompressed_pages += 1
                slots[index] = new
                if t is Backed:  # as zram: written-back pages are not idle
                    flags[index] &= ~IDLE
                elif t is not Recompressed:  # new data
                    flags[index] = 0
                    atime[index] = now
                if sums is not None and checksum is not None:
                    sums[index] = checksum
            self.pages_stored += d_st
            self.compr_data_size += d_cb
            self.same_pages += d_same
            self.huge_pages += d_huge
            self.huge_pages_since += new_huge
            self.pages_staged += staged
            self.pages_compressed_async += compressed_async
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
        runs: list[tuple[int, int, int | None]] = []
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
                    runs.append(
                        (run_start << PAGE_SHIFT, (index - run_start) << PAGE_SHIFT, run_type)
                    )
                    if req_one:
                        return runs
                run_start, run_type = index, kind
        runs.append((run_start << PAGE_SHIFT, (end - run_start) << PAGE_SHIFT, run_type))
        return runs

    # ------------------------------------------------------------------
    # idle pages, writeback and recompression (zram's knobs)
    def mark_idle(self, older_than_s: float | None = None) -> int:
        """zram's ``echo all > idle`` (None) or ``echo SECONDS > idle``:
        mark stored pages idle (all, or those not accessed for that long);
        an access clears the mark.  Returns how many pages are idle now."""
        slots, flags, atime = self._slots, self._flags, self._atime
        cutoff = None if older_than_s is None else self.now() - int(older_than_s * 10)
        for index in range(self.nr_pages):
            entry = slots[index]
            t = type(entry)  # as zram: same and written-back pages are never idle
            if entry is None or t is Pending or t is int or t is Backed:
                continue
            if cutoff is None or atime[index] <= cutoff:
                flags[index] |= IDLE
        return self.idle_pages()

    def idle_pages(self) -> int:
        return self._flags.count(IDLE) + self._flags.count(IDLE | INCOMPRESSIBLE)

    def incompressible_pages(self) -> int:
        return self._flags.count(INCOMPRESSIBLE) + self._flags.count(IDLE | INCOMPRESSIBLE)

    def candidates(self, kind: str, limit: int | None = None) -> list:
        """``[(index, entry)]`` of pages that ``kind`` selects, in page order
        (or oldest access first for ``cold``), at most ``limit``.

        kinds: ``idle``, ``huge``, ``huge_idle``, ``incompressible`` (zram's
        writeback types), ``all`` and ``cold`` (every page that holds a
        payload in RAM).  Same pages, pending and written-back pages never
        qualify: they hold nothing worth moving.
        """
        slots, flags = self._slots, self._flags
        out = []
        for index in range(self.nr_pages):
            entry = slots[index]
            t = type(entry)
            if t is bytes:
                huge = len(entry) == PAGE_SIZE
            elif t is Recompressed:
                huge = False
            else:
                continue
            f = flags[index]
            if kind == "idle":
                ok = f & IDLE
            elif kind == "huge":
                ok = huge
            elif kind == "huge_idle":
                ok = huge and f & IDLE
            elif kind == "incompressible":
                ok = f & INCOMPRESSIBLE
            elif kind in ("all", "cold"):
                ok = True
            else:
                raise ValueError(f"unknown page type {kind!r}")
            if ok:
                out.append((index, entry))
        if kind == "cold":
            atime = self._atime
            out.sort(key=lambda item: atime[item[0]])
        return out if limit is None else out[:limit]

    def commit(self, index: int, expected, new) -> bool:
        """Replace ``expected`` by ``new`` (a ``Backed`` or ``Recompressed``
        form of the same data) if the slot still holds ``expected``."""
        ok = self._install([(index, new, expected, None)])
        if ok and type(new) is Backed:
            with self._lock:
                self.bd_writes += 1
        return ok

    def recompress(self, kind: str = "all", threshold: int = 0, limit: int | None = None) -> dict:
        """zram's ``recompress``: compress selected pages again with the
        secondary codec; only pages whose payload is at least ``threshold``
        bytes.  A page that does not shrink is marked incompressible.
        Returns counts."""
        if self.recomp_codec is None:
            raise ValueError("no secondary compression algorithm is configured")
        done = {"recompressed": 0, "incompressible": 0, "skipped": 0, "saved_bytes": 0}
        for index, entry in self.candidates(kind):
            if limit is not None and done["recompressed"] + done["incompressible"] >= limit:
                break
            if (
                type(entry) is Recompressed
                or self._flags[index] & INCOMPRESSIBLE
                or len(entry) < threshold
            ):
                done["skipped"] += 1
                continue
            page = self.decode(entry)
            out = self.recomp_codec.compress(page, min(len(entry), HUGE_THRESHOLD))
            if out is None:
                if self._slots[index] is entry:
                    self._flags[index] |= INCOMPRESSIBLE
                done["incompressible"] += 1
            elif self.commit(index, entry, Recompressed(out)):
                done["recompressed"] += 1
                done["saved_bytes"] += len(entry) - len(out)
        return done

    # ------------------------------------------------------------------
    # stats and knobs
    def stats(self) -> dict:
        """A consistent snapshot of every counter, by zram's names."""
        idle, incompressible = self.idle_pages(), self.incompressible_pages()
        with self._lock:
            return {
                "idle_pages": idle,
                "incompressible_pages": incompressible,
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
                "pending_pages": self.pending_pages,
                "pages_staged": self.pages_staged,
                "pages_superseded": self.pages_superseded,
                "pages_compressed_async": self.pages_compressed_async,
                "checksum_errors": self.checksum_errors,
                "bd_count": self.bd_count,
                "bd_reads": self.bd_reads,
                "bd_writes": self.bd_writes,
                "recompressed_pages": self.recompressed_pages,
                "recomp_algorithm": self.recomp_codec.describe() if self.recomp_codec else None,
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

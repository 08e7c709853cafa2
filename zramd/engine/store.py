"""The page store: zram's slot table, in Python, over a page arena.

Why: docs/design.md#page-arena-and-memory-accounting.

Data structure
--------------
One 64-bit *handle* per 4 KiB page (``index = offset >> 12``), in
``_handles``: a ``memoryview`` cast to ``'Q'`` over an anonymous mmap, so
the table's pages cost memory only once touched.  The low two bits are a
tag:

=====================  ==============================================  ===========
handle                 meaning                                          zram name
=====================  ==============================================  ===========
``0``                  never written, or freed (trim, write-zeroes)     (empty)
``TAG_SAME``           same-filled page: ``handle >> 2`` is the 8-byte  ZRAM_SAME
                       little-endian word repeated 512 times (words
                       of 62 bits or more: ``SameWord`` in ``_side``)
``TAG_OBJ``            an object in the arena (arena.py: length, block,
                       offset); length 4096 = huge page, stored raw     ZRAM_HUGE
``TAG_OBJ|FLAG_BIT``   compressed again with a secondary codec: byte 0  ZRAM_COMP_PRIORITY
                       of the object is its index in ``recomp_codecs``
                       (zram keeps the priority in the slot's flags)
``TAG_SIDE``           an object in ``_side[index]``: ``Pending``
                       (async snapshot), ``Backed`` (written back to    ZRAM_WB
                       the backing file) or ``SameWord``
=====================  ==============================================  ===========

Beside the handles, per page: ``_flags`` (``IDLE``, ``INCOMPRESSIBLE``,
zram's names), ``_atime`` (``'I'``, deciseconds since the store was made,
zram's ac_time) and, with checksums on, ``_sums`` (``'Q'``, the checksum of
the page data taken on the stable data at write time), all in lazily
touched mmaps: 13 bytes per page (21 with checksums), ``SLOT_META_BYTES``.

An *entry* (what ``_load``, ``entry``, ``holds`` and ``commit`` speak of) is
the handle for empty and same pages, ``(handle, payload bytes)`` for an
arena object, and the object itself for side entries.  Comparing entries
compares contents, so a handle value that comes back (a spot freed and
reused by the same slot) is never mistaken for the old data.

Invariants (whenever ``_lock`` is free)
---------------------------------------
- ``pages_stored`` = non-zero handles; ``orig_data_size`` = ``pages_stored
  * 4096`` (zram counts same pages too);
- ``compr_data_size`` = the arena objects' lengths plus 4096 per pending
  page; ``same_pages``, ``huge_pages``, ``pending_pages``, ``bd_count``,
  ``recompressed_pages`` count their handles; ``recompressed_bytes`` is
  the recompressed objects' lengths;
- ``mem_used_total`` = the arena's blocks (free space included) + their
  bookkeeping (``Arena.meta_bytes``) + ``slot_meta_bytes`` per stored
  page + ``PENDING_BYTES`` per pending snapshot; ``mem_used_max`` is its
  peak (a multi-page request's blocks are mapped before its old pages are
  freed, and the peak counts them);
- ``mem_used_total <= mem_limit`` whenever a limit is set, except when the
  limit was lowered below current use at run time (as in zram): a write
  that needs a new block past the limit fails with ENOSPC before it
  changes anything.
- ``audit()`` recomputes all of it from the table and the blocks.

Locking
-------
``_lock`` guards every store into the handle table, ``_side``, the arena
and every counter.  Writers compress outside it (the codecs release the
GIL), then install all pages of one request at once under it, after the
``mem_limit`` check for the request as a whole: all or nothing.  A
partial-page write (read-modify-write) installs only if the slot still
holds the entry it read (compared under the lock), else merges again.
Readers take no lock: they copy an object out of its block and check the
arena's ``epoch`` did not move (arena.py), else try again; after
``READ_RETRIES`` they take the lock.  With checksums on, a reader loads the
handle, its checksum and the payload together under the lock, so a
mismatch is real corruption, never a race.  A ``Backed`` page's file block
is freed when the slot is rewritten, so a reader re-checks the side entry
after reading the file.  A worker installs a compressed page only if the
slot still holds the very ``Pending`` object it compressed.  Compaction
(arena.py) takes ``_compact_lock`` (one compaction at a time), then
``_lock`` a batch at a time; it moves objects and bumps ``epoch``.  A
handle is always replaced before its old spot is freed, so a handle a
lockless reader loads points at a live object until ``epoch`` moves.
Flags and atimes are updated without the lock (a racing reader can at
worst leave a page marked idle a little longer); a large trim gives the
tables' emptied pages back under the lock, so no install races it.

Contracts with the rest of the engine (docs/design.md#module-layout)
--------------------------------------------------------------------
scan.py reads the tables only through ``slot_tables`` (no lock) and
installs only through ``commit``; compaction.py arms its check with
``arm_compaction``, reads ``compaction_figures`` and calls ``compact``;
the 4 KiB ``write`` uses the arena's fast-path interface (arena.py).
"""

from __future__ import annotations

import array
import errno
import mmap
import sys
import threading
import time
from time import monotonic_ns as _monotonic_ns

from ..units import PAGE_SHIFT, PAGE_SIZE
from . import heap, scan
from .arena import (
    BLOCK_SHIFT,
    FLAG_BIT,
    LEN_MASK,
    LEN_SHIFT,
    MAX_BLOCK_PAGES,
    OFF_MASK,
    OFF_SHIFT,
    TAG_MASK,
    TAG_OBJ,
    Arena,
)
from .codecs import Codec, describe_codecs
from .slots import COLD, HUGE_THRESHOLD, IDLE, Recompressed

PAGE_MASK = PAGE_SIZE - 1
ZERO_PAGE = bytes(PAGE_SIZE)
WORD_SIZE = 8
WORDS_PER_PAGE = PAGE_SIZE // WORD_SIZE


# A compressed page this small may be same-filled (lz4 makes 26-33 bytes of
# one, zstd 19-25): only then is the word test worth its 0.3 us.
SAME_CANDIDATE_MAX_BYTES = 64

# What CPython spends on a bytes object besides its payload
# (sys.getsizeof(b"") == 33 on 64-bit CPython 3.11).
BYTES_HEADER = sys.getsizeof(b"")

TAG_SAME = 2
TAG_SIDE = 3
SAME_WORD_LIMIT = 1 << 62
OBJ_CODEC_MASK = TAG_MASK | FLAG_BIT  # TAG_OBJ: primary codec

# A trim is installed this many pages at a time (32 MiB).
DISCARD_CHUNK_PAGES = 8192
# The most one new arena object can make a request map: one block of the
# largest size (docs/design.md#multi-page-requests).
MAX_NEW_BLOCK_BYTES = MAX_BLOCK_PAGES * PAGE_SIZE

# A trim of at least this many pages (256 KiB) gives back the per-page
# tables' pages it leaves empty (a 4 KiB page of handles covers 512 slots,
# of flags 4096): a few us per trim, so small trims skip it.
TABLE_PAGE_BYTES = 4096
TABLE_RELEASE_MIN_PAGES = 64
_ZERO_TABLE = bytes(8 * TABLE_PAGE_BYTES)  # the handles a flags page covers


DECISECOND_NS = 100_000_000  # the unit of ``_atime``

# A lockless read that saw the arena move this many times takes the lock.
READ_RETRIES = 3

# An async snapshot page in RAM: the page and its share of a bytes header.
PENDING_BYTES = PAGE_SIZE + BYTES_HEADER

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


class ChecksumError(StoreError):
    """A page's data does not match the checksum taken when it was written."""


class Pending:
    """A page accepted for asynchronous compression.

    ``data`` is a stable snapshot of the page (a 4096-byte bytes-like view),
    unless the no-stable-writes fault injection put a view of nbdkit's own
    buffer there.  Its identity is its generation: a worker installs its
    result only if the slot still holds this very object.
    """

    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data


class Backed:
    """A page written back to the backing file, at ``block`` (4 KiB units):
    the raw page (``length`` 0), or, packed (packlog.py), ``length`` bytes
    of its compressed form at ``offset`` in the block, compressed with the
    primary (``codec`` 0) or the secondary codec (1)."""

    __slots__ = ("block", "offset", "length", "codec")

    def __init__(self, block: int, offset: int = 0, length: int = 0, codec: int = 0):
        self.block, self.offset, self.length, self.codec = block, offset, length, codec


class SameWord:
    """A same-filled page whose word does not fit in a handle."""

    __slots__ = ("word",)

    def __init__(self, word: int):
        self.word = word


def same_filled_word(page) -> int | None:
    """The repeated 8-byte word if ``page`` is same-filled, else None.

    ``ZERO_PAGE.startswith(page)`` is a memcmp (~0.1 us); the general case
    first rejects pages whose first and last words differ.
    """
    if ZERO_PAGE.startswith(page):
        return 0
    first = bytes(page[:WORD_SIZE])
    if not first.startswith(page[-WORD_SIZE:]):
        return None
    if bytes(page) != first * WORDS_PER_PAGE:
        return None
    return int.from_bytes(first, "little")


def handle_state(h: int, side=None) -> str:
    """A name for what handle ``h`` holds (for tests and diagnostics)."""
    tag = h & TAG_MASK
    if h == 0:
        return "empty"
    if tag == TAG_SAME:
        return "same"
    if tag == TAG_OBJ:
        if h & FLAG_BIT:
            return "recompressed"
        return "huge" if (h >> LEN_SHIFT) & LEN_MASK == PAGE_SIZE else "compressed"
    return {Pending: "pending", Backed: "backed", SameWord: "same"}.get(type(side), "side?")


class PageStore:
    """A compressed RAM disk of ``size_bytes`` (whole pages); see module doc.

    ``checksum`` is None or a function page -> int (see ``checksums``).
    ``recomp_codec`` is the secondary codec for ``recompress``, or a list
    of up to three in priority order (``recomp_codecs``; ``recomp_codec``
    is then the first); ``backing`` a ``BackingFile`` for written-back
    pages (both optional).
    """

    def __init__(
        self,
        size_bytes: int,
        codec: Codec,
        mem_limit_bytes: int = 0,
        checksum=None,
        recomp_codec: Codec | list[Codec] | tuple[Codec, ...] | None = None,
        backing=None,
    ):
        if size_bytes <= 0 or size_bytes & PAGE_MASK:
            raise ValueError(f"size must be a positive whole number of pages: {size_bytes}")
        self.size_bytes = size_bytes
        self.nr_pages = n = size_bytes >> PAGE_SHIFT
        self.codec = codec
        self.checksum = checksum
        self._maps: list[mmap.mmap] = []  # keeps the tables' mmaps alive
        self._itemsizes: list[int] = []
        self._handles = self._table(n, "Q", 8)
        self._flags = self._table(n, "B", 1)
        self._atime = self._table(n, "I", 4)
        self._sums = self._table(n, "Q", 8) if checksum else None
        self.slot_meta_bytes = 13 + (8 if checksum else 0)
        self._side: dict = {}
        self._t0_ds = time.monotonic_ns() // DECISECOND_NS  # the clock's zero
        self._lock = threading.Lock()
        self._compact_lock = threading.Lock()  # one compaction at a time
        self._arena = Arena(self._lock)
        self._class_of = self._arena.class_of
        self._compress = codec.compress  # bound once for the 4 KiB paths
        self._decompress = codec.decompress
        if isinstance(recomp_codec, Codec):
            recomp_codec = (recomp_codec,)
        self.recomp_codecs: tuple[Codec, ...] = tuple(recomp_codec or ())
        self.recomp_codec = self.recomp_codecs[0] if self.recomp_codecs else None
        self.backing = backing
        self.compactor = None  # set by compaction.AutoCompactor
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
        self.read_retries = 0
        # bd_stat (4 KiB units) and the secondary codec
        self.bd_count = 0
        self.bd_reads = 0
        self.bd_writes = 0
        self.recompressed_pages = 0
        self.recompressed_bytes = 0
        # promotions: reads of cold pages (recompressed, written back), not
        # rewrites; bumped where a read already left the fast path (``_load``)
        self.promoted_recompressed = 0
        self.promoted_backed = 0

    def _table(self, count: int, fmt: str, itemsize: int) -> memoryview:
        """A zero-filled per-page array in an anonymous mmap (its pages cost
        memory once touched), as a memoryview cast to ``fmt``."""
        mm = mmap.mmap(-1, count * itemsize, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._maps.append(mm)
        self._itemsizes.append(itemsize)
        return memoryview(mm).cast(fmt)  # type: ignore[call-overload]

    def now(self) -> int:
        """The store's clock for ``_atime``: deciseconds since creation."""
        return time.monotonic_ns() // DECISECOND_NS - self._t0_ds

    # ------------------------------------------------------------------
    # encoding
    def encode(self, page):
        """What to store for one 4 KiB page (bytes-like): an int (the
        same-filled word) or bytes (compressed, or the raw page if huge);
        no locks, no state.

        The result never refers to ``page``, so nbdkit may reuse its buffer
        after we return.  Zero pages are caught first (a memcmp); other
        same-filled pages compress to at most 33 bytes (lz4; zstd 25), so
        the word test runs only on tiny outputs, or when nothing compressed.
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
        if t is tuple:
            h, payload = entry
            if h & FLAG_BIT:  # byte 0: which secondary codec (module doc)
                return self.recomp_codecs[payload[0]].decompress(memoryview(payload)[1:])
            return payload if len(payload) == PAGE_SIZE else self.codec.decompress(payload)
        if t is int:
            if entry == 0:
                return ZERO_PAGE
            word = entry >> 2
            return ZERO_PAGE if word == 0 else word.to_bytes(WORD_SIZE, "little") * WORDS_PER_PAGE
        if t is Pending:
            return entry.data
        if t is Backed:
            return self.backing.read_backed(entry)
        if t is SameWord:
            return entry.word.to_bytes(WORD_SIZE, "little") * WORDS_PER_PAGE
        raise TypeError(f"not a store entry: {entry!r}")

    def _entry_locked(self, index: int):
        """The entry of a slot (lock held)."""
        h = self._handles[index]
        tag = h & TAG_MASK
        if tag == TAG_OBJ:
            return h, self._arena.read(h)
        if tag == TAG_SIDE:
            return self._side[index]
        return h

    def entry(self, index: int):
        """The entry a slot holds now (no lock unless the arena keeps moving)."""
        handles, arena, side = self._handles, self._arena, self._side
        for _ in range(READ_RETRIES):
            epoch = arena.epoch
            h = handles[index]
            tag = h & TAG_MASK
            if tag == TAG_OBJ:
                try:
                    payload = arena.read(h)
                except (TypeError, ValueError, IndexError):
                    continue
                if arena.epoch == epoch:
                    return h, payload
            elif tag == TAG_SIDE:
                e = side.get(index)
                if e is not None:
                    return e
            else:
                return h
            self.read_retries += 1
        with self._lock:
            return self._entry_locked(index)

    def holds(self, index: int, entry) -> bool:
        """Whether slot ``index`` still holds ``entry`` (an entry, or a bare
        handle as ``candidates`` gives): a cheap check, no lock; ``commit``
        checks again, by content, under the lock."""
        h = self._handles[index]
        t = type(entry)
        if t is int:
            return h == entry
        if t is tuple:
            return h == entry[0]
        return h & TAG_MASK == TAG_SIDE and self._side.get(index) is entry

    def _matches(self, index: int, entry) -> bool:
        """``holds``, by content for arena objects (lock held)."""
        h = self._handles[index]
        t = type(entry)
        if t is tuple:
            return h == entry[0] and self._arena.read(h) == entry[1]
        if t is int:
            return h == entry
        return h & TAG_MASK == TAG_SIDE and self._side.get(index) is entry

    def _load(self, index: int, promote: bool = True):
        """(entry, page) of one slot; the page verified against its checksum,
        and a written-back page re-checked against a concurrent rewrite.
        The first read of a recompressed or written-back page since it went
        cold counts a promotion (``COLD``; ``promote``: False for the read
        of a partial rewrite)."""
        while True:
            if self._sums is None:
                entry = self.entry(index)
            else:
                with self._lock:
                    entry = self._entry_locked(index)
                    expected = self._sums[index]
            page = self.decode(entry)
            t = type(entry)
            if t is Backed:
                if self._side.get(index) is not entry:
                    continue  # rewritten while we read: the block may be reused
                with self._lock:
                    self.bd_reads += 1
                    if promote and self._flags[index] & COLD:
                        self._flags[index] &= ~COLD
                        self.promoted_backed += 1
            elif t is tuple and promote and entry[0] & FLAG_BIT and self._flags[index] & COLD:
                # without the lock, like num_reads: a rate, not a zram stat
                # (two readers at once may both count it)
                self._flags[index] &= ~COLD
                self.promoted_recompressed += 1
            if (
                self._sums is not None
                and (t is tuple or t is Pending or t is Backed)
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
        now = _monotonic_ns() // DECISECOND_NS - self._t0_ds  # self.now(), inlined
        try:
            if length == PAGE_SIZE and not offset & PAGE_MASK:
                index = offset >> PAGE_SHIFT
                arena = self._arena
                epoch = arena.epoch
                h = self._handles[index]
                if h & OBJ_CODEC_MASK == TAG_OBJ and self._sums is None:  # the hot path
                    n = (h >> LEN_SHIFT) & LEN_MASK
                    off = (h >> OFF_SHIFT) & OFF_MASK
                    try:
                        data = arena.maps[h >> BLOCK_SHIFT][off : off + n]
                    except (TypeError, ValueError, IndexError):
                        data = None
                    if arena.epoch == epoch and data is not None:
                        buf[:] = data if n == PAGE_SIZE else self._decompress(data)
                    else:
                        buf[:] = self._load(index)[1]
                elif h == 0:
                    buf[:] = ZERO_PAGE
                else:
                    buf[:] = self._load(index)[1]
                self._atime[index] = now
                flags = self._flags
                if flags[index]:  # mostly 0: no store
                    flags[index] &= ~IDLE
            elif not (offset | length) & PAGE_MASK and self._sums is None:
                self._read_pages(buf, offset >> PAGE_SHIFT, length >> PAGE_SHIFT, now)
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

    def _read_pages(self, buf, first: int, count: int, now: int) -> None:
        """``read`` of ``count`` whole pages from page ``first``, no checksums
        (docs/design.md#multi-page-requests).

        The handles are copied out of the table in one slice, and each
        arena object is decompressed straight from its block through a
        short-lived memoryview (no copy of the compressed bytes; it is
        dropped before the next page, so a block is never closed under a
        kept export: arena.py's ``release_block`` copes with the brief
        one).  After each page ``epoch`` is compared with its value from
        before the slice: unchanged, no spot was freed or moved since the
        handles were taken, so the page is the one its handle named.
        Changed (or decompression failed on bytes that moved), the handles
        taken are stale from there on: that page and the rest of the
        request are read page by page (``_read_pages_carefully``), so a
        concurrent writer costs the rest of one request, never a second
        pass over all of it.  The access times are set in one slice; the
        idle flags are looked at only if one is set.
        """
        arena = self._arena
        maps = arena.maps
        decompress = self._decompress
        out = memoryview(buf)
        end_index = first + count
        epoch = arena.epoch
        pos = 0
        for h in self._handles[first:end_index].tolist():
            end = pos + PAGE_SIZE
            if h & OBJ_CODEC_MASK == TAG_OBJ:
                n = (h >> LEN_SHIFT) & LEN_MASK
                off = (h >> OFF_SHIFT) & OFF_MASK
                try:  # the views are temporaries: gone when the line ends
                    if n == PAGE_SIZE:
                        out[pos:end] = memoryview(maps[h >> BLOCK_SHIFT])[off : off + n]
                    else:
                        out[pos:end] = decompress(memoryview(maps[h >> BLOCK_SHIFT])[off : off + n])
                    ok = arena.epoch == epoch
                except Exception:  # bytes that moved under us, or a real fault
                    ok = False
                if not ok:
                    done = pos >> PAGE_SHIFT
                    self._read_pages_carefully(out[pos:], first + done, count - done)
                    break
            elif h == 0:
                out[pos:end] = ZERO_PAGE
            else:
                out[pos:end] = self._load(first + (pos >> PAGE_SHIFT))[1]
            pos = end
        self._atime[first:end_index] = array.array("I", (now,)) * count
        flags = self._flags
        if flags[first:end_index].tobytes().count(0) != count:
            for index in range(first, end_index):
                if flags[index]:
                    flags[index] &= ~IDLE

    def _read_pages_carefully(self, out, first: int, count: int) -> None:
        """``_read_pages``' second pass: an epoch check per page, and
        ``_load`` (retries, then the lock) for a page whose spot moved."""
        arena = self._arena
        handles = self._handles
        decompress = self._decompress
        pos = 0
        for index in range(first, first + count):
            end = pos + PAGE_SIZE
            epoch = arena.epoch
            h = handles[index]
            ok = False
            if h & OBJ_CODEC_MASK == TAG_OBJ:
                n = (h >> LEN_SHIFT) & LEN_MASK
                off = (h >> OFF_SHIFT) & OFF_MASK
                try:
                    view = memoryview(arena.maps[h >> BLOCK_SHIFT])[off : off + n]
                    out[pos:end] = view if n == PAGE_SIZE else decompress(view)
                    del view
                    ok = arena.epoch == epoch
                except Exception:
                    ok = False
            if not ok:
                out[pos:end] = ZERO_PAGE if h == 0 else self._load(index)[1]
            pos = end

    def write(self, data, offset: int) -> None:
        """Store ``data`` (bytes-like) at ``offset``, compressing in this
        thread: all of it, or nothing.

        A 4 KiB aligned write runs in this one frame
        (docs/design.md#a-4-kib-write-step-by-step): ``encode`` and ``_install``'s
        one-page case unrolled, with ``Arena.alloc`` and ``Arena.free_obj``
        inlined through the arena's documented fast-path interface
        (arena.py, "Fast-path interface"; ``audit`` checks its invariants).
        """
        if len(data) != PAGE_SIZE or offset & PAGE_MASK or not 0 <= offset < self.size_bytes:
            self._write(data, offset, None)
            return
        new: int | bytes | None
        try:  # encode(data), inlined
            if ZERO_PAGE.startswith(data):
                new = 0
            else:
                new = self._compress(data, HUGE_THRESHOLD)
                if new is None or len(new) <= SAME_CANDIDATE_MAX_BYTES:
                    word = same_filled_word(data)
                    if word is not None:
                        new = word
                    elif new is None:
                        new = bytes(data)
            checksum = self.checksum(data) if self._sums is not None else 0
        except Exception as exc:
            with self._lock:
                self.failed_writes += 1
            raise StoreError(errno.EIO, f"write failed at offset {offset}: {exc}") from exc
        index = offset >> PAGE_SHIFT
        if type(new) is not bytes:  # a same page: no arena object
            self._install([(index, new, _ANY, checksum)], writes=1)
            return
        n = len(new)
        c = self._class_of[n]
        now = _monotonic_ns() // DECISECOND_NS - self._t0_ds  # self.now(), inlined
        arena = self._arena
        lock = self._lock
        lock.acquire()
        try:
            nr_blocks = arena.nr_blocks
            b = c.cur
            if b < 0:
                if (
                    self.mem_limit
                    and c.phead < 0
                    and self.mem_used_total + c.block_bytes > self.mem_limit
                ):
                    self.failed_writes += 1
                    raise StoreError(errno.ENOSPC, "mem_limit reached")
                b = arena.next_block(c)
            # arena.alloc(new), inlined
            mm = arena.maps[b]
            fhead = arena.fhead
            s = fhead[b]
            off = s * c.size
            fhead[b] = (s + 1 + mm[off]) & 255  # the spot's link (arena.py)
            fcount = arena.fcount
            k = fcount[b] - 1
            fcount[b] = k
            if not k:
                c.cur = -1
            mm[off : off + n] = new
            handles = self._handles
            old = handles[index]
            handles[index] = TAG_OBJ | n << LEN_SHIFT | off << OFF_SHIFT | b << BLOCK_SHIFT
            self._flags[index] = 0
            self._atime[index] = now
            sums = self._sums
            if sums is not None:
                sums[index] = checksum
            self.num_writes += 1
            if n == PAGE_SIZE:
                self.huge_pages += 1
                self.huge_pages_since += 1
            if old & TAG_MASK == TAG_OBJ:
                # arena.free_obj(old), inlined
                ob = old >> BLOCK_SHIFT
                oc = arena.owner[ob]
                ooff = (old >> OFF_SHIFT) & OFF_MASK
                s = ooff // oc.size
                arena.epoch = epoch = arena.epoch + 1  # before the link is written
                arena.maps[ob][ooff] = (fhead[ob] - s - 1) & 255
                fhead[ob] = s
                k = fcount[ob] + 1
                fcount[ob] = k
                if oc is not c:  # (c.live += 1 and oc.live -= 1 cancel out)
                    c.live += 1
                    oc.live -= 1
                if k == oc.objs:
                    if ob != oc.cur:
                        arena.release_block(ob, oc)
                elif k == 1 and ob != oc.cur and ob not in arena.draining:
                    if oc.cur < 0:  # a rewrite's next page goes here
                        oc.cur = ob
                    else:
                        # arena.partial_add(ob, oc), inlined
                        nb = oc.phead
                        arena.pnext[ob] = nb
                        arena.pprev[ob] = -1
                        if nb >= 0:
                            arena.pprev[nb] = ob
                        oc.phead = ob
                on = (old >> LEN_SHIFT) & LEN_MASK
                self.compr_data_size += n - on
                if old & FLAG_BIT:
                    self.recompressed_pages -= 1
                    self.recompressed_bytes -= on
                elif on == PAGE_SIZE:
                    self.huge_pages -= 1
                if epoch > self._compact_check_epoch:
                    self._kick_compactor()
                if nr_blocks == arena.nr_blocks:
                    return  # no block came or went: memory use is unchanged
            else:
                c.live += 1
                self.compr_data_size += n
                if old == 0:
                    self.pages_stored += 1
                else:
                    self._forget(index, old, self._side.get(index))
            self.mem_used_total = used = (
                arena.block_bytes
                + arena.meta_bytes
                + self.pages_stored * self.slot_meta_bytes
                + self.pending_pages * PENDING_BYTES
            )
            if used > self.mem_used_max:
                self.mem_used_max = used
        finally:
            lock.release()

    # The compactor's contract (compaction.AutoCompactor): it arms a check
    # with ``arm_compaction``; the I/O path, after a free, compares the
    # arena's epoch with ``_compact_check_epoch`` (one compare) and calls
    # the compactor's ``kick`` with the lock held, which disarms it.
    _compact_check_epoch = 1 << 62  # "never": no check armed

    def _kick_compactor(self) -> None:
        self._compact_check_epoch = 1 << 62  # once, until re-armed
        if self.compactor is not None:
            self.compactor.kick()

    def arm_compaction(self, after_frees: int) -> None:
        """Ask for a compactor ``kick`` after ``after_frees`` more frees."""
        with self._lock:
            self._compact_check_epoch = self._arena.epoch + after_frees

    def disarm_compaction(self) -> None:
        """No more kicks until armed again."""
        self._compact_check_epoch = 1 << 62

    def compaction_figures(self) -> tuple[int, int]:
        """(bytes compaction could give back, bytes of live blocks), read
        together under the lock."""
        with self._lock:
            return self._arena.fragmented_bytes(), self._arena.block_bytes

    def _forget(self, index: int, old: int, e) -> None:
        """Counters for a same or side handle ``old`` (side object ``e``)
        leaving its slot (lock held; the new handle is in place already)."""
        if old & TAG_MASK == TAG_SAME:
            self.same_pages -= 1
            return
        if self._handles[index] & TAG_MASK != TAG_SIDE:
            self._side.pop(index, None)
        t = type(e)
        if t is Pending:
            self.pending_pages -= 1
            self.compr_data_size -= PAGE_SIZE
        elif t is Backed:
            self.bd_count -= 1
            self.backing.free_backed(e)
        elif t is SameWord:
            self.same_pages -= 1

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

    def _encode_pages(self, pages: list, summed: bool = True) -> tuple[list, list | None]:
        """``encode`` of each 4 KiB page (bytes-like) of ``pages``: the new
        entries in order, and their checksums (None without checksums, or
        when not ``summed``).
        The compression of the whole batch is one codec call
        (``compress_pages``), with no method call per page; a request's
        pages are memoryviews of nbdkit's buffer, copied only if kept raw
        (docs/design.md#multi-page-requests).  The zero-page memcmp that
        ``encode`` starts with is left out: a zero page compresses to a
        tiny output, and tiny outputs get the same-page test."""
        news = self.codec.compress_pages(pages)
        for i, out in enumerate(news):
            if out is None or len(out) >= HUGE_THRESHOLD:
                word = same_filled_word(pages[i])
                news[i] = bytes(pages[i]) if word is None else word
            elif len(out) <= SAME_CANDIDATE_MAX_BYTES:
                word = same_filled_word(pages[i])
                if word is not None:
                    news[i] = word
        if self._sums is None or not summed:
            return news, None
        return news, list(map(self.checksum, pages))

    def _write_objects(self, first: int, news: list, sums: list | None) -> bool:
        """The multi-page write's fast path (docs/design.md#multi-page-requests):
        install ``news``, one arena object (bytes) per page from page
        ``first``, under one lock acquisition, with the slot tables
        changed a slice at a time.  False (nothing done) when the general
        path is needed: a same-filled page among them, or a worst case
        (``MAX_NEW_BLOCK_BYTES`` per object) that could pass mem_limit.

        Order, all under the lock: every new object is copied into the
        arena first (``Arena.alloc_all``: all or none, so a failed mmap
        changes nothing), then the handles are swapped in one slice, the
        flags and access times set in one slice each, and only then are
        the old objects freed (``Arena.free_all``).  Counters come from
        the lists with C-level ``sum``/``count``; the old entries that are
        not arena objects (same pages, side entries) go through
        ``_forget`` one by one, as in ``_apply_locked``, whose counters this
        keeps for the whole request at once; ``audit`` recomputes each of
        them from the tables, and the store model runs it after every step."""
        count = len(news)
        for new in news:
            if type(new) is not bytes:
                return False
        end = first + count
        with self._lock:
            if self.mem_limit and (
                self.mem_used_total + count * MAX_NEW_BLOCK_BYTES > self.mem_limit
            ):
                return False
            arena = self._arena
            allocated = arena.alloc_all(news)
            handles = self._handles
            olds = handles[first:end].tolist()
            handles[first:end] = array.array("Q", allocated)
            self._flags[first:end] = bytes(count)
            self._atime[first:end] = array.array("I", (self.now(),)) * count
            table = self._sums
            if sums is not None and table is not None:
                table[first:end] = array.array("Q", sums)
            objs = [h for h in olds if h & TAG_MASK == TAG_OBJ]
            empty = olds.count(0)
            if len(objs) + empty != count:  # same pages and side entries leave
                side = self._side
                for i, old in enumerate(olds):
                    if old and old & TAG_MASK != TAG_OBJ:
                        index = first + i
                        self._forget(index, old, side.get(index))
            lens = list(map(len, news))
            old_lens = [(h >> LEN_SHIFT) & LEN_MASK for h in objs]
            huge = lens.count(PAGE_SIZE)
            self.huge_pages += huge - old_lens.count(PAGE_SIZE)
            self.huge_pages_since += huge
            if self.recompressed_pages:  # (recompressed objects are never 4096 bytes)
                cold = [(h >> LEN_SHIFT) & LEN_MASK for h in objs if h & FLAG_BIT]
                self.recompressed_pages -= len(cold)
                self.recompressed_bytes -= sum(cold)
            self.compr_data_size += sum(lens) - sum(old_lens)
            self.pages_stored += empty
            if objs:
                arena.free_all(objs)
            self._update_mem_locked()
            self.num_writes += 1
            if arena.epoch > self._compact_check_epoch:
                self._kick_compactor()
        return True

    def _stage_pages(self, data, first: int, staged: list) -> list:
        """``_install``'s changes for whole pages of the snapshot ``data``
        from page ``first``: same-filled pages as words, the others as
        ``Pending`` views of the snapshot, each also appended to
        ``staged`` as ``(index, pending)``."""
        src = memoryview(data)
        summed = self._sums is not None
        checksum = self.checksum
        changes: list = []
        index = first
        for pos in range(0, len(src), PAGE_SIZE):
            page = src[pos : pos + PAGE_SIZE]
            word = same_filled_word(page)
            if word is not None:
                changes.append((index, word, _ANY, 0))
            else:
                entry = Pending(page)
                changes.append((index, entry, _ANY, checksum(page) if summed else 0))
                staged.append((index, entry))
            index += 1
        return changes

    def _write(self, data, offset: int, staged: list | None) -> None:
        length = len(data)
        self._check_range(offset, length)
        try:
            if not (offset | length) & PAGE_MASK:
                first = offset >> PAGE_SHIFT
                if staged is None:
                    src = memoryview(data)
                    pages = [src[pos : pos + PAGE_SIZE] for pos in range(0, length, PAGE_SIZE)]
                    news, sums = self._encode_pages(pages)
                    if self._write_objects(first, news, sums):
                        return
                    changes = [
                        (first + i, new, _ANY, 0 if sums is None else sums[i])
                        for i, new in enumerate(news)
                    ]
                else:
                    changes = self._stage_pages(data, first, staged)
                self._install(changes, writes=1, staged=len(staged or ()))
                return
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
                        entry = Pending(page)
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
        if not self.holds(index, pending):  # superseded already: skip the work
            with self._lock:
                self.pages_superseded += 1
            return False
        new = self.encode(pending.data)
        if self._install([(index, new, pending, None)], compressed_async=1):
            return True
        with self._lock:
            self.pages_superseded += 1
        return False

    def complete_all(self, batch: list) -> int:
        """Worker side, a batch at a time (docs/design.md#the-asynchronous-path):
        compress every staged page of ``batch`` (``[(index, Pending)]``)
        that its slot still holds, outside the lock, then install under one
        lock acquisition each one still held; return how many were
        installed.  The others count in ``pages_superseded``."""
        holds = self.holds
        live = [(index, p) for index, p in batch if holds(index, p)]
        news, _ = self._encode_pages([p.data for _, p in live], summed=False)
        encoded = [(index, new, p) for (index, p), new in zip(live, news, strict=True)]
        with self._lock:
            matches = self._matches
            changes = [(index, new, _ANY, None) for index, new, p in encoded if matches(index, p)]
            self.pages_superseded += len(batch) - len(changes)
            if not changes:
                return 0
            self._install_locked(changes, compressed_async=len(changes))
        return len(changes)

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
        # In chunks: a whole-device trim must not build a list of a million
        # changes (100 bytes a page); each chunk is installed whole.
        start = first_full
        while True:
            stop = min(start + DISCARD_CHUNK_PAGES, end_full)
            last = stop >= end_full
            full = [(index, None, _ANY, 0) for index in range(start, stop)]
            self._install_with_edges(
                full,
                edges if last else [],
                discards=1 if last else 0,
                freed=len(full),
                zero_range=(start, stop),
            )
            if last:
                return
            start = stop

    def _release_table_pages(self, first: int, end: int) -> None:
        """Give back the per-page tables' pages that hold only empty slots
        among those that slots ``first..end`` (just trimmed) touch (lock
        held): a trimmed device's table costs no memory, as a never-written
        one.  A table page is released when every handle of the slots it
        covers is 0 (their flags are 0 too; atimes and checksums of empty
        slots mean nothing)."""
        handles_mm = self._maps[0]
        for mm, itemsize in zip(self._maps, self._itemsizes, strict=True):
            slots_per_page = TABLE_PAGE_BYTES // itemsize
            for page in range(first // slots_per_page, -(-end // slots_per_page)):
                lo = page * slots_per_page
                hi = min(lo + slots_per_page, self.nr_pages)
                if not _ZERO_TABLE.startswith(handles_mm[lo * 8 : hi * 8]):
                    continue
                start = page * TABLE_PAGE_BYTES
                length = min(TABLE_PAGE_BYTES, len(mm) - start)
                if length == TABLE_PAGE_BYTES:
                    mm.madvise(mmap.MADV_DONTNEED, start, length)

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
                old, page = self._load(index, False)  # a rewrite, not a promotion
                page = bytearray(page)
                page[start : start + len(part)] = part
                changes.append((index, self.encode(page), old, self._sum(page)))
            if self._install(changes, **counters):
                return

    def _install(
        self,
        changes,
        writes=0,
        discards=0,
        freed=0,
        staged=0,
        compressed_async=0,
        zero_range=None,
    ) -> bool:
        """Install ``[(index, new, expected_old, checksum)]`` atomically.

        ``new`` is None (free), an int (same-filled word), bytes (an arena
        object: compressed, or raw if 4096 bytes), ``Recompressed``,
        ``Pending`` or ``Backed``.  Returns False (installing nothing) if a
        slot no longer holds its expected entry; raises ENOSPC (installing
        nothing) if a write request as a whole would take memory use over
        ``mem_limit``.  Discards, worker installs and commits are not
        refused (a trim must not fail for lack of memory).  A checksum of
        None keeps the slot's own.
        """
        with self._lock:
            return self._install_locked(
                changes, writes, discards, freed, staged, compressed_async, zero_range
            )

    def _install_locked(
        self,
        changes,
        writes=0,
        discards=0,
        freed=0,
        staged=0,
        compressed_async=0,
        zero_range=None,
    ) -> bool:
        """``_install`` with the lock held."""
        arena = self._arena
        allocated = self._alloc_first_locked(changes, writes)
        if allocated is None and not self._reserve_locked(changes, writes):
            return False
        arena.deferring = True
        try:
            self._apply_locked(changes, allocated)
        finally:
            arena.release_deferred()
        if zero_range is not None and zero_range[1] - zero_range[0] >= TABLE_RELEASE_MIN_PAGES:
            self._release_table_pages(*zero_range)
        self.pages_staged += staged
        self.pages_compressed_async += compressed_async
        self._update_mem_locked()  # once per request (the 4 KiB path inlines it)
        self.num_writes += writes
        self.num_discards += discards
        self.notify_free += freed
        if arena.epoch > self._compact_check_epoch:
            self._kick_compactor()
        return True

    def _alloc_first_locked(self, changes, writes: int) -> list[int] | None:
        """``_install``'s first half when memory is plentiful (lock held;
        docs/design.md#multi-page-requests): allocate every new arena
        object before any slot changes (``Arena.alloc_all``: all or none),
        and return their handles in order; None (nothing done) when the
        exact plan of ``_reserve_locked`` is needed instead.

        Needed when a slot may not hold its expected entry any more (a
        read-modify-write), or when a write's worst case, one new block of
        the largest size per new object (``MAX_NEW_BLOCK_BYTES``), could
        pass ``mem_limit``: the plan counts the spots the request itself
        frees, this path does not (it maps at most that much more, until
        later writes fill those spots)."""
        datas = []
        flags = []
        pending = 0  # snapshot bytes the request adds
        for _index, new, expected, _sum in changes:
            if expected is not _ANY:
                return None
            t = type(new)
            if t is bytes:
                datas.append(new)
                flags.append(0)
            elif t is Recompressed:
                datas.append(new.data)
                flags.append(FLAG_BIT)
            elif t is Pending:
                pending += PENDING_BYTES
        if (
            writes
            and self.mem_limit
            and self.mem_used_total + len(datas) * MAX_NEW_BLOCK_BYTES + pending > self.mem_limit
        ):
            return None
        arena = self._arena
        blocks = arena.nr_blocks
        allocated = arena.alloc_all(datas, flags)
        if arena.nr_blocks != blocks:
            self._update_mem_locked()  # the peak includes them
        return allocated

    def _reserve_locked(self, changes, writes: int) -> bool:
        """``_install``'s first half (lock held): False if a slot no longer
        holds its expected entry; ENOSPC past ``mem_limit`` for a write;
        else map every block the request needs and return True.  Changes
        nothing in the slots."""
        handles = self._handles
        arena = self._arena
        for index, _new, expected, _sum in changes:
            if expected is not _ANY and not self._matches(index, expected):
                return False
        seq = []  # (new object's length or 0, old handle), in order
        more = 0
        for index, new, _, _ in changes:
            t = type(new)
            if t is bytes:
                seq.append((len(new), handles[index]))
            elif t is Recompressed:
                seq.append((len(new.data), handles[index]))
            else:
                seq.append((0, handles[index]))
                if t is Pending:
                    more += PENDING_BYTES
        blocks = arena.blocks_to_map(seq)
        if writes and self.mem_limit:
            need = sum(c.block_bytes * k for c, k in blocks.items()) + more
            if need > 0 and self.mem_used_total + need > self.mem_limit:
                self.failed_writes += writes
                raise StoreError(errno.ENOSPC, "mem_limit reached")
        # map every block the request needs first: an mmap that fails
        # (ENOMEM) fails the request before it changes anything; blocks
        # emptied meanwhile are released at the end (their spots count)
        if blocks:
            arena.map_blocks(blocks)
            self._update_mem_locked()  # the peak includes them
        return True

    def _apply_locked(self, changes, allocated: list[int] | None) -> None:
        """``_install``'s second half (lock held, the blocks mapped, the
        arena deferring releases): put each new entry in, take each old
        one out, keep the counters.  ``allocated`` holds the handles
        ``_alloc_first_locked`` took for the arena objects, in order (None:
        allocate here, in the blocks ``_reserve_locked`` mapped)."""
        handles = self._handles
        arena = self._arena
        take = None if allocated is None else iter(allocated).__next__
        side = self._side
        now = self.now()
        flags = self._flags
        atime = self._atime
        sums = self._sums
        freed: list[int] = []  # the old objects, freed after every slot changed
        for index, new, _, checksum in changes:
            old = handles[index]
            old_side = side.get(index) if old & TAG_MASK == TAG_SIDE else None
            t = type(new)
            if t is bytes:
                n = len(new)
                h = arena.alloc(new) if take is None else take()
                self.compr_data_size += n
                if n == PAGE_SIZE:
                    self.huge_pages += 1
                    self.huge_pages_since += 1
            elif new is None:
                h = 0
            elif t is int:
                if new < SAME_WORD_LIMIT:
                    h = new << 2 | TAG_SAME
                else:
                    h = TAG_SIDE
                    side[index] = SameWord(new)
                self.same_pages += 1
            elif t is Recompressed:
                h = arena.alloc(new.data, FLAG_BIT) if take is None else take()
                self.compr_data_size += len(new.data)
                self.recompressed_pages += 1
                self.recompressed_bytes += len(new.data)
            else:  # Pending, Backed
                h = TAG_SIDE
                side[index] = new
                if t is Pending:
                    self.pending_pages += 1
                    self.compr_data_size += PAGE_SIZE
                else:
                    self.bd_count += 1
            handles[index] = h
            # the old entry leaves
            if old & TAG_MASK == TAG_OBJ:
                if take is None:
                    arena.free_obj(old)  # its spot may serve the next change
                else:
                    freed.append(old)
                on = (old >> LEN_SHIFT) & LEN_MASK
                self.compr_data_size -= on
                if old & FLAG_BIT:
                    self.recompressed_pages -= 1
                    self.recompressed_bytes -= on
                elif on == PAGE_SIZE:
                    self.huge_pages -= 1
            elif old != 0:
                self._forget(index, old, old_side)
            if h == 0:
                if old != 0:
                    self.pages_stored -= 1
            elif old == 0:
                self.pages_stored += 1
            if t is Backed:  # as zram: written-back pages are not idle
                flags[index] = (flags[index] & ~IDLE) | COLD
            elif t is Recompressed:
                flags[index] |= COLD
            else:  # new data
                flags[index] = 0
                atime[index] = now
            if sums is not None and checksum is not None:
                sums[index] = checksum
        if freed:
            arena.free_all(freed)

    # ------------------------------------------------------------------
    # block status
    def extents(self, offset: int, length: int, req_one: bool = False):
        """Runs of pages as ``[(offset, length, type)]`` covering the range.

        Empty pages are holes that read as zeros, zero-filled same pages are
        zeros, everything else is data.  The first run starts at the page
        holding ``offset`` (nbdkit trims it).
        """
        self._check_range(offset, length)
        handles = self._handles
        first = offset >> PAGE_SHIFT
        end = (offset + length + PAGE_MASK) >> PAGE_SHIFT
        runs: list = []
        run_start = first
        run_type: int | None = None
        for index in range(first, end):
            h = handles[index]
            if h == 0:
                extent_type = EXTENT_HOLE | EXTENT_ZERO
            elif h == TAG_SAME:
                extent_type = EXTENT_ZERO
            else:
                extent_type = EXTENT_DATA
            if extent_type != run_type:
                if run_type is not None:
                    runs.append(
                        (run_start << PAGE_SHIFT, (index - run_start) << PAGE_SHIFT, run_type)
                    )
                    if req_one:
                        return runs
                run_start, run_type = index, extent_type
        runs.append((run_start << PAGE_SHIFT, (end - run_start) << PAGE_SHIFT, run_type))
        return runs

    # ------------------------------------------------------------------
    # idle pages, writeback and recompression (zram's knobs): the scans
    # live in scan.py and read the tables through ``slot_tables``.
    def slot_tables(self) -> tuple:
        """The public view scans read: (handles, flags, atime), one entry per
        slot (``Q``, ``B`` and ``I`` arrays; atime in deciseconds of
        ``now``).  Read without the lock: a page that changes meanwhile is
        caught by ``commit``.  Only flags may be written through it (no lock,
        as the store does: at worst a page stays idle a little longer)."""
        return self._handles, self._flags, self._atime

    def mark_idle(self, older_than_s: float | None = None) -> int:
        return scan.mark_idle(self, older_than_s)

    def idle_pages(self) -> int:
        return scan.idle_pages(self)

    def incompressible_pages(self) -> int:
        return scan.incompressible_pages(self)

    def candidates(self, scan_type: str, limit: int | None = None) -> list:
        return scan.candidates(self, scan_type, limit)

    def recompress(
        self, scan_type: str = "all", threshold: int = 0, limit: int | None = None
    ) -> dict:
        return scan.recompress(self, scan_type, threshold, limit)

    def commit(self, index: int, expected, new) -> bool:
        """Replace ``expected`` (an entry) by ``new`` (a ``Backed`` or
        ``Recompressed`` form of the same data) if the slot still holds
        that very data."""
        ok = self._install([(index, new, expected, None)])
        if ok and type(new) is Backed:
            with self._lock:
                self.bd_writes += 1
        return ok

    def commit_many(self, items: list) -> list[bool]:
        """``commit`` of ``[(index, expected, new)]`` (distinct slots) under
        one hold of the lock, as one install: which ones were installed
        (the others no longer held their expected data).  For writeback's
        batches: one install per batch, not per page."""
        with self._lock:
            ok = [self._matches(index, expected) for index, expected, _ in items]
            changes = [  # checked just now, under this hold of the lock
                (index, new, _ANY, None)
                for (index, _, new), good in zip(items, ok, strict=True)
                if good
            ]
            if changes:
                self._install_locked(changes)  # every slot matches; not a write: no refusal
            self.bd_writes += sum(1 for change in changes if type(change[1]) is Backed)
        return ok

    def commit_backed(self, indexes: list[int], expected: list, news: list) -> list[bool]:
        """``commit_many`` for writeback's batches (parallel lists): each
        ``news[i]`` a ``Backed`` replacing the arena object ``expected[i]``
        (``(handle, payload)``, as ``entry`` gives) of slot ``indexes[i]``.
        One lean pass under the lock, the same checks and counters as the
        general install (docs/design.md#packed-writeback); any other
        expected entry takes ``commit_many``."""
        if any(type(e) is not tuple for e in expected):
            return self.commit_many(list(zip(indexes, expected, news, strict=True)))
        with self._lock:
            handles, side, flags, arena = self._handles, self._side, self._flags, self._arena
            read = arena.read
            ok = [
                handles[i] == e[0] and read(e[0]) == e[1]  # by content (see _matches)
                for i, e in zip(indexes, expected, strict=True)
            ]
            freed: list[int] = []  # the old objects, freed after every slot changed
            gone = recompressed = recompressed_bytes = huge = 0
            for index, new, good in zip(indexes, news, ok, strict=True):
                if not good:
                    continue
                old = handles[index]
                handles[index] = TAG_SIDE
                side[index] = new
                freed.append(old)
                on = (old >> LEN_SHIFT) & LEN_MASK
                gone += on
                if old & FLAG_BIT:
                    recompressed += 1
                    recompressed_bytes += on
                elif on == PAGE_SIZE:
                    huge += 1
                flags[index] = (flags[index] & ~IDLE) | COLD  # as zram: not idle
            if not freed:
                return ok
            self.bd_count += len(freed)
            self.bd_writes += len(freed)
            self.compr_data_size -= gone
            self.recompressed_pages -= recompressed
            self.recompressed_bytes -= recompressed_bytes
            self.huge_pages -= huge
            arena.deferring = True
            try:
                arena.free_all(freed)
            finally:
                arena.release_deferred()
            self._update_mem_locked()
            if arena.epoch > self._compact_check_epoch:
                self._kick_compactor()
        return ok

    def block_state(self, index: int) -> str:
        """What slot ``index`` holds (zram's debugfs ``block_state``): empty,
        same, compressed, huge, recompressed, pending or backed."""
        h = self._handles[index]
        return handle_state(h, self._side.get(index) if h & TAG_MASK == TAG_SIDE else None)

    # ------------------------------------------------------------------
    # compaction and accounting
    def compact(self) -> dict:
        """zram's ``compact``: move objects out of sparse blocks and give
        the emptied blocks back to the OS.  Safe under I/O."""
        with self._compact_lock:
            result = self._arena.compact(self._handles, self._lock)
            heap.trim()  # what the heaps keep besides the arena (zramd/engine/heap.py)
        with self._lock:
            self._update_mem_locked()
            result["pages_compacted"] = self._arena.pages_compacted
            result["mem_used_total"] = self.mem_used_total
        return result

    def _update_mem_locked(self) -> None:
        arena = self._arena
        self.mem_used_total = used = (
            arena.block_bytes
            + arena.meta_bytes
            + self.pages_stored * self.slot_meta_bytes
            + self.pending_pages * PENDING_BYTES
        )
        if used > self.mem_used_max:
            self.mem_used_max = used

    def fragmented_bytes(self) -> int:
        """Bytes of blocks that compaction could give back now."""
        with self._lock:
            return self._arena.fragmented_bytes()

    def audit(self) -> dict:
        """Recompute every counter from the handle table, the side entries
        and the arena's blocks, and compare with the running ones.  Returns
        the figures; raises AssertionError listing any difference."""
        with self._lock:
            a = self._arena.audit(self._handles)
            counts = {
                "pages_stored": 0,
                "same_pages": 0,
                "huge_pages": 0,
                "pending_pages": 0,
                "bd_count": 0,
                "recompressed_pages": 0,
                "recompressed_bytes": 0,
            }
            compr = a["compr_bytes"]
            side_seen = 0
            for index, h in enumerate(self._handles):
                if h == 0:
                    continue
                counts["pages_stored"] += 1
                tag = h & TAG_MASK
                if tag == TAG_SAME:
                    counts["same_pages"] += 1
                elif tag == TAG_OBJ:
                    if h & FLAG_BIT:
                        counts["recompressed_pages"] += 1
                        counts["recompressed_bytes"] += (h >> LEN_SHIFT) & LEN_MASK
                    elif (h >> LEN_SHIFT) & LEN_MASK == PAGE_SIZE:
                        counts["huge_pages"] += 1
                else:
                    side_seen += 1
                    e = self._side.get(index)
                    t = type(e)
                    if t is Pending:
                        counts["pending_pages"] += 1
                        compr += PAGE_SIZE
                    elif t is Backed:
                        counts["bd_count"] += 1
                    elif t is SameWord:
                        counts["same_pages"] += 1
                    else:
                        raise AssertionError(f"slot {index}: side handle without a side entry")
            errors = []
            if side_seen != len(self._side):
                errors.append(f"{len(self._side)} side entries for {side_seen} side handles")
            for name, value in counts.items():
                if getattr(self, name) != value:
                    errors.append(f"{name} is {getattr(self, name)}, recomputed {value}")
            if self.compr_data_size != compr:
                errors.append(f"compr_data_size is {self.compr_data_size}, recomputed {compr}")
            mem = (
                a["block_bytes"]
                + a["meta_bytes"]
                + counts["pages_stored"] * self.slot_meta_bytes
                + counts["pending_pages"] * PENDING_BYTES
            )
            if self.mem_used_total != mem:
                errors.append(f"mem_used_total is {self.mem_used_total}, recomputed {mem}")
            if errors:
                raise AssertionError("store audit: " + "; ".join(errors))
            counts.update(a, compr_data_size=compr, mem_used_total=mem)
            return counts

    # ------------------------------------------------------------------
    # stats and knobs
    def stats(self) -> dict:
        """A consistent snapshot of every counter, by zram's names."""
        idle, incompressible = self.idle_pages(), self.incompressible_pages()
        with self._lock:
            arena = self._arena
            return {
                "idle_pages": idle,
                "incompressible_pages": incompressible,
                "orig_data_size": self.pages_stored << PAGE_SHIFT,
                "compr_data_size": self.compr_data_size,
                "mem_used_total": self.mem_used_total,
                "mem_limit": self.mem_limit,
                "mem_used_max": self.mem_used_max,
                "same_pages": self.same_pages,
                "pages_compacted": arena.pages_compacted,
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
                "recomp_algorithm": describe_codecs(self.recomp_codecs),
                "promoted_recompressed": self.promoted_recompressed,
                "promoted_backed": self.promoted_backed,
                "disksize": self.size_bytes,
                "comp_algorithm": self.codec.describe(),
                # the arena (docs/design.md#page-arena-and-memory-accounting)
                "arena_blocks": arena.nr_blocks,
                "arena_block_bytes": arena.block_bytes,
                "arena_free_bytes": arena.free_spot_bytes,
                "arena_meta_bytes": arena.meta_bytes,
                "slot_meta_bytes": self.pages_stored * self.slot_meta_bytes,
                "compactable_bytes": arena.fragmented_bytes(),
                "compact_runs": self.compactor.runs if self.compactor else 0,
                "read_retries": self.read_retries,
                "arena_release_errors": arena.release_errors,
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

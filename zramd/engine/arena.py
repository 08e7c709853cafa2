"""The page arena: compressed objects packed into mmap blocks, zsmalloc-style.

Why it exists and how its numbers were chosen: docs/design.md#page-arena-and-memory-accounting.

Data structure
--------------
Objects (compressed pages, 1..4096 bytes) live in *blocks*: private
anonymous mmaps of 1..16 pages (zsmalloc's zspages).  Each block belongs to
one *size class* and is cut into ``objs`` equal spots of the class's
``size``.  The class sizes are zsmalloc's (16-byte steps from 32 bytes,
neighbours that an 8-page chain cuts into the same pages/objects merged:
119 classes); each class's block is the chain of up to 16 pages that costs
least per object, tail waste and ``BLOCK_META_BYTES`` together, at most 256
spots.  The last class, 4096 bytes, holds huge pages, 8 to a block
(zsmalloc uses one page per huge zspage; one mmap per 4 KiB would cost a
syscall per huge write).

Per block, indexed by block id (ids are recycled through ``_spare_ids``),
in tables that hold no Python object per block but the mmap:

- ``maps[id]``    the mmap (None once released),
- ``owner[id]``   its ``SizeClass`` (None once released),
- ``fhead[id]``   its first free spot, ``fcount[id]`` how many are free:
  the free list lives in the free spots themselves (zsmalloc's link_free):
  the first byte of a free spot ``s`` holds ``(next - s - 1) & 255``, so a
  fresh map, all zeros, is the list 0, 1, 2, ... without being written
  (or made resident);
- ``pnext[id]``, ``pprev[id]``  its class's partial list (doubly linked;
  ``pprev`` is ``UNLISTED`` when it is on none).

Per class: ``cur`` (the block being filled, or -1), ``phead`` (the head of
the list of its other blocks with free spots, or -1), ``nblocks``.  A block
is in at most one of ``cur``/partial list; a full block is in neither; a
block being drained by compaction is in neither.

A handle is one 64-bit int (so a page's slot costs 8 bytes)::

    bits 0-1   tag: TAG_OBJ (the other values are the store's)
    bit  2     a flag the caller owns (the store: "secondary codec")
    bits 3-15  the object's length in bytes (1..4096)
    bits 16-35 its byte offset in the block
    bits 36-63 the block id

Invariants (whenever the owner's lock is free)
----------------------------------------------
- every live handle points at a spot that is not on its block's free list,
  and no two live handles share a spot;
- ``fcount[b] + live objects in b == owner[b].objs`` for every block;
- a block with no live object is released (munmap), except a class's
  ``cur`` block, kept so that a class that hovers around zero objects does
  not mmap/munmap on every write (``compact`` releases those too), and
  blocks emptied during a multi-page install (``deferring``), released at
  its end so that its later pages can use the spots its earlier ones
  freed (``blocks_to_map`` counts on that);
- ``block_bytes`` = sum of the live blocks' sizes; ``nr_blocks`` = live
  blocks; ``meta_bytes`` = ``BLOCK_META_BYTES`` per live block +
  ``SPARE_ID_BYTES`` per spare id; a class's ``live`` = its objects (so its
  free spots are ``nblocks * objs - live``, worked out when asked, not on
  every I/O).

Locking
-------
The arena has no lock of its own: ``alloc``, ``free``, ``release_empty`` and
every counter are used under the owner's lock (the store's ``_lock``, passed
in as ``lock``), which ``compact`` takes itself, a batch at a time.
``read`` takes no lock.  A lockless reader proves its copy is good with
``epoch``: the count of spots freed or moved, bumped (under the lock)
before a freed spot's first byte becomes its free-list link, before any
freed spot can be reused and before any block is released; the owner
takes the handle out of its table before it frees the spot.  The reader
loads ``epoch``, then the handle, copies the bytes (an mmap slice is one
memcpy under the GIL), and loads ``epoch`` again: if it did not change, no
spot was freed in between, so the object was live at its place during the
copy.  If it changed, or the block was already released (ValueError,
TypeError), the reader tries again or takes the lock.  No memoryview over a
block is ever kept (closing an mmap with exports raises BufferError).

Fast-path interface
-------------------
The store's 4 KiB write (``PageStore.write``) inlines ``alloc``,
``free_obj`` and ``partial_add`` for speed (docs/design.md#what-a-4-kib-write-costs).
That is the one place outside this module that touches the arena's
fields, and only these (``FAST_PATH_FIELDS``; lock held): the block tables
``maps``, ``fhead``, ``fcount``, ``owner``, ``pnext``, ``pprev``, the set
``draining``, the counters ``epoch``, ``nr_blocks``, ``block_bytes``,
``meta_bytes``, and per class (``CLASS_FAST_PATH_FIELDS``) ``size``,
``objs``, ``block_bytes``, ``cur``, ``phead``, ``live``; and it calls the
two operations ``next_block`` and ``release_block``.  It must keep every
invariant above exactly as ``alloc``/``free_obj`` do; ``audit`` checks
them all, and that these fields exist, after every step of the randomized
store model test (tests/unit/test_store_model.py).

Compaction (zram's ``compact``) picks, per class, the sparsest blocks whose
objects fit into the free spots of the others, marks them *draining* (no
allocation goes there), scans the owner's handle table without the lock,
then moves objects under the lock in batches: an object is moved only if
its slot still holds the very handle (no ABA: a draining block gets no new
objects, so a handle into it cannot come back once freed).  Emptied blocks
are released; ``pages_compacted`` counts their 4 KiB pages.
"""

from __future__ import annotations

import itertools
import mmap
from array import array

from ..units import PAGE_SIZE

MAX_CHAIN_PAGES = 8  # zsmalloc's CONFIG_ZSMALLOC_CHAIN_SIZE default: the class table
MAX_BLOCK_PAGES = 16  # our blocks: zsmalloc's largest CONFIG_ZSMALLOC_CHAIN_SIZE
MIN_CLASS_BYTES = 32  # zsmalloc's ZS_MIN_ALLOC_SIZE on x86-64
CLASS_STEP_BYTES = 16  # zsmalloc's ZS_SIZE_CLASS_DELTA with 4 KiB pages
HUGE_BLOCK_PAGES = 8  # huge pages per block (zsmalloc: 1)

TAG_MASK = 3
TAG_OBJ = 1
FLAG_BIT = 4
LEN_SHIFT = 3
LEN_MASK = 0x1FFF
OFF_SHIFT = 16
OFF_MASK = 0xFFFFF
BLOCK_SHIFT = 36

# What one block costs besides its pages, counted in ``meta_bytes`` and so
# in mem_used_total: the mmap object (96 bytes, a pymalloc size) and the
# block's slots in the per-block tables (``maps``, ``owner``: 8 bytes each;
# ``pnext``, ``pprev``: 4; ``fcount``: 2; ``fhead``: 1), plus an eighth for
# the tables' over-allocation.  Measured with tracemalloc around mapping
# blocks, not sys.getsizeof (which misses what a block costs in other
# containers): docs/design.md#bookkeeping-per-block.
# tests/unit/test_arena.py checks it against tracemalloc in every state.
_SLOT_BYTES = 8 + 8 + 4 + 4 + 2 + 1
BLOCK_META_BYTES = 96 + _SLOT_BYTES + _SLOT_BYTES // 8 + 1
# A block id no block uses (released, kept for reuse): its table slots and
# its entry in ``_spare_ids`` (4 bytes).  The tables never shrink while
# any block is mapped.
SPARE_ID_BYTES = _SLOT_BYTES + 4 + (_SLOT_BYTES + 4) // 8 + 1
UNLISTED = -2  # ``pprev`` of a block on no partial list
MAX_BLOCKS = 1 << (64 - BLOCK_SHIFT)  # block ids a handle can hold

# Objects moved per hold of the lock during compaction (about 0.1 ms).
COMPACT_BATCH = 64
# Objects found by the table scan before they are moved: bounds the scan's
# array (16 bytes an entry) whatever the device size.
COMPACT_SCAN_OBJECTS = 4096

_MMAP_FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS


def _chain_pages(size: int) -> int:
    """zsmalloc's calculate_zspage_chain_size: the pages per block that
    waste the least tail space for objects of ``size`` bytes."""
    if size & (size - 1) == 0:
        return 1
    best_waste, best = None, 1
    for pages in range(1, MAX_CHAIN_PAGES + 1):
        waste = pages * PAGE_SIZE % size
        if best_waste is None or waste < best_waste:
            best_waste, best = waste, pages
    return best


# what PageStore.write's inlined alloc/free reads and writes (module doc)
FAST_PATH_FIELDS = (
    "maps",
    "fhead",
    "fcount",
    "owner",
    "pnext",
    "pprev",
    "draining",
    "epoch",
    "nr_blocks",
    "block_bytes",
    "meta_bytes",
)
CLASS_FAST_PATH_FIELDS = ("size", "objs", "block_bytes", "cur", "phead", "live")


class SizeClass:
    __slots__ = (
        "index",
        "size",
        "pages",
        "objs",
        "block_bytes",
        "cur",
        "phead",
        "nblocks",
        "live",
    )

    def __init__(self, index: int, size: int, pages: int, objs: int):
        self.index = index
        self.size = size
        self.pages = pages
        self.objs = objs
        self.block_bytes = pages * PAGE_SIZE
        self.cur = -1
        self.phead = -1  # first block of its partial list, or -1
        self.nblocks = 0
        self.live = 0

    def __repr__(self):
        return f"SizeClass({self.size}B, {self.pages}p x {self.objs})"


def build_classes() -> list:
    """zsmalloc's class table (merged classes, 8-page chains), smallest
    first; the last class is the huge class (4096 bytes).  Each class's
    block is then the chain of up to ``MAX_BLOCK_PAGES`` pages that costs
    least per object, tail waste and ``BLOCK_META_BYTES`` together (see
    ``_block_pages``)."""
    n = (PAGE_SIZE - MIN_CLASS_BYTES) // CLASS_STEP_BYTES + 1
    table = []
    prev = None
    for i in range(n - 1, -1, -1):
        size = min(MIN_CLASS_BYTES + i * CLASS_STEP_BYTES, PAGE_SIZE)
        pages = _chain_pages(size)
        objs = pages * PAGE_SIZE // size
        if prev is not None and prev[1] == pages and prev[2] == objs:
            continue  # merged into the larger neighbour, as zsmalloc does
        prev = (size, pages, objs)
        table.append(prev)
    table.reverse()
    size, pages, objs = table[-1]
    assert size == PAGE_SIZE and objs == 1
    table[-1] = (PAGE_SIZE, HUGE_BLOCK_PAGES, HUGE_BLOCK_PAGES)
    for i, (size, _pages, _objs) in enumerate(table[:-1]):
        pages = _block_pages(size)
        table[i] = (size, pages, pages * PAGE_SIZE // size)
    return [SizeClass(i, *t) for i, t in enumerate(table)]


def _block_pages(size: int) -> int:
    """Pages per block for objects of ``size`` bytes: of 1..MAX_BLOCK_PAGES,
    the one with the least tail waste plus block bookkeeping per object
    (zsmalloc weighs the tail only; here a block also costs
    ``BLOCK_META_BYTES`` of Python objects), at most 256 spots (the free
    stack holds bytes); the shorter chain on a tie."""
    best_cost, best = None, 1
    for pages in range(1, MAX_BLOCK_PAGES + 1):
        objs = pages * PAGE_SIZE // size
        if objs > 256:
            break
        cost = (pages * PAGE_SIZE - objs * size + BLOCK_META_BYTES) / objs
        if best_cost is None or cost < best_cost:
            best_cost, best = cost, pages
    return best


CLASS_TABLE = build_classes()
# The largest object stored compressed: the biggest class that packs more
# than one object per page chain (3632 bytes: 9 in 8 pages, 3641 bytes of
# block each).  Anything larger costs a whole page anyway, so it is huge.
MAX_COMPRESSED_BYTES = CLASS_TABLE[-2].size


class Arena:
    """Size classes of mmap blocks; see the module docstring."""

    def __init__(self, lock):
        self.lock = lock
        self.classes = build_classes()
        self.class_of = [None] * (PAGE_SIZE + 1)  # length -> SizeClass
        ci = 0
        for n in range(1, PAGE_SIZE + 1):
            while self.classes[ci].size < n:
                ci += 1
            self.class_of[n] = self.classes[ci]
        self.class_of[0] = self.classes[0]
        self.maps: list = []
        self.fhead = bytearray()  # first free spot of each block
        self.fcount = array("H")  # free spots of each block
        self.owner: list = []
        self.pnext = array("i")  # partial lists: next block, or -1
        self.pprev = array("i")  # previous block, -1 at the head, UNLISTED if none
        self._spare_ids = array("i")
        self.draining: set = set()
        self.deferring = False  # keep emptied blocks until release_deferred()
        self._deferred: list = []
        self.epoch = 0
        self.meta_bytes = 0  # BLOCK_META_BYTES a block + SPARE_ID_BYTES a spare id
        self.nr_blocks = 0
        self.block_bytes = 0
        self.pages_compacted = 0
        self.blocks_released = 0
        self.release_errors = 0
        self._zombies: list = []  # blocks munmap refused (ENOMEM: max_map_count)

    # -- sizes -------------------------------------------------------------
    @property
    def live_objects(self) -> int:
        return sum(c.live for c in self.classes)

    @property
    def free_spot_bytes(self) -> int:
        """Bytes of free spots inside blocks (tails not counted)."""
        return sum((c.nblocks * c.objs - c.live) * c.size for c in self.classes)

    # -- partial lists -------------------------------------------------------
    def partial_add(self, b: int, c: SizeClass) -> None:
        """List block ``b`` as partial in its class (lock held; not listed)."""
        h = c.phead
        self.pnext[b] = h
        self.pprev[b] = -1
        if h >= 0:
            self.pprev[h] = b
        c.phead = b

    def _partial_remove(self, b: int, c: SizeClass) -> None:
        """Unlist block ``b`` if it is listed (lock held)."""
        p = self.pprev[b]
        if p == UNLISTED:
            return
        n = self.pnext[b]
        if p >= 0:
            self.pnext[p] = n
        else:
            c.phead = n
        if n >= 0:
            self.pprev[n] = p
        self.pprev[b] = UNLISTED

    def _spots(self, c: SizeClass) -> int:
        """Free spots a class can allocate from now (lock held)."""
        spots = c.nblocks * c.objs - c.live
        for b in self.draining:
            if self.owner[b] is c:
                spots -= self.fcount[b]
        return spots

    def blocks_to_map(self, seq) -> dict:
        """``{class: new blocks}`` that a request needs (lock held).

        ``seq`` lists, in the order they will happen, ``(length of the new
        object or 0, handle it replaces)``: each allocation may use a spot
        that an earlier change of the request frees (``deferring`` keeps
        emptied blocks until ``release_deferred``)."""
        avail: dict = {}
        new: dict = {}
        for n, old in seq:
            if n:
                c = self.class_of[n]
                a = avail.get(c)
                if a is None:
                    a = self._spots(c)
                if a == 0:
                    new[c] = new.get(c, 0) + 1
                    a = c.objs
                avail[c] = a - 1
            if old & TAG_MASK == TAG_OBJ and old >> BLOCK_SHIFT not in self.draining:
                oc = self.owner[old >> BLOCK_SHIFT]
                a = avail.get(oc)
                avail[oc] = (self._spots(oc) if a is None else a) + 1
        return new

    def map_blocks(self, blocks: dict) -> None:
        """Map the blocks ``blocks_to_map`` asked for (lock held)."""
        for c, k in blocks.items():
            for _ in range(k):
                self.partial_add(self._new_block(c), c)

    def release_deferred(self) -> None:
        """End ``deferring``: release the blocks that emptied meanwhile."""
        self.deferring = False
        deferred, self._deferred = self._deferred, []
        for b in deferred:
            c = self.owner[b]
            if c is not None and self.fcount[b] == c.objs and b != c.cur:
                self.release_block(b, c)

    # -- objects -------------------------------------------------------------
    def alloc(self, data, flag: int = 0) -> int:
        """Copy ``data`` (1..4096 bytes) into a spot; return its handle.
        Lock held.  (PageStore.write inlines this: see "Fast-path
        interface" in the module docstring.)"""
        return self.alloc_all((data,), (flag,))[0]

    def alloc_all(self, datas, flags=None) -> list[int]:
        """Copy each of ``datas`` (bytes-like, 1..4096 bytes) into a spot, in
        order, with the flag at the same place in ``flags`` (None: all 0);
        return their handles: all of them, or none if mapping a block fails
        (ENOMEM, no block id left): the spots taken so far are freed again
        before the error propagates.  Lock held.  (One loop for a whole
        request: docs/design.md#multi-page-requests.)"""
        handles: list[int] = []
        maps, fhead, fcount, class_of = self.maps, self.fhead, self.fcount, self.class_of
        items = zip(datas, itertools.repeat(0) if flags is None else flags, strict=False)
        try:
            for data, flag in items:
                n = len(data)
                c = class_of[n]
                b = c.cur
                if b < 0:
                    b = self.next_block(c)
                mm = maps[b]
                s = fhead[b]
                off = s * c.size
                fhead[b] = (s + 1 + mm[off]) & 255  # the spot's link (module doc)
                k = fcount[b] - 1
                fcount[b] = k
                if not k:
                    c.cur = -1
                mm[off : off + n] = data
                c.live += 1
                handles.append(
                    TAG_OBJ | flag | n << LEN_SHIFT | off << OFF_SHIFT | b << BLOCK_SHIFT
                )
        except BaseException:
            self.free_all(handles)
            raise
        return handles

    def next_block(self, c: SizeClass) -> int:
        """Make a block with a free spot ``c.cur`` and return it: the head of
        the partial list, else a new block (lock held; fast-path interface)."""
        b = c.phead
        if b >= 0:  # the head of the partial list
            self._partial_remove(b, c)
        else:
            b = self._new_block(c)
        c.cur = b
        return b

    def _new_block(self, c: SizeClass) -> int:
        mm = mmap.mmap(-1, c.block_bytes, flags=_MMAP_FLAGS)
        if self._spare_ids:
            b = self._spare_ids.pop()
            self.maps[b] = mm
            self.owner[b] = c
            self.meta_bytes -= SPARE_ID_BYTES
        else:
            b = len(self.maps)
            if b >= MAX_BLOCKS:
                mm.close()
                raise MemoryError("arena: out of block ids")
            self.maps.append(mm)
            self.owner.append(c)
            self.pnext.append(-1)
            self.pprev.append(UNLISTED)
            self.fhead.append(0)
            self.fcount.append(0)
        # a fresh map reads as zeros: links of 0, the free list 0, 1, 2, ...
        self.fhead[b] = 0
        self.fcount[b] = c.objs
        c.nblocks += 1
        self.meta_bytes += BLOCK_META_BYTES
        self.nr_blocks += 1
        self.block_bytes += c.block_bytes
        return b

    def free_obj(self, h: int) -> None:
        """Give the spot of handle ``h`` back.  Lock held.  (PageStore.write
        inlines this: see "Fast-path interface" in the module docstring.)"""
        self.free_all((h,))

    def free_all(self, handles) -> None:
        """Give the spots of ``handles`` back, in order.  Lock held."""
        owner, maps, fhead, fcount = self.owner, self.maps, self.fhead, self.fcount
        for h in handles:
            b = h >> BLOCK_SHIFT
            c = owner[b]
            off = (h >> OFF_SHIFT) & OFF_MASK
            s = off // c.size
            self.epoch += 1  # before the link overwrites the object's first byte
            maps[b][off] = (fhead[b] - s - 1) & 255
            fhead[b] = s
            k = fcount[b] + 1
            fcount[b] = k
            c.live -= 1
            if k == c.objs:
                if b == c.cur:
                    pass
                elif self.deferring:
                    self._deferred.append(b)
                else:
                    self.release_block(b, c)
            elif k == 1 and b != c.cur and b not in self.draining:
                if c.cur < 0:  # no block being filled: this one is next
                    c.cur = b
                else:
                    self.partial_add(b, c)

    def release_block(self, b: int, c: SizeClass) -> None:
        """munmap an empty block (lock held; fast-path interface)."""
        self.epoch += 1
        self._partial_remove(b, c)
        c.nblocks -= 1
        self.meta_bytes -= BLOCK_META_BYTES
        if c.cur == b:
            c.cur = -1
        mm = self.maps[b]
        self.maps[b] = None
        self.fcount[b] = 0
        self.owner[b] = None
        self._spare_ids.append(b)
        self.meta_bytes += SPARE_ID_BYTES
        self.nr_blocks -= 1
        self.block_bytes -= c.block_bytes
        self.blocks_released += 1
        try:
            mm.close()
        except (OSError, BufferError):
            # munmap can fail with ENOMEM when splitting a mapping would pass
            # vm.max_map_count: give the pages back at least, retry later.
            self.release_errors += 1
            try:
                mm.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):
                pass
            self._zombies.append(mm)

    def free_spots(self, b: int):
        """The free spots of block ``b``, following its free list (lock
        held); None if the list is broken (a spot out of range or twice)."""
        c = self.owner[b]
        mm = self.maps[b]
        s = self.fhead[b]
        spots = set()
        for _ in range(self.fcount[b]):
            if s >= c.objs or s in spots:
                return None
            spots.add(s)
            s = (s + 1 + mm[s * c.size]) & 255
        return spots

    def read(self, h: int) -> bytes:
        """The object's bytes (no lock: see the module doc for the epoch
        check the caller does around it)."""
        off = (h >> OFF_SHIFT) & OFF_MASK
        return self.maps[h >> BLOCK_SHIFT][off : off + ((h >> LEN_SHIFT) & LEN_MASK)]

    _plan_freed = 0

    def release_empty(self) -> int:
        """Release empty ``cur`` blocks (lock held); return pages freed."""
        pages = 0
        for c in self.classes:
            b = c.cur
            if b >= 0 and self.fcount[b] == c.objs:
                self.release_block(b, c)
                pages += c.pages
        if self.nr_blocks == 0 and not self.draining and self.maps:
            # empty: drop the per-block lists grown to the peak (and the
            # recycled ids, int objects of 28 bytes each)
            self.maps, self.owner = [], []
            self.pnext, self.pprev, self._spare_ids = array("i"), array("i"), array("i")
            self.fhead, self.fcount = bytearray(), array("H")
            self.meta_bytes = 0
        if self._zombies:
            for mm in list(self._zombies):
                try:
                    mm.close()
                    self._zombies.remove(mm)
                except (OSError, BufferError):
                    pass
        return pages

    # -- compaction ----------------------------------------------------------
    def fragmented_bytes(self) -> int:
        """Free spot bytes in blocks that compaction could empty: per class,
        whole blocks' worth of free spots."""
        total = 0
        for c in self.classes:
            if c.nblocks:
                spare = c.nblocks * c.objs - c.live
                total += (spare // c.objs) * c.block_bytes
        return total

    def _plan(self) -> set:
        """Mark the sparsest blocks of each class draining (lock held)."""
        self._plan_freed = self.release_empty()  # an empty cur block would soak up moves
        sources = set()
        free = self.fcount
        spare: dict = {}  # class -> blocks it could empty
        for c in self.classes:
            if c.nblocks >= 2 and c.nblocks - -(-c.live // c.objs) >= 1:
                spare[c] = []
        if spare:  # one pass over the blocks (classes keep counts, not sets)
            for b, c in enumerate(self.owner):
                if c in spare:
                    spare[c].append(b)
        for c, blocks in spare.items():
            nblocks = len(blocks)
            keep = -(-c.live // c.objs)
            order = sorted(blocks, key=lambda b: free[b], reverse=True)
            for b in order[: nblocks - keep]:
                if free[b] == c.objs:
                    continue  # already empty: release_empty / free will do it
                sources.add(b)
                self._partial_remove(b, c)
                if c.cur == b:
                    c.cur = -1
        self.draining = sources
        return sources

    def compact(self, table, lock=None) -> dict:
        """Move objects out of sparse blocks, release emptied blocks.

        ``table`` is the owner's handle table (indexable, assignable; any
        value whose tag is not TAG_OBJ is ignored).  Takes ``lock`` (default
        the arena's) for each batch, never for the scan.  Returns
        ``{"moved": objects, "pages_freed": 4 KiB pages, "blocks_freed": n}``.
        """
        lock = lock or self.lock
        with lock:
            before = self.blocks_released
            sources = self._plan()
            freed, blocks = self._plan_freed, self.blocks_released - before
        moved = 0
        try:
            if sources:
                todo = array("Q")  # slot, handle, slot, handle, ...: no objects
                shift, mask = BLOCK_SHIFT, TAG_MASK
                for i, h in enumerate(table):
                    if h & mask == TAG_OBJ and h >> shift in sources:
                        todo.append(i)
                        todo.append(h)
                        if len(todo) == 2 * COMPACT_SCAN_OBJECTS:  # bounded memory
                            m, p, k = self._move(table, todo, lock)
                            moved, freed, blocks = moved + m, freed + p, blocks + k
                            del todo[:]
                m, p, k = self._move(table, todo, lock)
                moved, freed, blocks = moved + m, freed + p, blocks + k
        finally:
            with lock:
                for b in self.draining:
                    c = self.owner[b]
                    if c is None or not self.fcount[b] or c.cur == b:
                        continue
                    if self.pprev[b] == UNLISTED:
                        self.partial_add(b, c)
                self.draining = set()
                before = self.blocks_released
                freed += self.release_empty()
                blocks += self.blocks_released - before
                self.pages_compacted += freed
        return {"moved": moved, "pages_freed": freed, "blocks_freed": blocks}

    def _move(self, table, todo, lock) -> tuple:
        """Move ``todo`` (slot, handle pairs) in batches, each under one hold
        of ``lock``."""
        moved = pages = blocks = 0
        for start in range(0, len(todo), 2 * COMPACT_BATCH):
            with lock:
                m, p, k = self._move_batch(table, todo[start : start + 2 * COMPACT_BATCH])
            moved, pages, blocks = moved + m, pages + p, blocks + k
        return moved, pages, blocks

    def _move_batch(self, table, batch) -> tuple:
        """Move one batch (lock held): (objects moved, pages freed, blocks freed)."""
        moved = pages = blocks = 0
        for j in range(0, len(batch), 2):
            i, h = batch[j], batch[j + 1]
            if table[i] != h:
                continue  # rewritten or trimmed meanwhile: its spot is free already
            b = h >> BLOCK_SHIFT
            c = self.owner[b]
            if c.cur < 0 and c.phead < 0:
                continue  # no room left outside the draining blocks
            nh = self.alloc(self.read(h), h & FLAG_BIT)
            table[i] = nh
            self.free_obj(h)
            moved += 1
            if self.maps[b] is None:
                pages += c.pages
                blocks += 1
        return moved, pages, blocks

    # -- checking ------------------------------------------------------------
    def audit(self, table=()) -> dict:
        """Recompute every counter from the blocks (and the handles in
        ``table``) and compare; lock held by the caller.  Returns the
        recomputed figures; raises AssertionError listing what is wrong."""
        errors = self._audit_fast_path()
        nr_blocks = block_bytes = free_spot = live = 0
        per_class: dict = {}
        listed_in: dict = {}
        frees: dict = {}  # block -> its free spots
        meta = SPARE_ID_BYTES * len(self._spare_ids)
        clive: dict = {}
        for b, mm in enumerate(self.maps):
            c = self.owner[b]
            if mm is None:
                if c is not None or self.fcount[b] or self.pprev[b] != UNLISTED:
                    errors.append(f"released block {b} still has state")
                continue
            nr_blocks += 1
            block_bytes += c.block_bytes
            meta += BLOCK_META_BYTES
            if len(mm) != c.block_bytes:
                errors.append(f"block {b}: {len(mm)} bytes, class wants {c.block_bytes}")
            fl = self.free_spots(b)
            if fl is None:
                errors.append(f"block {b}: bad free list")
                fl = set()
            frees[b] = fl
            if len(fl) != self.fcount[b]:
                errors.append(f"block {b}: {self.fcount[b]} free spots counted, {len(fl)} listed")
            free_spot += len(fl) * c.size
            live += c.objs - len(fl)
            per_class[c] = per_class.get(c, 0) + 1
            clive[c] = clive.get(c, 0) + c.objs - len(fl)
            if len(fl) == c.objs and b != c.cur and b not in self.draining:
                errors.append(f"block {b} empty but not released")
            listed = self.pprev[b] != UNLISTED
            listed_in[c] = listed_in.get(c, 0) + listed
            if fl and b != c.cur and not listed and b not in self.draining:
                errors.append(f"block {b} has free spots but cannot be allocated from")
            if listed and (not fl or b == c.cur or b in self.draining):
                errors.append(f"block {b} listed partial but full, current or draining")
        spare = set(self._spare_ids)
        if len(spare) != len(self._spare_ids) or spare != {
            b for b, mm in enumerate(self.maps) if mm is None
        }:
            errors.append("spare block ids are not exactly the released ones")
        for c in self.classes:
            if per_class.get(c, 0) != c.nblocks:
                errors.append(f"class {c.size}: nblocks {c.nblocks}, counted {per_class.get(c, 0)}")
            if clive.get(c, 0) != c.live:
                errors.append(f"class {c.size}: live {c.live}, counted {clive.get(c, 0)}")
            n, b, prev = 0, c.phead, -1
            while b >= 0 and n <= len(self.maps):
                if self.owner[b] is not c or self.pprev[b] != prev:
                    errors.append(f"class {c.size}: partial list broken at block {b}")
                    break
                n, prev, b = n + 1, b, self.pnext[b]
            nlisted = listed_in.get(c, 0)
            if n != nlisted:
                errors.append(f"class {c.size}: {n} blocks on the partial list, {nlisted} marked")
        compr = self._audit_handles(table, frees, live, errors)
        for name, value in (
            ("nr_blocks", nr_blocks),
            ("block_bytes", block_bytes),
            ("free_spot_bytes", free_spot),
            ("live_objects", live),  # a property: the classes' live counts
            ("meta_bytes", meta),
        ):
            if getattr(self, name) != value:
                errors.append(f"{name} is {getattr(self, name)}, recomputed {value}")
        if errors:
            raise AssertionError("arena audit: " + "; ".join(errors[:10]))
        return {
            "nr_blocks": nr_blocks,
            "block_bytes": block_bytes,
            "free_spot_bytes": free_spot,
            "live_objects": live,
            "meta_bytes": meta,
            "compr_bytes": compr,
        }

    def _audit_fast_path(self) -> list:
        """The fields the store's inlined 4 KiB write uses are still there."""
        gone = [f for f in FAST_PATH_FIELDS if not hasattr(self, f)]
        gone += [f"SizeClass.{f}" for f in CLASS_FAST_PATH_FIELDS if f not in SizeClass.__slots__]
        return [f"fast-path field {f} is gone" for f in gone]

    def _audit_handles(self, table, frees: dict, live: int, errors: list) -> int:
        """``audit``'s check of the handle table against the blocks' free
        spots (``frees``: block -> free spots) and ``live`` objects; appends
        to ``errors``; returns the objects' bytes."""
        seen: dict = {}
        compr = 0
        for i, h in enumerate(table):
            if h & TAG_MASK != TAG_OBJ:
                continue
            b = h >> BLOCK_SHIFT
            n = (h >> LEN_SHIFT) & LEN_MASK
            off = (h >> OFF_SHIFT) & OFF_MASK
            compr += n
            if b >= len(self.maps) or self.maps[b] is None:
                errors.append(f"slot {i}: handle into released block {b}")
                continue
            c = self.owner[b]
            if off % c.size or off // c.size >= c.objs or n > c.size or self.class_of[n] is not c:
                errors.append(f"slot {i}: bad handle {h:#x}")
            elif off // c.size in frees.get(b, ()):
                errors.append(f"slot {i}: handle to a free spot")
            if (b, off) in seen:
                errors.append(f"slots {seen[(b, off)]} and {i} share a spot")
            seen[(b, off)] = i
        if table != () and len(seen) != live:
            errors.append(f"{len(seen)} handles for {live} live spots")
        return compr

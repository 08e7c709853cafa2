"""The page arena: compressed objects packed into mmap blocks, zsmalloc-style.

Why it exists and how its numbers were chosen: docs/design.md#page-arena-and-memory-accounting.

Data structure
--------------
Objects (compressed pages, 1..4096 bytes) live in *blocks*: private
anonymous mmaps of 1..8 pages (zsmalloc's zspages).  Each block belongs to
one *size class* and is cut into ``objs`` equal spots of the class's
``size``.  The class table is zsmalloc's (16-byte steps from 32 bytes, a
chain of at most 8 pages chosen for the least tail waste, neighbouring
classes with the same pages/objects merged: 119 classes); the last class,
4096 bytes, holds huge pages, 8 to a block (zsmalloc uses one page per huge
zspage; one mmap per 4 KiB would cost a syscall per huge write).

Per block, indexed by block id (ids are recycled):

- ``maps[id]``   the mmap (None once released),
- ``free[id]``   a ``bytearray`` of free spot numbers (all classes have at
  most 256 spots), used as a stack,
- ``owner[id]``  its ``SizeClass``.

Per class: ``cur`` (the block being filled, or -1), ``partial`` (a dict used
as an ordered set of the other blocks with free spots), ``blocks`` (all its
blocks).  A block is in at most one of ``cur``/``partial``; a full block is
in neither; a block being drained by compaction is in neither.

A handle is one 64-bit int (so a page's slot costs 8 bytes)::

    bits 0-1   tag: TAG_OBJ (the other values are the store's)
    bit  2     a flag the caller owns (the store: "secondary codec")
    bits 3-15  the object's length in bytes (1..4096)
    bits 16-35 its byte offset in the block
    bits 36-63 the block id

Invariants (whenever the owner's lock is free)
----------------------------------------------
- every live handle points at a spot that is not in its block's free stack,
  and no two live handles share a spot;
- ``len(free[b]) + live objects in b == owner[b].objs`` for every block;
- a block with no live object is released (munmap), except a class's
  ``cur`` block, kept so that a class that hovers around zero objects does
  not mmap/munmap on every write (``compact`` releases those too), and
  blocks emptied during a multi-page install (``deferring``), released at
  its end so that its later pages can use the spots its earlier ones
  freed (``blocks_to_map`` counts on that);
- ``block_bytes`` = sum of the live blocks' sizes; ``nr_blocks`` = live
  blocks; a class's ``live`` = its objects (so its free spots are
  ``len(blocks) * objs - live``, worked out when asked, not on every I/O).

Locking
-------
The arena has no lock of its own: ``alloc``, ``free``, ``release_empty`` and
every counter are used under the owner's lock (the store's ``_lock``, passed
in as ``lock``), which ``compact`` takes itself, a batch at a time.
``read`` takes no lock.  A lockless reader proves its copy is good with
``epoch``: the count of spots freed or moved, bumped (under the lock)
before any freed spot can be reused or any block released.  The reader
loads ``epoch``, then the handle, copies the bytes (an mmap slice is one
memcpy under the GIL), and loads ``epoch`` again: if it did not change, no
spot was freed in between, so the object was live at its place during the
copy.  If it changed, or the block was already released (ValueError,
TypeError), the reader tries again or takes the lock.  No memoryview over a
block is ever kept (closing an mmap with exports raises BufferError).

Compaction (zram's ``compact``) picks, per class, the sparsest blocks whose
objects fit into the free spots of the others, marks them *draining* (no
allocation goes there), scans the owner's handle table without the lock,
then moves objects under the lock in batches: an object is moved only if
its slot still holds the very handle (no ABA: a draining block gets no new
objects, so a handle into it cannot come back once freed).  Emptied blocks
are released; ``pages_compacted`` counts their 4 KiB pages.
"""

from __future__ import annotations

import mmap

from .units import PAGE_SIZE

MAX_CHAIN_PAGES = 8  # zsmalloc's CONFIG_ZSMALLOC_CHAIN_SIZE default
MIN_CLASS_BYTES = 32  # zsmalloc's ZS_MIN_ALLOC_SIZE on x86-64
CLASS_STEP_BYTES = 16  # zsmalloc's ZS_SIZE_CLASS_DELTA with 4 KiB pages
HUGE_BLOCK_PAGES = 8  # huge pages per block (zsmalloc: 1)
MIN_BLOCK_PAGES = 8  # shorter chains are repeated up to this

TAG_MASK = 3
TAG_OBJ = 1
FLAG_BIT = 4
LEN_SHIFT = 3
LEN_MASK = 0x1FFF
OFF_SHIFT = 16
OFF_MASK = 0xFFFFF
BLOCK_SHIFT = 36

# What one block costs besides its pages (measured with sys.getsizeof on
# CPython 3.11: the mmap object 96, its bytearray free stack 57 + one byte
# per spot, three list slots 24): counted in ``meta_bytes``.
BLOCK_META_BYTES = 96 + 57 + 24

# Objects moved per hold of the lock during compaction (about 0.1 ms).
COMPACT_BATCH = 64
# Objects found by the table scan before they are moved: bounds the scan's
# list (72 bytes an entry) whatever the device size.
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


class SizeClass:
    __slots__ = (
        "index",
        "size",
        "pages",
        "objs",
        "block_bytes",
        "cur",
        "partial",
        "blocks",
        "live",
    )

    def __init__(self, index: int, size: int, pages: int, objs: int):
        self.index = index
        self.size = size
        self.pages = pages
        self.objs = objs
        self.block_bytes = pages * PAGE_SIZE
        self.cur = -1
        self.partial: dict = {}
        self.blocks: set = set()
        self.live = 0

    def __repr__(self):
        return f"SizeClass({self.size}B, {self.pages}p x {self.objs})"


def build_classes() -> list:
    """zsmalloc's class table (merged classes), smallest first; the last
    class is the huge class (4096 bytes)."""
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
    # Short chains repeated up to MIN_BLOCK_PAGES (same tail waste per
    # object): a block's own cost (BLOCK_META_BYTES) is shared by more
    # objects; at most 256 spots (the free stack holds bytes).
    for i, (size, pages, objs) in enumerate(table[:-1]):
        times = max(1, min(MIN_BLOCK_PAGES // pages, 256 // objs))
        table[i] = (size, pages * times, objs * times)
    return [SizeClass(i, *t) for i, t in enumerate(table)]


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
        self.free: list = []
        self.owner: list = []
        self._spare_ids: list = []
        self.draining: set = set()
        self.deferring = False  # keep emptied blocks until release_deferred()
        self._deferred: list = []
        self.epoch = 0
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
        return sum((len(c.blocks) * c.objs - c.live) * c.size for c in self.classes)

    @property
    def meta_bytes(self) -> int:
        return self.nr_blocks * BLOCK_META_BYTES

    def _spots(self, c: SizeClass) -> int:
        """Free spots a class can allocate from now (lock held)."""
        spots = len(c.blocks) * c.objs - c.live
        for b in self.draining:
            if self.owner[b] is c:
                spots -= len(self.free[b])
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
                c.partial[self._new_block(c)] = None

    def release_deferred(self) -> None:
        """End ``deferring``: release the blocks that emptied meanwhile."""
        self.deferring = False
        deferred, self._deferred = self._deferred, []
        for b in deferred:
            c = self.owner[b]
            if c is not None and len(self.free[b]) == c.objs and b != c.cur:
                self._release(b, c)

    def need_bytes(self, lengths) -> int:
        """Block bytes that allocating objects of these lengths would add."""
        blocks = self.blocks_to_map([(n, 0) for n in lengths])
        return sum(c.block_bytes * k for c, k in blocks.items())

    # -- objects -------------------------------------------------------------
    def alloc(self, data, flag: int = 0) -> int:
        """Copy ``data`` (1..4096 bytes) into a spot; return its handle.
        Lock held.  (PageStore.write inlines this: keep in step.)"""
        n = len(data)
        c = self.class_of[n]
        b = c.cur
        if b < 0:
            b = self._next_block(c)
        fl = self.free[b]
        off = fl.pop() * c.size
        if not fl:
            c.cur = -1
        self.maps[b][off : off + n] = data
        c.live += 1
        return TAG_OBJ | flag | n << LEN_SHIFT | off << OFF_SHIFT | b << BLOCK_SHIFT

    def _next_block(self, c: SizeClass) -> int:
        if c.partial:
            b = c.partial.popitem()[0]
        else:
            b = self._new_block(c)
        c.cur = b
        return b

    def _new_block(self, c: SizeClass) -> int:
        mm = mmap.mmap(-1, c.block_bytes, flags=_MMAP_FLAGS)
        spots = bytearray(range(c.objs - 1, -1, -1))  # pop() gives spot 0 first
        if self._spare_ids:
            b = self._spare_ids.pop()
            self.maps[b] = mm
            self.free[b] = spots
            self.owner[b] = c
        else:
            b = len(self.maps)
            if b >> (64 - BLOCK_SHIFT):
                mm.close()
                raise MemoryError("arena: out of block ids")
            self.maps.append(mm)
            self.free.append(spots)
            self.owner.append(c)
        c.blocks.add(b)
        self.nr_blocks += 1
        self.block_bytes += c.block_bytes
        return b

    def free_obj(self, h: int) -> None:
        """Give the spot of handle ``h`` back.  Lock held.  (PageStore.write inlines this: keep in step.)"""
        b = h >> BLOCK_SHIFT
        c = self.owner[b]
        fl = self.free[b]
        fl.append(((h >> OFF_SHIFT) & OFF_MASK) // c.size)
        self.epoch += 1
        c.live -= 1
        k = len(fl)
        if k == c.objs:
            if b == c.cur:
                pass
            elif self.deferring:
                self._deferred.append(b)
            else:
                self._release(b, c)
        elif k == 1 and b != c.cur and b not in self.draining:
            if c.cur < 0:  # no block being filled: this one is next
                c.cur = b
            else:
                c.partial[b] = None

    def _release(self, b: int, c: SizeClass) -> None:
        """munmap an empty block (lock held)."""
        self.epoch += 1
        c.partial.pop(b, None)
        c.blocks.discard(b)
        if c.cur == b:
            c.cur = -1
        mm = self.maps[b]
        self.maps[b] = None
        self.free[b] = None
        self.owner[b] = None
        self._spare_ids.append(b)
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
            if b >= 0 and len(self.free[b]) == c.objs:
                self._release(b, c)
                pages += c.pages
        if self.nr_blocks == 0 and not self.draining and self.maps:
            # empty: drop the per-block lists grown to the peak (and the
            # recycled ids, int objects of 28 bytes each)
            self.maps, self.free, self.owner, self._spare_ids = [], [], [], []
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
            if c.blocks:
                spare = len(c.blocks) * c.objs - c.live
                total += (spare // c.objs) * c.block_bytes
        return total

    def _plan(self) -> set:
        """Mark the sparsest blocks of each class draining (lock held)."""
        self._plan_freed = self.release_empty()  # an empty cur block would soak up moves
        sources = set()
        free = self.free
        for c in self.classes:
            nblocks = len(c.blocks)
            if nblocks < 2:
                continue
            keep = -(-c.live // c.objs)
            if nblocks - keep < 1:
                continue
            order = sorted(c.blocks, key=lambda b: len(free[b]), reverse=True)
            for b in order[: nblocks - keep]:
                if len(free[b]) == c.objs:
                    continue  # already empty: release_empty / free will do it
                sources.add(b)
                c.partial.pop(b, None)
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
                todo: list = []
                shift, mask = BLOCK_SHIFT, TAG_MASK
                for i, h in enumerate(table):
                    if h & mask == TAG_OBJ and h >> shift in sources:
                        todo.append((i, h))
                        if len(todo) == COMPACT_SCAN_OBJECTS:  # bounded memory
                            m, p, k = self._move(table, todo, lock)
                            moved, freed, blocks = moved + m, freed + p, blocks + k
                            todo = []
                m, p, k = self._move(table, todo, lock)
                moved, freed, blocks = moved + m, freed + p, blocks + k
        finally:
            with lock:
                for b in self.draining:
                    c = self.owner[b]
                    if c is not None and self.free[b] and c.cur != b:
                        c.partial[b] = None
                self.draining = set()
                before = self.blocks_released
                freed += self.release_empty()
                blocks += self.blocks_released - before
                self.pages_compacted += freed
        return {"moved": moved, "pages_freed": freed, "blocks_freed": blocks}

    def _move(self, table, todo: list, lock) -> tuple:
        """Move ``todo`` in batches, each under one hold of ``lock``."""
        moved = pages = blocks = 0
        for start in range(0, len(todo), COMPACT_BATCH):
            with lock:
                m, p, k = self._move_batch(table, todo[start : start + COMPACT_BATCH])
            moved, pages, blocks = moved + m, pages + p, blocks + k
        return moved, pages, blocks

    def _move_batch(self, table, batch) -> tuple:
        """Move one batch (lock held): (objects moved, pages freed, blocks freed)."""
        moved = pages = blocks = 0
        for i, h in batch:
            if table[i] != h:
                continue  # rewritten or trimmed meanwhile: its spot is free already
            b = h >> BLOCK_SHIFT
            c = self.owner[b]
            if c.cur < 0 and not c.partial:
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
        errors = []
        nr_blocks = block_bytes = free_spot = live = 0
        for b, mm in enumerate(self.maps):
            c = self.owner[b]
            if mm is None:
                if c is not None or self.free[b] is not None:
                    errors.append(f"released block {b} still has state")
                continue
            nr_blocks += 1
            block_bytes += c.block_bytes
            if len(mm) != c.block_bytes:
                errors.append(f"block {b}: {len(mm)} bytes, class wants {c.block_bytes}")
            fl = self.free[b]
            if len(set(fl)) != len(fl) or any(s >= c.objs for s in fl):
                errors.append(f"block {b}: bad free stack")
            free_spot += len(fl) * c.size
            live += c.objs - len(fl)
            if b not in c.blocks:
                errors.append(f"block {b} missing from its class")
            if len(fl) == c.objs and b != c.cur and b not in self.draining:
                errors.append(f"block {b} empty but not released")
            if fl and b != c.cur and b not in c.partial and b not in self.draining:
                errors.append(f"block {b} has free spots but cannot be allocated from")
            if not fl and b in c.partial:
                errors.append(f"block {b} full but listed partial")
        for c in self.classes:
            clive = sum(c.objs - len(self.free[b]) for b in c.blocks if self.maps[b] is not None)
            if clive != c.live:
                errors.append(f"class {c.size}: live {c.live}, counted {clive}")
            if c.cur >= 0 and c.cur in c.partial:
                errors.append(f"class {c.size}: cur block also partial")
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
            elif off // c.size in self.free[b]:
                errors.append(f"slot {i}: handle to a free spot")
            if (b, off) in seen:
                errors.append(f"slots {seen[(b, off)]} and {i} share a spot")
            seen[(b, off)] = i
        if table != () and len(seen) != live:
            errors.append(f"{len(seen)} handles for {live} live spots")
        for name, value in (
            ("nr_blocks", nr_blocks),
            ("block_bytes", block_bytes),
            ("free_spot_bytes", free_spot),
            ("live_objects", live),  # a property: the classes' live counts
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
            "compr_bytes": compr,
        }

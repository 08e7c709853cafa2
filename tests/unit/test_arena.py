"""The page arena (zsmalloc-style size classes of mmap blocks) and the page
store on top of it: allocation in every class, free, block release,
compaction under concurrent I/O, and audit() after every phase."""

from __future__ import annotations

import array
import os
import random
import sys
import threading

import pytest

from zramd.engine import heap
from zramd.engine.arena import (
    BLOCK_META_BYTES,
    BLOCK_SHIFT,
    CLASS_TABLE,
    LEN_MASK,
    LEN_SHIFT,
    MAX_COMPRESSED_BYTES,
    TAG_OBJ,
    Arena,
)
from zramd.engine.codecs import make_codec
from zramd.engine.store import HUGE_THRESHOLD, PageStore
from zramd.units import PAGE_SIZE

sys_rng = random.Random(20261126)


def payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def fresh_arena():
    return Arena(threading.Lock())


def test_class_table_is_zsmalloc_with_8_page_chains():
    sizes = [c.size for c in CLASS_TABLE]
    assert sizes == sorted(sizes) and sizes[0] == 32 and sizes[-1] == PAGE_SIZE
    assert len(CLASS_TABLE) == 119  # zsmalloc's merged classes with 8-page chains
    for c in CLASS_TABLE[:-1]:
        assert 1 <= c.pages <= 16 and c.objs == c.pages * PAGE_SIZE // c.size
        assert 2 <= c.objs <= 256  # the free list's links are bytes
        # the block length costs least per object, tail and bookkeeping together
        def cost(pages, size=c.size):
            objs = pages * PAGE_SIZE // size
            return (pages * PAGE_SIZE - objs * size + BLOCK_META_BYTES) / objs
        assert all(cost(c.pages) <= cost(p) for p in range(1, 17)
                   if p * PAGE_SIZE // c.size <= 256)
    # the biggest class that still packs objects: 3632 bytes (9 in 8 pages,
    # as zsmalloc; 18 in our 16-page blocks)
    big = CLASS_TABLE[-2]
    assert (big.size, big.pages, big.objs) == (3632, 16, 18)
    assert big.size == MAX_COMPRESSED_BYTES
    assert HUGE_THRESHOLD == 3633
    huge = CLASS_TABLE[-1]
    assert huge.objs == huge.pages  # raw pages, whole


def test_alloc_in_every_class_then_free_releases_every_block():
    arena = fresh_arena()
    table = array.array("Q")
    data = {}
    with arena.lock:
        for c in arena.classes:
            for n in {c.size, max(1, c.size - 15)}:
                for k in range(c.objs + 1):  # one more than a block holds
                    seed = len(table)
                    h = arena.alloc(payload(n, seed))
                    assert h & 3 == TAG_OBJ and (h >> LEN_SHIFT) & LEN_MASK == n
                    assert arena.owner[h >> BLOCK_SHIFT] is c
                    table.append(h)
                    data[len(table) - 1] = payload(n, seed)
        a = arena.audit(table)
    assert a["live_objects"] == len(table)
    assert a["block_bytes"] == arena.block_bytes == sum(
        c.nblocks * c.block_bytes for c in arena.classes)
    for i, h in enumerate(table):
        assert arena.read(h) == data[i]
    maps = [m for m in arena.maps if m is not None]
    with arena.lock:
        for i in range(len(table)):
            arena.free_obj(table[i])
            table[i] = 0
        assert arena.release_empty() > 0
        assert arena.audit(table)["live_objects"] == 0
    assert arena.nr_blocks == arena.block_bytes == arena.free_spot_bytes == 0
    assert all(m.closed for m in maps)  # munmapped, not just forgotten
    assert all(m is None for m in arena.maps)


def test_spots_are_reused_before_new_blocks():
    arena = fresh_arena()
    with arena.lock:
        hs = [arena.alloc(b"x" * 100) for _ in range(1000)]
        blocks = arena.nr_blocks
        for h in hs[::2]:
            arena.free_obj(h)
        for _ in range(500):
            arena.alloc(b"y" * 100)
        assert arena.nr_blocks == blocks


def test_a_spot_freed_in_a_full_class_is_the_next_one_filled():
    """With no block being filled, a block that gets a free spot becomes
    the class's cur block (what its partial list would hand out next
    anyway), so a steady stream of rewrites does not list and unlist a
    block per write."""
    arena = fresh_arena()
    c = arena.class_of[100]
    with arena.lock:
        hs = [arena.alloc(b"x" * 100) for _ in range(3 * c.objs)]
        assert c.cur == -1 and c.phead == -1 and arena.nr_blocks == 3
        first, second = hs[5], hs[c.objs + 5]
        arena.free_obj(first)
        assert c.cur == first >> BLOCK_SHIFT and c.phead == -1
        arena.free_obj(second)  # a block is being filled: this one waits in the list
        assert c.cur == first >> BLOCK_SHIFT and c.phead == second >> BLOCK_SHIFT
        assert arena.alloc(b"y" * 100) >> BLOCK_SHIFT == first >> BLOCK_SHIFT
        assert arena.alloc(b"y" * 100) >> BLOCK_SHIFT == second >> BLOCK_SHIFT
        assert arena.nr_blocks == 3
        arena.audit()


def test_4k_rewrites_in_a_full_class_map_no_block():
    """The store's 4 KiB write path (its own copy of alloc and free) does
    the same: the spot a write frees takes the next write."""
    store = PageStore(64 * PAGE_SIZE, make_codec("none"))  # every page huge: 8 a block
    pages = {i: os.urandom(PAGE_SIZE) for i in range(24)}
    store.write(b"".join(pages.values()), 0)  # 3 full blocks
    huge = store._arena.classes[-1]
    assert store.stats()["arena_blocks"] == 3 and huge.cur == -1
    store.discard(5 * PAGE_SIZE, PAGE_SIZE)  # Arena.free_obj
    del pages[5]
    for i in (6, 7, 20, 13, 30):  # rewrites move the one free spot around; a new page takes it
        old_block = store._handles[i] >> BLOCK_SHIFT if i in pages else -1
        pages[i] = os.urandom(PAGE_SIZE)
        store.write(pages[i], i * PAGE_SIZE)
        assert store.stats()["arena_blocks"] == 3 and huge.phead == -1
        assert huge.cur == old_block  # the block the write freed a spot in (none: full)
    for i, page in pages.items():
        buf = bytearray(PAGE_SIZE)
        store.read(memoryview(buf), i * PAGE_SIZE)
        assert bytes(buf) == page
    store.audit()


def test_audit_catches_a_wrong_counter_and_a_shared_spot():
    arena = fresh_arena()
    with arena.lock:
        table = array.array("Q", [arena.alloc(b"a" * 50) for _ in range(10)])
        arena.audit(table)
        arena.block_bytes += 1
        with pytest.raises(AssertionError, match="block_bytes"):
            arena.audit(table)
        arena.block_bytes -= 1
        arena.classes[0].live += 1
        with pytest.raises(AssertionError, match="live"):
            arena.audit(table)
        arena.classes[0].live -= 1
        table[3] = table[4]
        with pytest.raises(AssertionError, match="share a spot"):
            arena.audit(table)


def test_compaction_packs_sparse_blocks_and_releases_them():
    arena = fresh_arena()
    rng = random.Random(1)
    table = array.array("Q")
    contents = []
    with arena.lock:
        for i in range(4000):
            n = rng.choice([40, 300, 1000, 2000, 3000, PAGE_SIZE])
            data = payload(n, i)
            table.append(arena.alloc(data))
            contents.append(data)
        for i in rng.sample(range(4000), 3000):  # trim three quarters
            arena.free_obj(table[i])
            table[i] = 0
            contents[i] = None
        before = arena.audit(table)
    result = arena.compact(table)
    with arena.lock:
        after = arena.audit(table)
    assert result["moved"] > 0 and result["pages_freed"] > 0
    assert before["block_bytes"] - after["block_bytes"] == result["pages_freed"] * PAGE_SIZE
    assert arena.pages_compacted == result["pages_freed"]
    # what is left is dense: at most one partly empty block per class
    for c in arena.classes:
        assert c.nblocks == -(-c.live // c.objs)
    for i, data in enumerate(contents):
        if data is not None:
            assert arena.read(table[i]) == data
    assert arena.compact(table)["moved"] == 0  # nothing left to do


TEXT = b"".join(b"page %6d of a compressible text, a page that lz4 likes. " % i
                for i in range(80))


def page_of(seed: int, kind: int) -> bytes:
    """Pages of several compressibilities (several size classes)."""
    r = random.Random(seed)
    if kind == 0:
        return bytes(PAGE_SIZE)
    keep = [64, 900, 2000, 3300, PAGE_SIZE][kind % 5]
    return (r.randbytes(keep) + TEXT)[:PAGE_SIZE]


def read_page(store, index):
    buf = bytearray(PAGE_SIZE)
    store.read(memoryview(buf), index * PAGE_SIZE)
    return bytes(buf)


# Steps per writer thread.  This is a stress test: it looks for any torn or
# lost page while compaction, readers and writers run together, and it
# switches threads every 10 us instead of Python's default 5 ms, so that
# few steps still interleave often.  The epoch check itself is pinned down
# deterministically by test_reader_retries_when_the_object_moves_under_it.
WRITER_STEPS = 400


@pytest.fixture
def fast_thread_switches(monkeypatch):
    # the compactor loops on store.compact(); its heap trim (a full garbage
    # collection, zramd/engine/heap.py, tested on its own) is not what this tests
    monkeypatch.setattr(heap, "trim", lambda: True)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(old)


@pytest.mark.parametrize("checksum", [None, "xxh3"])
def test_compaction_under_concurrent_readers_and_writers(checksum, fast_thread_switches):
    """Readers and writers never see a moved or reused object while
    compaction runs in a loop; every counter audits after every phase."""
    from zramd.engine.checksums import make_checksum
    pages = 2048
    store = PageStore(pages * PAGE_SIZE, make_codec("lz4"), checksum=make_checksum(checksum))
    model = [None] * pages
    for i in range(pages):
        model[i] = page_of(i, i)
        store.write(model[i], i * PAGE_SIZE)
    store.audit()
    rng = random.Random(7)
    for i in rng.sample(range(pages), pages // 2):  # fragment every class
        store.discard(i * PAGE_SIZE, PAGE_SIZE)
        model[i] = bytes(PAGE_SIZE)
    store.audit()
    # pages below 1024 are read-only during the run; writers own the others
    stop = threading.Event()
    errors = []
    compactions = []

    def compactor():
        while not stop.is_set():
            compactions.append(store.compact())

    def reader(seed):
        r = random.Random(seed)
        try:
            while not stop.is_set():
                i = r.randrange(1024)
                assert read_page(store, i) == model[i], f"page {i}"
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def writer(seed, lo, hi):
        r = random.Random(seed)
        try:
            for step in range(WRITER_STEPS):
                i = r.randrange(lo, hi)
                op = r.random()
                if op < 0.5:
                    data = page_of(seed * 100000 + step, r.randrange(5))
                    store.write(data, i * PAGE_SIZE)
                    model[i] = data
                elif op < 0.7:
                    store.discard(i * PAGE_SIZE, PAGE_SIZE)
                    model[i] = bytes(PAGE_SIZE)
                assert read_page(store, i) == model[i], f"page {i}"
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=compactor)]
    threads += [threading.Thread(target=reader, args=(s,)) for s in (1, 2)]
    writers = [threading.Thread(target=writer, args=(s, 1024 + 512 * k, 1536 + 512 * k))
               for k, s in enumerate((3, 4))]
    for t in threads + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert sum(c["moved"] for c in compactions) > 0
    store.audit()
    final = store.compact()
    a = store.audit()
    for i in range(pages):
        assert read_page(store, i) == model[i]
    s = store.stats()
    assert s["pages_compacted"] >= final["pages_freed"]
    assert s["checksum_errors"] == 0
    # what is left is dense: per class at most one block not full
    arena = store._arena
    assert all(c.nblocks == -(-c.live // c.objs) for c in arena.classes)
    assert a["mem_used_total"] == s["mem_used_total"]


def test_reader_retries_when_the_object_moves_under_it():
    """A lockless read whose copy raced a move (the arena's epoch changed)
    is thrown away and done again: the caller never sees the stale bytes."""
    store = PageStore(16 * PAGE_SIZE, make_codec("lz4"))
    page = page_of(1, 2)
    store.write(page, 0)
    h = store._handles[0]
    b = h >> BLOCK_SHIFT
    arena = store._arena
    real = arena.maps[b]

    class Racing:
        """The block as seen by a reader that a compaction overtakes."""
        calls = 0

        def __getitem__(self, key):
            Racing.calls += 1
            if Racing.calls == 1:  # the first copy: the spot was reused meanwhile
                arena.epoch += 1
                return b"\x00" * (key.stop - key.start)
            return real[key]

    arena.maps[b] = Racing()
    try:
        assert read_page(store, 0) == page
    finally:
        arena.maps[b] = real
    assert Racing.calls == 2


def test_rewrite_reusing_the_same_spot_is_not_mistaken_for_the_old_data():
    """ABA: a page rewritten twice can land on the very spot (and handle) it
    had; a commit prepared against the old data must still fail."""
    store = PageStore(16 * PAGE_SIZE, make_codec("none"))
    store.write(os.urandom(PAGE_SIZE), 0)
    store.write(os.urandom(PAGE_SIZE), PAGE_SIZE)  # keeps the block alive
    old = store.entry(0)
    store.write(os.urandom(PAGE_SIZE), 0)            # to another spot
    store.write(os.urandom(PAGE_SIZE), 0)            # back to the first one
    assert store._handles[0] == old[0]               # same handle value...
    from zramd.engine.store import Backed
    assert store.holds(0, old)                       # ...passes the cheap check
    assert not store.commit(0, old, Backed(0))       # but not the content check
    store.audit()


def test_mem_limit_counts_blocks_and_failed_write_changes_nothing():
    limit = 64 * PAGE_SIZE
    store = PageStore(256 * PAGE_SIZE, make_codec("lz4"), mem_limit_bytes=limit)
    written = 0
    with pytest.raises(OSError):
        for i in range(256):
            store.write(os.urandom(PAGE_SIZE), i * PAGE_SIZE)
            written += 1
    s = store.stats()
    assert s["mem_used_total"] <= limit
    assert written >= 48  # most of the limit is usable
    a = store.audit()
    assert a["mem_used_total"] == s["mem_used_total"]
    assert s["arena_block_bytes"] == a["block_bytes"] > written * PAGE_SIZE - 8 * PAGE_SIZE


def test_compaction_skips_objects_rewritten_between_scan_and_move():
    """Compaction scans the handle table without the lock; pages rewritten
    or trimmed after the scan must keep their new contents."""
    pages = 512
    store = PageStore(pages * PAGE_SIZE, make_codec("lz4"))
    model = {}
    for i in range(pages):
        model[i] = page_of(i, 2)
        store.write(model[i], i * PAGE_SIZE)
    for i in range(0, pages, 4):
        if i % 8:
            store.discard(i * PAGE_SIZE, PAGE_SIZE)
            model[i] = bytes(PAGE_SIZE)
    real = store._handles

    class RacingTable:
        """The handle table; right after the scan, I/O changes pages."""

        def __iter__(self):
            yield from real
            for i in range(1, pages, 2):
                if i % 3:
                    model[i] = page_of(i + 10 ** 6, 2)
                    store.write(model[i], i * PAGE_SIZE)
                else:
                    store.discard(i * PAGE_SIZE, PAGE_SIZE)
                    model[i] = bytes(PAGE_SIZE)

        def __getitem__(self, i):
            return real[i]

        def __setitem__(self, i, h):
            real[i] = h

    with store._compact_lock:
        result = store._arena.compact(RacingTable(), store._lock)
    with store._lock:
        store._update_mem_locked()
    assert result["moved"] > 0
    store.audit()
    for i in range(pages):
        assert read_page(store, i) == model[i], f"page {i}"


def test_automatic_compaction_runs_once_fragmentation_passes_the_trigger():
    """The store wakes the compaction thread when free spots pass the
    trigger; it compacts, then waits for as much again to be freed."""
    from zramd.engine.compaction import AutoCompactor

    pages = 4096
    store = PageStore(pages * PAGE_SIZE, make_codec("lz4"))
    auto = AutoCompactor(store, min_bytes=256 * 1024, ratio=0.1, check_frees=256)
    auto.start()
    try:
        model = {}
        for i in range(pages):
            model[i] = page_of(i, 1 + i % 4)
            store.write(model[i], i * PAGE_SIZE)
        assert auto.runs == 0  # filling frees nothing
        for i in random.Random(5).sample(range(pages), pages // 2):  # every class
            store.discard(i * PAGE_SIZE, PAGE_SIZE)
            model[i] = bytes(PAGE_SIZE)
        deadline = threading.Event()
        for _ in range(600):  # a bound for a loaded machine, not a timing claim
            if auto.runs and not auto._event.is_set():
                break
            deadline.wait(0.05)
        assert auto.runs >= 1 and auto.pages_freed > 0
        with store._compact_lock:  # the run has finished
            pass
        assert store.stats()["pages_compacted"] == auto.pages_freed
        store.audit()
        assert store._compact_check_epoch > store._arena.epoch  # armed again
    finally:
        auto.stop()
    for i in range(pages):
        assert read_page(store, i) == model[i]


def test_a_rewrite_at_mem_limit_reuses_the_spots_it_frees():
    """A multi-page request may use the spots its own earlier pages free
    (each page's new copy is made before its old one goes, as in zram):
    rewriting two full blocks needs one block of room, not two, and the
    emptied block is released at the end of the request."""
    from zramd.engine.arena import BLOCK_META_BYTES

    store = PageStore(128 * PAGE_SIZE, make_codec("none"))
    store.write(os.urandom(64 * PAGE_SIZE), 0)  # 8 full blocks of huge pages
    s = store.stats()
    one_block = 8 * PAGE_SIZE + BLOCK_META_BYTES
    store.set_mem_limit(s["mem_used_total"] + one_block)
    data = os.urandom(16 * PAGE_SIZE)
    store.write(data, 8 * PAGE_SIZE)  # rewrites pages 8..23
    after = store.stats()
    assert after["arena_blocks"] == s["arena_blocks"] and after["failed_writes"] == 0
    assert after["mem_used_max"] == s["mem_used_total"] + one_block
    with pytest.raises(OSError):  # 9 new pages need two more blocks
        store.write(os.urandom(9 * PAGE_SIZE), 64 * PAGE_SIZE)
    assert store.stats()["orig_data_size"] == 64 * PAGE_SIZE
    buf = bytearray(16 * PAGE_SIZE)
    store.read(memoryview(buf), 8 * PAGE_SIZE)
    assert bytes(buf) == data
    store.audit()


def vm_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_trimmed_slots_give_their_table_pages_back():
    """The per-page tables (13 bytes a page) are touched only where pages
    are stored, and trims give back the table pages they leave empty."""
    pages = 1 << 19  # a 2 GiB device: 6.5 MiB of tables
    table_bytes = pages * 13
    before = vm_rss_bytes()
    store = PageStore(pages * PAGE_SIZE, make_codec("lz4"))
    assert vm_rss_bytes() - before < table_bytes // 4  # nothing stored: little resident
    same = b"\x11" * PAGE_SIZE  # a same-filled page: table entries, no block
    for i in range(0, pages, 8):
        store.write(same, i * PAGE_SIZE)
    full = vm_rss_bytes()
    assert full - before > table_bytes * 0.9
    store.discard(0, pages * PAGE_SIZE // 2)  # in one request
    for off in range(pages * PAGE_SIZE // 2, pages * PAGE_SIZE, 1 << 20):
        store.discard(off, 1 << 20)  # in 1 MiB requests (256 slots each)
    # 0.8: the rest of the process may grow a little meanwhile (a full run
    # of the unit layer shares the process)
    assert full - vm_rss_bytes() > table_bytes * 0.8
    store.write(same, 100 * PAGE_SIZE)
    assert read_page(store, 100) == same and read_page(store, 108) == bytes(PAGE_SIZE)
    store.audit()


def test_meta_bytes_is_what_the_bookkeeping_really_costs():
    """mem_used_total counts ``Arena.meta_bytes`` for the blocks' Python side
    (BLOCK_META_BYTES a block, SPARE_ID_BYTES a spare id).  tracemalloc sees
    every Python allocation (not the mmap'd pages): it must find no more than
    that, and not much less, when the arena is filled, after random frees
    (blocks on partial lists) and after compaction (spare ids)."""
    import tracemalloc

    from zramd.engine.arena import SPARE_ID_BYTES

    rng = random.Random(7)
    sizes = [3300, 3400, 2100, 2000, 1200, 500, 100, 40, PAGE_SIZE]
    n = 30000
    table = array.array("Q", bytes(8 * n))  # made before tracing starts
    datas = {s: payload(s, s) for s in sizes}
    order = list(range(n))
    rng.shuffle(order)
    arena = fresh_arena()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]

        def check(state):
            traced = tracemalloc.get_traced_memory()[0] - base
            want = arena.nr_blocks * BLOCK_META_BYTES + len(arena._spare_ids) * SPARE_ID_BYTES
            assert arena.meta_bytes == want, state
            assert traced <= arena.meta_bytes, (state, traced, arena.meta_bytes)
            assert traced >= 0.85 * arena.meta_bytes - 4096, (state, traced, arena.meta_bytes)

        with arena.lock:
            for i in range(n):
                table[i] = arena.alloc(datas[sizes[i % len(sizes)]])
        check("filled")
        with arena.lock:
            for i in order[: n // 2]:
                arena.free_obj(table[i])
                table[i] = 0
        assert sum(1 for c in arena.classes if c.phead >= 0) > 0
        check("half freed")
        arena.compact(table)
        assert arena._spare_ids
        check("compacted")
        with arena.lock:
            for i in order[n // 2 :]:
                arena.free_obj(table[i])
                table[i] = 0
        arena.compact(table)
        assert arena.nr_blocks == arena.meta_bytes == 0
        assert tracemalloc.get_traced_memory()[0] - base < 4096
    finally:
        tracemalloc.stop()

"""The page store without nbdkit: entry transitions with exact stat deltas,
sub-page I/O, discard, mem_limit, extents and concurrent read-modify-write."""

import errno
import os
import random

import pytest

from helpers import run_threads
from zramd.engine.codecs import make_codec
from zramd.engine.arena import BLOCK_META_BYTES, BLOCK_SHIFT, SPARE_ID_BYTES, OFF_MASK, OFF_SHIFT
from zramd.engine.store import (EXTENT_DATA, EXTENT_HOLE, EXTENT_ZERO, HUGE_THRESHOLD,
                         PageStore, StoreError, same_filled_word)
from zramd.units import PAGE_SIZE

TEXT = (b"zram keeps pages compressed in memory; " * 200)[:PAGE_SIZE]


def make_store(pages=64, algorithm="lz4", mem_limit=0):
    return PageStore(pages * PAGE_SIZE, make_codec(algorithm), mem_limit)


def read(store, offset, length):
    buf = bytearray(length)
    store.read(memoryview(buf), offset)
    return bytes(buf)


MEMORY = {"mem_used_total", "mem_used_max", "slot_meta_bytes", "arena_blocks",
          "arena_block_bytes", "arena_free_bytes", "arena_meta_bytes", "compactable_bytes"}


def delta(before, after):
    """Changed counters, leaving out the memory figures (checked by audit)."""
    return {k: after[k] - before[k] for k in before if isinstance(before[k], int)
            and after[k] != before[k] and k not in MEMORY}


def test_same_filled_word():
    assert same_filled_word(bytes(PAGE_SIZE)) == 0
    assert same_filled_word(b"\x01\x02\x03\x04\x05\x06\x07\x08" * 512) == 0x0807060504030201
    assert same_filled_word(b"\x01" * (PAGE_SIZE - 1) + b"\x02") is None
    page = bytearray(b"\xaa" * PAGE_SIZE)
    page[2000] = 0
    assert same_filled_word(page) is None


def test_unwritten_pages_read_as_zeros():
    store = make_store()
    assert read(store, 0, 3 * PAGE_SIZE + 17) == bytes(3 * PAGE_SIZE + 17)


@pytest.mark.parametrize("algorithm", ["lz4", "zstd", "none"])
def test_page_kinds_and_exact_stats(algorithm):
    store = make_store(algorithm=algorithm)
    s0 = store.stats()

    store.write(memoryview(bytes(PAGE_SIZE)), 0)                      # same (zero)
    s1 = store.stats()
    assert delta(s0, s1) == {"orig_data_size": PAGE_SIZE, "same_pages": 1, "num_writes": 1}

    store.write(b"\x5a" * PAGE_SIZE, PAGE_SIZE)                        # same (0x5a..)
    s2 = store.stats()
    assert delta(s1, s2) == {"orig_data_size": PAGE_SIZE, "same_pages": 1, "num_writes": 1}

    rnd = os.urandom(PAGE_SIZE)
    store.write(rnd, 2 * PAGE_SIZE)                                    # huge
    s3 = store.stats()
    assert delta(s2, s3) == {"orig_data_size": PAGE_SIZE, "compr_data_size": PAGE_SIZE,
                             "huge_pages": 1, "huge_pages_since": 1, "num_writes": 1}
    # a huge page opens a block of the huge class: 8 pages
    assert s3["arena_block_bytes"] - s2["arena_block_bytes"] == 8 * PAGE_SIZE
    assert s3["mem_used_total"] == store.audit()["mem_used_total"] == s3["mem_used_max"]

    store.write(TEXT, 3 * PAGE_SIZE)                                   # compressed (or huge)
    s4 = store.stats()
    if algorithm == "none":
        assert delta(s3, s4)["huge_pages"] == 1
    else:
        comp = s4["compr_data_size"] - s3["compr_data_size"]
        assert 0 < comp < HUGE_THRESHOLD
        assert delta(s3, s4) == {"orig_data_size": PAGE_SIZE, "compr_data_size": comp,
                                 "num_writes": 1}
        assert s4["mem_used_total"] - s3["mem_used_total"] >= comp

    # overwrite the huge page with zeros: its memory is freed, the peak stays
    store.write(bytes(PAGE_SIZE), 2 * PAGE_SIZE)
    s5 = store.stats()
    assert delta(s4, s5) == {"compr_data_size": -PAGE_SIZE,
                             "same_pages": 1, "huge_pages": -1, "num_writes": 1}
    # the emptied huge block stays as the class's current block until compaction
    assert s5["mem_used_total"] == store.audit()["mem_used_total"]
    assert s5["mem_used_max"] == s4["mem_used_max"]
    freed = store.compact()
    if algorithm != "none":  # (with none, TEXT is a huge page in that block)
        assert freed["pages_freed"] == 8 and store.stats()["pages_compacted"] == 8
        # the block's id stays for reuse (its table slots still cost)
        assert store.stats()["mem_used_total"] == \
            s5["mem_used_total"] - 8 * PAGE_SIZE - BLOCK_META_BYTES + SPARE_ID_BYTES
    assert read(store, 0, 4 * PAGE_SIZE) == (bytes(PAGE_SIZE) + b"\x5a" * PAGE_SIZE
                                             + bytes(PAGE_SIZE) + TEXT)


@pytest.mark.parametrize("offset,length", [
    (0, 1), (1, 1), (4095, 2), (100, 4096), (4096 - 7, 3 * 4096 + 14), (3 * 4096, 4096),
    (5, 10 * 4096), (0, 64 * 4096), (64 * 4096 - 3, 3),
])
def test_sub_page_and_unaligned_round_trips(offset, length):
    store = make_store()
    model = bytearray(64 * PAGE_SIZE)
    background = (TEXT * 64)[:len(model)]
    store.write(background, 0)
    model[:] = background
    data = os.urandom(length // 2) + b"x" * (length - length // 2)
    store.write(memoryview(data), offset)
    model[offset:offset + length] = data
    assert read(store, 0, len(model)) == model
    assert read(store, offset, length) == data


def test_discard_frees_whole_pages_and_zeroes_edges():
    store = make_store()
    store.write(TEXT * 8, 0)
    before = store.stats()
    store.discard(100, 5 * PAGE_SIZE)  # pages 1..4 whole, edges in pages 0 and 5
    after = store.stats()
    assert after["orig_data_size"] == before["orig_data_size"] - 4 * PAGE_SIZE
    assert after["notify_free"] == before["notify_free"] + 4
    assert after["mem_used_total"] < before["mem_used_total"]
    expected = bytearray(TEXT * 8)
    expected[100:100 + 5 * PAGE_SIZE] = bytes(5 * PAGE_SIZE)
    assert read(store, 0, 8 * PAGE_SIZE) == expected
    store.discard(0, 64 * PAGE_SIZE)
    s = store.stats()
    assert (s["orig_data_size"], s["compr_data_size"]) == (0, 0)
    store.compact()  # gives back the classes' emptied current blocks
    assert store.stats()["mem_used_total"] == 0


def test_discard_inside_one_page():
    store = make_store()
    store.write(b"\xff" * PAGE_SIZE, 0)
    store.discard(10, 20)
    assert read(store, 0, 40) == b"\xff" * 10 + bytes(20) + b"\xff" * 10
    assert store.stats()["notify_free"] == 0


def test_mem_limit_fails_whole_request_and_keeps_data():
    # room for one block of huge pages (8 pages) and one of 5 pages (the
    # class of a 65-byte object), not for a second block of huge pages
    limit = 14 * PAGE_SIZE
    store = make_store(mem_limit=limit)
    first = [os.urandom(PAGE_SIZE) for _ in range(8)]
    for i, page in enumerate(first):
        store.write(page, i * PAGE_SIZE)
    before = store.stats()
    with pytest.raises(StoreError) as info:
        store.write(os.urandom(PAGE_SIZE), 3 * PAGE_SIZE)
    assert info.value.errno == errno.ENOSPC
    # a multi-page request that would overflow changes nothing at all
    with pytest.raises(StoreError):
        store.write(os.urandom(3 * PAGE_SIZE), 7 * PAGE_SIZE)
    after = store.stats()
    assert delta(before, after) == {"failed_writes": 2}
    # same pages and compressible rewrites still fit; shrinking is always allowed
    assert read(store, 0, 8 * PAGE_SIZE) == b"".join(first)
    store.write(bytes(PAGE_SIZE), 10 * PAGE_SIZE)
    store.write(TEXT * 2, 0)
    store.write(os.urandom(PAGE_SIZE), 9 * PAGE_SIZE)  # fits now that pages 0-1 shrank
    assert store.stats()["mem_used_total"] <= limit
    store.audit()


def test_mem_limit_knob_and_peak_reset():
    store = make_store()
    store.write(os.urandom(2 * PAGE_SIZE), 0)
    store.discard(0, 2 * PAGE_SIZE)
    store.compact()
    s = store.stats()
    assert s["mem_used_max"] >= 8 * PAGE_SIZE > s["mem_used_total"] == 0
    store.reset_mem_used_max()
    assert store.stats()["mem_used_max"] == s["mem_used_total"]
    store.set_mem_limit(PAGE_SIZE)
    with pytest.raises(StoreError):  # needs a block of 8 pages
        store.write(os.urandom(PAGE_SIZE), 5 * PAGE_SIZE)
    with pytest.raises(ValueError):
        store.set_mem_limit(-1)


def test_out_of_range_is_invalid_io():
    store = make_store(pages=4)
    with pytest.raises(StoreError) as info:
        store.write(b"x", 4 * PAGE_SIZE)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(StoreError):
        read(store, 4 * PAGE_SIZE - 1, 2)
    assert store.stats()["invalid_io"] == 2


def test_corrupt_entry_fails_read_with_eio():
    store = make_store()
    store.write(TEXT, 0)
    h = store._handles[0]
    off = (h >> OFF_SHIFT) & OFF_MASK
    store._arena.maps[h >> BLOCK_SHIFT][off:off + 8] = b"\xff" * 8  # not valid lz4
    with pytest.raises(StoreError) as info:
        read(store, 0, PAGE_SIZE)
    assert info.value.errno == errno.EIO
    assert store.stats()["failed_reads"] == 1


def test_extents():
    store = make_store(pages=16)
    store.write(TEXT, 2 * PAGE_SIZE)
    store.write(TEXT, 3 * PAGE_SIZE)
    store.write(bytes(PAGE_SIZE), 5 * PAGE_SIZE)
    assert store.extents(0, 16 * PAGE_SIZE) == [
        (0, 2 * PAGE_SIZE, EXTENT_HOLE | EXTENT_ZERO),
        (2 * PAGE_SIZE, 2 * PAGE_SIZE, EXTENT_DATA),
        (4 * PAGE_SIZE, PAGE_SIZE, EXTENT_HOLE | EXTENT_ZERO),
        (5 * PAGE_SIZE, PAGE_SIZE, EXTENT_ZERO),
        (6 * PAGE_SIZE, 10 * PAGE_SIZE, EXTENT_HOLE | EXTENT_ZERO),
    ]
    assert store.extents(2 * PAGE_SIZE + 5, 10, req_one=True) == [
        (2 * PAGE_SIZE, PAGE_SIZE, EXTENT_DATA)]
    assert store.extents(PAGE_SIZE, PAGE_SIZE * 3, req_one=True) == [
        (PAGE_SIZE, PAGE_SIZE, EXTENT_HOLE | EXTENT_ZERO)]


def test_concurrent_partial_writes_never_lose_an_update():
    """Threads own disjoint byte ranges of the same few pages and write them
    (read-modify-write) concurrently: every thread's last write survives."""
    store = make_store(pages=4)
    nthreads, rounds = 6, 300
    span = PAGE_SIZE // 8
    last = {}

    def worker(t):
        rng = random.Random(t)
        for r in range(rounds):
            page = rng.randrange(4)
            fill = bytes([(t * 31 + r) % 251 + 1]) * span
            # ranges straddle page boundaries too (t*span+page*4096 - span//2)
            offset = page * PAGE_SIZE + t * span
            store.write(fill, offset)
            last[(t, page)] = fill

    run_threads(worker, range(nthreads))
    for (t, page), fill in last.items():
        offset = page * PAGE_SIZE + t * span
        assert read(store, offset, span) == fill
    s = store.stats()
    assert s["num_writes"] == nthreads * rounds
    assert s["orig_data_size"] == 4 * PAGE_SIZE


def test_stats_stay_exact_under_concurrency():
    store = make_store(pages=32)
    rng = random.Random(1)
    payloads = [os.urandom(PAGE_SIZE), TEXT, bytes(PAGE_SIZE), b"\x11" * PAGE_SIZE]

    def worker(seed):
        r = random.Random(seed)
        for _ in range(500):
            op = r.random()
            index = r.randrange(32)
            if op < 0.7:
                store.write(payloads[r.randrange(4)], index * PAGE_SIZE)
            else:
                store.discard(index * PAGE_SIZE, PAGE_SIZE * r.randrange(1, 3) if index < 31 else PAGE_SIZE)

    run_threads(worker, [rng.random() for _ in range(4)])
    # recompute every counter from the slot table
    s = store.stats()
    a = store.audit()  # raises on any difference
    kinds = [store.block_state(i) for i in range(32)]
    assert s["orig_data_size"] == sum(k != "empty" for k in kinds) * PAGE_SIZE
    assert s["same_pages"] == kinds.count("same") == a["same_pages"]
    assert s["huge_pages"] == kinds.count("huge") == a["huge_pages"]


def test_a_multi_page_read_never_returns_a_spot_reused_under_it():
    """A write that frees and reuses an object's spot while a multi-page
    read is under way (here: from inside the read's first decompression)
    leaves the read's remaining handles stale; the read must notice
    (the arena's epoch) and return every page as it is now, never the
    data another page put in the reused spot."""
    from zramd.engine.codecs import Lz4Codec

    def page(tag):
        return (tag * (PAGE_SIZE // len(tag) + 1))[:PAGE_SIZE]

    class Meddling(Lz4Codec):
        armed = False

        def decompress(self, data):
            out = super().decompress(data)
            if self.armed:
                self.armed = False
                store.write(page(b"p03-v2;"), 3 * PAGE_SIZE)  # frees its old spot
                store.write(page(b"p09-v2;"), 9 * PAGE_SIZE)  # reuses it (same size class and length)
            return out

    codec = Meddling()
    store = PageStore(16 * PAGE_SIZE, codec, 0)
    for i in range(8):
        store.write(page(b"p%02d-v1;" % i), i * PAGE_SIZE)
    store.write(page(b"p09-v1;"), 9 * PAGE_SIZE)
    codec.armed = True
    got = read(store, 0, 8 * PAGE_SIZE)
    assert not codec.armed  # the write ran inside the read
    for i in range(8):
        want = page(b"p03-v2;") if i == 3 else page(b"p%02d-v1;" % i)
        assert got[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] == want, i

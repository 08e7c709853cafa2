"""The page store against a model: a bytearray of the same size.

Hypothesis drives random sequences of writes (whole pages, sub-page and
unaligned, same-filled, compressible and incompressible data; aligned
requests of several pages, as a swapping kernel sends), trims and reads
through the public API, with each codec, with checksums and under a tight
mem_limit (a refused write must change nothing), with the cold-page
sweeper recompressing all the time, and checks after every step that the store
reads back exactly what the bytearray holds and that zram's counters match
the pages the model says are stored.  Only the public API is used, so the
test holds for any slot-table layout.
"""

from __future__ import annotations

import os
import threading

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from zramd.engine import heap
from zramd.engine.arena import BLOCK_META_BYTES, SPARE_ID_BYTES
from zramd.engine.checksums import make_checksum
from zramd.engine.codecs import make_codec, make_codecs
from zramd.engine.cold import ColdSweeper
from zramd.engine.store import PageStore, StoreError
from zramd.units import PAGE_SIZE

PAGES = 8
SIZE_BYTES = PAGES * PAGE_SIZE
TEXT = (b"the quick brown zram page compresses well " * 100)[:PAGE_SIZE]
RANDOM = os.urandom(PAGE_SIZE)

offsets = st.integers(0, SIZE_BYTES - 1)
page_offsets = st.integers(0, PAGES - 1).map(lambda i: i * PAGE_SIZE)


@st.composite
def payloads(draw, max_bytes: int) -> bytes:
    """Data shaped like real pages: zeros, one repeated word, text, noise."""
    length = draw(st.integers(1, max_bytes))
    shape = draw(st.sampled_from(["zero", "word", "text", "random", "bytes"]))
    if shape == "zero":
        return bytes(length)
    if shape == "word":
        word = draw(st.binary(min_size=8, max_size=8))
        return (word * (length // 8 + 1))[:length]
    if shape == "text":
        start = draw(st.integers(0, PAGE_SIZE - 1))
        return ((TEXT[start:] + TEXT) * (length // PAGE_SIZE + 1))[:length]
    if shape == "random":
        start = draw(st.integers(0, PAGE_SIZE - 1))
        return ((RANDOM[start:] + RANDOM) * (length // PAGE_SIZE + 1))[:length]
    return draw(st.binary(min_size=length, max_size=length))


@pytest.fixture(autouse=True)
def no_heap_trim(monkeypatch):
    """``compact`` ends with a full garbage collection and malloc_trim
    (zramd/engine/heap.py, tested on its own in test_heap.py); in a process full of
    hypothesis's objects that costs tens of milliseconds per call and would
    make this model test the slowest of the unit layer."""
    monkeypatch.setattr(heap, "trim", lambda: True)


class StoreModel(RuleBasedStateMachine):
    CODEC = "lz4"
    CHECKSUM: str | None = None
    MEM_LIMIT_BYTES = 0

    def __init__(self):
        super().__init__()
        self.store = PageStore(
            SIZE_BYTES,
            make_codec(self.CODEC),
            mem_limit_bytes=self.MEM_LIMIT_BYTES,
            checksum=make_checksum(self.CHECKSUM),
        )
        self.model = bytearray(SIZE_BYTES)
        # pages the store counts as stored: True, False, or None for "may
        # be": a never-written page whose edge a trim zeroed may be kept as
        # a zero page (it reads as zeros either way)
        self.stored: list[bool | None] = [False] * PAGES

    @rule(offset=offsets, data=st.data())
    def write(self, offset, data):
        self._write(data.draw(payloads(SIZE_BYTES - offset)), offset)

    @rule(offset=page_offsets, data=st.data())
    def write_pages(self, offset, data):
        pages = data.draw(st.integers(1, (SIZE_BYTES - offset) // PAGE_SIZE))
        payload = b"".join(data.draw(payloads(PAGE_SIZE)).ljust(PAGE_SIZE, b"\1") for _ in range(pages))
        self._write(payload, offset)

    def _write(self, payload, offset):
        # a trim may pass the limit (it is never refused); a write may not
        self.store.reset_mem_used_max()
        within = self.store.stats()["mem_used_max"] <= self.MEM_LIMIT_BYTES
        try:
            self.store.write(payload, offset)
        except StoreError as e:
            assert self.MEM_LIMIT_BYTES and "mem_limit" in str(e), e
            return  # refused whole: the model keeps what it had
        if self.MEM_LIMIT_BYTES and within:
            # the check counts the blocks a write maps, not their bookkeeping
            # (per block and per stored page), as zram counts zsmalloc's pages
            slack = self.MEM_LIMIT_BYTES // PAGE_SIZE * BLOCK_META_BYTES + PAGES * 21
            assert self.store.stats()["mem_used_max"] <= self.MEM_LIMIT_BYTES + slack
        self.model[offset:offset + len(payload)] = payload
        for index in range(offset // PAGE_SIZE, (offset + len(payload) - 1) // PAGE_SIZE + 1):
            self.stored[index] = True

    @rule(offset=offsets, data=st.data())
    def discard(self, offset, data):
        length = data.draw(st.integers(1, SIZE_BYTES - offset))
        self.store.discard(offset, length)
        end = offset + length
        self.model[offset:end] = bytes(length)
        # whole pages inside the range are freed; partial edges are zeroed
        first, last = -(-offset // PAGE_SIZE), end // PAGE_SIZE
        for index in range(first, last):
            self.stored[index] = False
        for index in {offset // PAGE_SIZE, (end - 1) // PAGE_SIZE} - set(range(first, last)):
            if not self.stored[index]:
                self.stored[index] = None

    @rule(offset=offsets, data=st.data())
    def read(self, offset, data):
        length = data.draw(st.integers(1, SIZE_BYTES - offset))
        buf = bytearray(length)
        self.store.read(memoryview(buf), offset)
        assert bytes(buf) == bytes(self.model[offset:offset + length])

    @rule(offset=page_offsets, data=st.data())
    def read_pages(self, offset, data):
        length = data.draw(st.integers(1, (SIZE_BYTES - offset) // PAGE_SIZE)) * PAGE_SIZE
        buf = bytearray(length)
        self.store.read(buf, offset)
        assert buf == self.model[offset:offset + length]

    @rule()
    def compact(self):
        before = self.store.stats()["mem_used_total"]
        arena = self.store._arena
        spare_before = len(arena._spare_ids)
        result = self.store.compact()
        # each freed block leaves its id spare, unless the arena emptied and
        # dropped its tables (then no spare ids are left at all)
        spare_ids = len(arena._spare_ids) - spare_before
        assert spare_ids == result["blocks_freed"] or arena.nr_blocks == 0
        assert result["mem_used_total"] == before - result["pages_freed"] * PAGE_SIZE \
            - result["blocks_freed"] * BLOCK_META_BYTES + spare_ids * SPARE_ID_BYTES

    @invariant()
    def audit_recomputes_every_counter(self):
        self.store.audit()  # the arena's blocks and the handle table agree

    @invariant()
    def whole_device_reads_back(self):
        buf = bytearray(SIZE_BYTES)
        self.store.read(memoryview(buf), 0)
        assert buf == self.model

    @invariant()
    def counters_match_the_model(self):
        s = self.store.stats()
        surely = sum(1 for x in self.stored if x)
        maybe = sum(1 for x in self.stored if x is None)
        assert surely * PAGE_SIZE <= s["orig_data_size"] <= (surely + maybe) * PAGE_SIZE
        assert s["orig_data_size"] % PAGE_SIZE == 0
        assert 0 <= s["compr_data_size"] <= s["orig_data_size"]
        assert s["same_pages"] + s["huge_pages"] <= s["orig_data_size"] // PAGE_SIZE


class ZstdModel(StoreModel):
    CODEC = "zstd"


class NoneModel(StoreModel):
    CODEC = "none"


class ChecksumModel(StoreModel):
    CHECKSUM = "xxh3"


class LimitedModel(StoreModel):
    # Room for a few blocks only: writes near the limit take the exact
    # plan, far from it the allocate-first path, and some are refused.
    MEM_LIMIT_BYTES = 96 * 1024


for model in (StoreModel, ZstdModel, NoneModel, ChecksumModel, LimitedModel):
    model.TestCase.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)
test_store_matches_a_bytearray = StoreModel.TestCase
test_zstd_store_matches_a_bytearray = ZstdModel.TestCase
test_uncompressed_store_matches_a_bytearray = NoneModel.TestCase
test_checksummed_store_matches_a_bytearray = ChecksumModel.TestCase
test_limited_store_matches_a_bytearray = LimitedModel.TestCase


class SweptModel(StoreModel):
    """The store with the cold-page sweeper (zramd/engine/cold.py) running
    all the time at cold age 0, two secondary codecs: every step races a
    recompression, and a sweep also runs between steps."""

    def __init__(self):
        super().__init__()
        self.store = PageStore(
            SIZE_BYTES,
            make_codec(self.CODEC),
            recomp_codec=make_codecs("zstd:1,zstd:19"),
        )
        self.sweeper = ColdSweeper(self.store, recompress_after_s=0.0001)
        self.running = True
        self.thread = threading.Thread(target=self._sweep_forever, daemon=True)
        self.thread.start()

    def _sweep_forever(self):
        while self.running:
            self.sweeper.sweep(0.0)

    @rule()
    def sweep(self):
        self.sweeper.sweep(0.0)

    @rule()
    def compact(self):
        # the sweeper allocates and frees meanwhile: no exact block count here
        # (audit, after every step, still recomputes everything)
        self.store.compact()

    def teardown(self):
        self.running = False
        self.thread.join()
        assert self.sweeper.last_error is None


for model in (StoreModel, ZstdModel, NoneModel, ChecksumModel, LimitedModel, SweptModel):
    model.TestCase.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)
test_swept_store_matches_a_bytearray = SweptModel.TestCase

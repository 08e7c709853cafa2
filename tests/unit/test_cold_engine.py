"""Cold pages (zramd/engine/cold.py, scan.recompress): several secondary
codecs in priority order, the size-class rule, the last failure marking a
page incompressible, a rewrite racing its recompression, promotions, and
the controller on a synthetic clock (no sleeping)."""

from __future__ import annotations

import os
import random
import threading
import time

import pytest

from zramd.engine import cold, scan
from zramd.engine.arena import CLASS_TABLE
from zramd.engine.codecs import Codec, make_codec, make_codecs
from zramd.engine.cold import ColdController, ColdSweeper
from zramd.engine.slots import INCOMPRESSIBLE
from zramd.engine.store import PageStore
from zramd.units import PAGE_SIZE

PAGES = 64
WORDS = b"cold pages flow to disk on their own while hot ones stay in memory".split()


def word_page(i: int) -> bytes:
    """zstd -19 halves lz4's output: a smaller size class for sure."""
    rng = random.Random(i)
    return b" ".join(rng.choice(WORDS) for _ in range(1200))[:PAGE_SIZE]


# lz4 74 bytes, zstd 65 (+1): both in the 80-byte class
SAME_CLASS_PAGE = (b"%06d " % 7) * 50 + (b"cold pages flow to disk on their own. " * 120)[:3746]


def make_store(recomp: str, pages=PAGES) -> PageStore:
    return PageStore(pages * PAGE_SIZE, make_codec("lz4"), recomp_codec=make_codecs(recomp))


def read(store, index: int) -> bytes:
    buf = bytearray(PAGE_SIZE)
    store.read(buf, index * PAGE_SIZE)
    return bytes(buf)


def pairs(store, indices):
    handles = store.slot_tables()[0]
    return [(i, handles[i]) for i in indices]


# -- codec lists -----------------------------------------------------------
def test_codec_lists_parse_in_order():
    codecs = make_codecs("zstd:3, lz4,zstd:19")
    assert [c.describe() for c in codecs] == ["zstd:3", "lz4", "zstd:19"]
    assert [c.describe() for c in make_codecs("zstd,zstd:19", 9)] == ["zstd:9", "zstd:19"]


@pytest.mark.parametrize("spec,level,why", [
    ("zstd,zstd,zstd,zstd", None, "1..3 algorithms"),
    ("zstd,", None, "1..3 algorithms"),
    ("brotli", None, "unknown compression algorithm"),
    ("zstd:x", None, "must be a whole number"),
    ("zstd:99", None, "zstd level must be"),
    ("lz4", 3, "applies only to zstd"),
])
def test_bad_codec_lists_say_why(spec, level, why):
    with pytest.raises(ValueError, match=why):
        make_codecs(spec, level)


# -- the size-class rule ------------------------------------------------------
def test_class_bytes_is_the_arena_class():
    sizes = [c.size for c in CLASS_TABLE]
    for n in range(1, PAGE_SIZE + 1):
        want = min(s for s in sizes if s >= n)
        assert scan.class_bytes(n) == want


def test_a_saving_inside_one_class_is_not_a_recompression():
    store = make_store("zstd:19")
    store.write(SAME_CLASS_PAGE, 0)
    h = store.slot_tables()[0][0]
    length = (h >> 3) & 0x1FFF
    out = make_codec("zstd", 19).compress(SAME_CLASS_PAGE, PAGE_SIZE)
    assert len(out) < length and scan.class_bytes(len(out) + 1) == scan.class_bytes(length)
    done = scan.recompress(store, batch=pairs(store, [0]))
    assert done["recompressed"] == 0 and done["incompressible"] == 1
    assert store.block_state(0) == "compressed"
    assert store.slot_tables()[1][0] & INCOMPRESSIBLE
    assert read(store, 0) == SAME_CLASS_PAGE


# -- several codecs ----------------------------------------------------------
def test_codecs_are_tried_in_priority_order():
    # lz4 again gives lz4's size (+1): no smaller class, so zstd:19 (priority 1) wins
    store = make_store("lz4,zstd:19,zstd:1")
    store.write(word_page(1), 0)
    done = scan.recompress(store, batch=pairs(store, [0]))
    assert done["recompressed"] == 1
    assert store.block_state(0) == "recompressed"
    assert store.entry(0)[1][0] == 1  # byte 0: the codec's index
    assert read(store, 0) == word_page(1)
    # the first one that pays wins, even if a later one would do better
    store = make_store("zstd:1,zstd:19")
    store.write(word_page(1), 0)
    scan.recompress(store, batch=pairs(store, [0]))
    assert store.entry(0)[1][0] == 0
    assert read(store, 0) == word_page(1)
    store.audit()


def test_the_last_failure_marks_the_page_incompressible():
    store = make_store("zstd:1,zstd:19")
    noise = os.urandom(PAGE_SIZE)
    store.write(noise, 0)
    done = scan.recompress(store, batch=pairs(store, [0]))
    assert done == {"recompressed": 0, "incompressible": 1, "skipped": 0, "saved_bytes": 0}
    assert store.slot_tables()[1][0] & INCOMPRESSIBLE
    assert scan.aged(store, 0) == []  # later sweeps skip it
    store.write(word_page(2), 0)  # a rewrite clears the mark
    assert [i for i, _ in scan.aged(store, 0)] == [0]


# -- the sweep ---------------------------------------------------------------
def age_all(store, seconds: float) -> None:
    """Pretend every page was last accessed ``seconds`` ago."""
    atime = store.slot_tables()[2]
    for i in range(store.nr_pages):
        atime[i] = max(0, store.now() - int(seconds * 10))


def test_a_sweep_recompresses_cold_pages_only():
    store = make_store("zstd:19")
    store._t0_ds -= 36000  # the store's clock reads one hour
    for i in range(PAGES):
        store.write(word_page(i), i * PAGE_SIZE)
    age_all(store, 600)
    for i in range(0, PAGES, 2):  # half are read again: young
        read(store, i)
    sweeper = ColdSweeper(store, recompress_after_s=300)
    assert sweeper.sweep(300) == PAGES // 2
    states = [store.block_state(i) for i in range(PAGES)]
    assert states == ["compressed", "recompressed"] * (PAGES // 2)
    assert sweeper.stats()["cold_recompressed_bytes"] == store.stats()["compr_data_size"] - sum(
        (store.slot_tables()[0][i] >> 3) & 0x1FFF for i in range(0, PAGES, 2)
    )
    store.audit()


def test_reads_promote_rewrites_do_not_and_a_rewrite_is_primary_again():
    store = make_store("zstd:19")
    for i in range(4):
        store.write(word_page(i), i * PAGE_SIZE)
    scan.recompress(store, batch=pairs(store, range(4)))
    assert store.stats()["recompressed_pages"] == 4
    assert read(store, 0) == word_page(0)
    assert read(store, 0) == word_page(0)  # a read does not undo the recompression
    assert store.block_state(0) == "recompressed"
    # a promotion is the first read since the page went cold: the page is
    # warm again, and more reads of it are not promotions
    assert store.stats()["promoted_recompressed"] == 1
    assert read(store, 3) == word_page(3)
    assert store.stats()["promoted_recompressed"] == 2
    assert not scan.aged(store, 1.0)  # read just now: not cold
    store.now = lambda: PageStore.now(store) + 20  # two seconds later
    assert scan.aged(store, 1.0) == []  # nothing more to recompress, but page 0 cools
    assert read(store, 0) == word_page(0)  # cold again: this read counts
    assert store.stats()["promoted_recompressed"] == 3
    store.write(word_page(9), 1 * PAGE_SIZE)  # a full rewrite
    store.write(b"x" * 100, 2 * PAGE_SIZE + 10)  # a partial one (reads the old page)
    s = store.stats()
    assert s["promoted_recompressed"] == 3 and s["promoted_backed"] == 0
    assert store.block_state(1) == store.block_state(2) == "compressed"
    assert read(store, 1) == word_page(9)
    store.audit()


class RewritingCodec(Codec):
    """zstd that rewrites the page it compresses, once, in the middle: the
    race of a client write against a recompression, made certain."""

    name = "zstd"

    def __init__(self, store, index, data):
        self.inner = make_codec("zstd", 19)
        self.store, self.index, self.data = store, index, data

    def compress(self, page, max_len):
        out = self.inner.compress(page, max_len)
        if self.data is not None:
            self.store.write(self.data, self.index * PAGE_SIZE)
            self.data = None
        return out

    def decompress(self, data):
        return self.inner.decompress(data)


def test_a_page_rewritten_during_its_recompression_keeps_the_new_data():
    store = PageStore(4 * PAGE_SIZE, make_codec("lz4"))
    store.write(word_page(1), 0)
    store.recomp_codecs = (RewritingCodec(store, 0, word_page(2)),)
    store.recomp_codec = store.recomp_codecs[0]
    sweeper = ColdSweeper(store, recompress_after_s=1)
    sweeper.sweep(0)
    assert read(store, 0) == word_page(2)
    assert store.block_state(0) == "compressed"
    assert sweeper.stats()["cold_superseded"] == 1
    store.audit()


def test_the_thread_sweeps_and_stops():
    store = make_store("zstd:19")
    for i in range(8):
        store.write(word_page(i), i * PAGE_SIZE)
    sweeper = ColdSweeper(store, recompress_after_s=0.0001)
    sweeper.start()
    try:
        for _ in range(3000):  # up to 30 s: the thread runs at nice 19
            if store.stats()["recompressed_pages"] == 8:
                break
            time.sleep(0.01)
        assert store.stats()["recompressed_pages"] == 8
    finally:
        sweeper.stop()
    assert sweeper.stats()["cold_state"] in ("sweeping", "no candidates")


# -- the controller ------------------------------------------------------------
def drive(controller, rate_of_age, steps, pages=100_000, start_s=0.0, dt=10.0):
    """Feed the controller the promotions a workload makes: ``rate_of_age``
    (percent of the pages a minute) at the controller's current age."""
    now, promotions = start_s, 0.0
    ages = []
    for _ in range(steps):
        now += dt
        promotions += rate_of_age(controller.age_s) / 100 * pages * dt / 60
        controller.update(now, int(promotions), pages)
        ages.append(controller.age_s)
    return ages


def test_the_controller_converges_on_the_target():
    # promotions fall as the age grows: rate = K / age; at 0.2%/min the age is K / 0.2
    k = 0.2 * 900.0
    c = ColdController(0.2, 120.0, 0.0)
    ages = drive(c, lambda age: k / age, 200)
    assert ages[-1] == pytest.approx(900.0, rel=0.05)
    assert c.rate_pct_min == pytest.approx(0.2, rel=0.05)
    assert c.state == "tracking"
    assert max(ages[-20:]) / min(ages[-20:]) < 1.05  # settled, no oscillation
    # the workload gets colder: the age follows it down, to the floor at most
    ages = drive(c, lambda age: k / 10 / age, 200, start_s=2000.0)
    assert ages[-1] == pytest.approx(120.0, rel=0.01)


def test_no_promotions_sits_at_the_floor_and_many_at_the_ceiling():
    c = ColdController(0.2, 300.0, 0.0)
    assert drive(c, lambda age: 0.0, 50)[-1] == 300.0
    ages = drive(c, lambda age: 50.0, 400, start_s=1000.0)
    assert ages[-1] == cold.MAX_AGE_S and c.state == "at ceiling"


def test_the_age_moves_once_per_interval():
    c = ColdController(0.2, 120.0, 0.0)
    c.update(0.0, 0, 1000)
    c.update(10.0, 1000, 1000)  # a flood of promotions
    grown = c.age_s
    assert grown > 120.0
    for t in (10.5, 11.0, 15.0):  # calls in between only answer
        assert c.update(t, 1000 + int(t), 1000) == grown


def test_an_impossible_target_is_reported_and_never_spins():
    c = ColdController(0.0, 120.0, 0.0)
    assert c.update(10.0, 0, 1000) is None and c.state == "impossible target"
    assert c.update(20.0, 5, 1000) is None
    c = ColdController(0.2, 120.0, 0.0)
    assert c.update(10.0, 0, 0) is None and c.state == "no pages"

    store = make_store("zstd:19", pages=8)
    for i in range(8):
        store.write(word_page(i), i * PAGE_SIZE)
    calls = []

    def clock():
        calls.append(1)
        return time.monotonic()

    sweeper = ColdSweeper(store, cold_target_pct=0.0, clock=clock)
    sweeper.start()
    time.sleep(0.3)
    try:
        s = sweeper.stats()
        assert s["cold_state"] == "impossible target"
        assert s["cold_passes"] == 0 and len(calls) <= 3  # it waits, it does not loop
        assert store.stats()["recompressed_pages"] == 0
        sweeper.set_cold_target(0.2)  # a new setting wakes it
        sweeper.set_recompress_after(0.0001)
        for _ in range(3000):  # up to 30 s: the thread runs at nice 19
            if store.stats()["recompressed_pages"] == 8:
                break
            time.sleep(0.01)
        assert store.stats()["recompressed_pages"] == 8
    finally:
        sweeper.stop()


def test_nothing_to_act_on_is_reported():
    store = make_store("zstd:19", pages=8)
    store.write(os.urandom(PAGE_SIZE), 0)
    sweeper = ColdSweeper(store, recompress_after_s=0.0001)
    sweeper.start()
    try:
        for _ in range(3000):  # up to 30 s: the thread runs at nice 19
            if sweeper.stats()["cold_passes"] >= 2:
                break
            time.sleep(0.01)
        s = sweeper.stats()
        assert s["cold_state"] == "no candidates", s
        assert s["cold_passes"] < 20  # it sleeps a period between passes
    finally:
        sweeper.stop()


def test_settings_are_checked():
    sweeper = ColdSweeper(make_store("zstd", pages=1))
    assert sweeper.stats()["cold_state"] == "off"
    with pytest.raises(ValueError):
        sweeper.set_recompress_after(-1)
    with pytest.raises(ValueError):
        sweeper.set_cold_target(101)
    sweeper.set_recompress_after(60)
    assert sweeper.controller.floor_s == 60 and sweeper.controller.age_s == 60


def test_stop_wakes_a_sleeping_sweeper():
    sweeper = ColdSweeper(make_store("zstd", pages=8), recompress_after_s=3600)
    sweeper.start()
    threading.Event().wait(0.05)
    assert "zramd-cold" in [t.name for t in threading.enumerate()]
    sweeper.stop()  # joins: the thread was woken from its 30 s wait
    assert "zramd-cold" not in [t.name for t in threading.enumerate()]


def test_mark_idle_takes_a_window():
    store = make_store("zstd", pages=16)
    for i in range(16):
        store.write(word_page(i), i * PAGE_SIZE)
    flags = store.slot_tables()[1]
    assert scan.mark_idle(store, None, 4, 8) == 4
    assert [i for i in range(16) if flags[i]] == [4, 5, 6, 7]
    assert scan.mark_idle(store, 3600, 0, 16) == 4  # all were just written
    assert scan.mark_idle(store) == 16

"""Slot scans (zramd/engine/scan.py) against a plain per-slot reference: the
bytes-level selection must pick exactly the pages a loop over every slot
picks, for every scan type, limit and chunk boundary."""

import os
import random

import pytest

from zramd.engine import scan
from zramd.engine.arena import FLAG_BIT, LEN_MASK, LEN_SHIFT, TAG_MASK, TAG_OBJ
from zramd.engine.codecs import make_codec
from zramd.engine.slots import IDLE, INCOMPRESSIBLE
from zramd.engine.store import PageStore
from zramd.units import PAGE_SIZE

PAGES = 5000


def reference_candidates(store, scan_type, limit=None):
    """What a scan selects, one slot at a time."""
    handles, flags, atime = store._handles, store._flags, store._atime
    out = []
    for index, h in enumerate(handles):
        if h & TAG_MASK != TAG_OBJ:
            continue
        huge = not h & FLAG_BIT and (h >> LEN_SHIFT) & LEN_MASK == PAGE_SIZE
        ok = {
            "idle": flags[index] & IDLE,
            "huge": huge,
            "huge_idle": huge and flags[index] & IDLE,
            "incompressible": flags[index] & INCOMPRESSIBLE,
        }.get(scan_type, True)
        if ok:
            out.append((index, h))
    if scan_type == "cold":  # oldest first; among equals the largest object first
        out.sort(key=lambda item: (atime[item[0]], -((item[1] >> LEN_SHIFT) & LEN_MASK)))
    return out if limit is None else out[:limit]


@pytest.fixture
def store(monkeypatch):
    # small chunks, and a table that is not a whole number of them
    monkeypatch.setattr(scan, "SCAN_CHUNK_PAGES", 777)
    rng = random.Random(7)
    s = PageStore(PAGES * PAGE_SIZE, make_codec("lz4"), recomp_codec=make_codec("zstd"))
    text = (b"pages of text compress well; " * 200)[:PAGE_SIZE]
    for index in range(PAGES):
        kind = rng.choice(["empty", "zero", "same", "text", "text", "random", "pending"])
        offset = index * PAGE_SIZE
        if kind == "zero":
            s.write(bytes(PAGE_SIZE), offset)
        elif kind == "same":
            s.write(bytes([index & 255 or 1]) * PAGE_SIZE, offset)
        elif kind == "text":
            s.write(text[index % 64 :] + text[: index % 64], offset)
        elif kind == "random":
            s.write(os.urandom(PAGE_SIZE), offset)  # huge
        elif kind == "pending":
            s.stage(text, offset)
    scan.recompress(s, "all", limit=300)  # some pages carry FLAG_BIT now
    for index in range(PAGES):  # flags on every kind of slot, stored or not
        s._flags[index] = rng.choice([0, 0, IDLE, INCOMPRESSIBLE, IDLE | INCOMPRESSIBLE])
        s._atime[index] = rng.randrange(50)  # ties, so the order must be stable
    return s


def test_the_store_holds_every_kind_of_slot(store):
    tags = {h & TAG_MASK for h in store._handles}
    assert tags == {0, 1, 2, 3}  # empty/zero, arena, same, side (pending)
    handles = [h for h in store._handles if h & TAG_MASK == TAG_OBJ]
    assert any(h & FLAG_BIT for h in handles)
    assert any((h >> LEN_SHIFT) & LEN_MASK == PAGE_SIZE for h in handles)


@pytest.mark.parametrize("scan_type", scan.SCAN_TYPES)
@pytest.mark.parametrize("limit", [None, 0, 1, 250])
def test_candidates_match_a_slot_by_slot_scan(store, scan_type, limit):
    want = reference_candidates(store, scan_type, limit)
    assert want or limit == 0
    assert scan.candidates(store, scan_type, limit) == want


@pytest.mark.parametrize("older_than_s", [None, 2.0])
def test_mark_idle_marks_the_pages_a_slot_by_slot_scan_marks(store, older_than_s):
    for index in range(PAGES):
        store._flags[index] &= ~IDLE
    store.now = lambda: 100  # a stopped clock, 10 s after the start: access times 0-4 s ago
    cutoff = None if older_than_s is None else store.now() - int(older_than_s * 10)
    for index in range(PAGES):
        store._atime[index] = store.now() - random.Random(index).randrange(40)
    want = [
        index
        for index, h in enumerate(store._handles)
        if h & TAG_MASK == TAG_OBJ and (cutoff is None or store._atime[index] <= cutoff)
    ]
    idle = scan.mark_idle(store, older_than_s)
    assert [i for i in range(PAGES) if store._flags[i] & IDLE] == want
    assert idle == len(want) > 0


def test_a_page_changed_after_the_bytes_test_is_not_returned(store, monkeypatch):
    """select() sees a snapshot; candidates() reads each handle again."""
    real = scan.select
    gone = []

    def select_then_trim(*args, **kwargs):
        indices = real(*args, **kwargs)
        gone.append(indices[0])
        store.discard(indices[0] * PAGE_SIZE, PAGE_SIZE)
        return indices

    monkeypatch.setattr(scan, "select", select_then_trim)
    picked = scan.candidates(store, "all")
    assert gone and gone[0] not in [index for index, _ in picked]
    assert len(picked) == len(reference_candidates(store, "all"))


@pytest.mark.parametrize(
    "flag, huge, scan_type",
    [(0, False, "all"), (IDLE, False, "idle"), (INCOMPRESSIBLE, False, "incompressible"),
     (0, True, "huge"), (IDLE, True, "huge_idle")],
)
def test_select_alone_picks_exactly_those_slots(store, flag, huge, scan_type):
    """candidates() checks each handle again; the selection must be exact
    on its own too, or a scan walks more pages in Python than it should."""
    want = [index for index, _ in reference_candidates(store, scan_type)]
    assert scan.select(store, flag=flag, huge=huge) == want


def test_a_page_rewritten_after_the_bytes_test_is_no_longer_idle(store, monkeypatch):
    """A rewrite clears the page's flags: an idle scan must not pick the
    fresh page it finds in the slot when it reads the handle again."""
    real = scan.select
    rewritten = []

    def select_then_rewrite(*args, **kwargs):
        indices = real(*args, **kwargs)
        rewritten.append(indices[0])
        store.write(os.urandom(2048) + bytes(2048), indices[0] * PAGE_SIZE)
        return indices

    monkeypatch.setattr(scan, "select", select_then_rewrite)
    picked = [index for index, _ in scan.candidates(store, "idle")]
    assert rewritten and rewritten[0] not in picked
    assert picked == [index for index, _ in reference_candidates(store, "idle")]

"""Scanning slots: idle marking, writeback/recompression candidates, and
recompression itself (zram keeps "scan the slots" apart from "act on
them": mark_idle, scan_slots_for_writeback, scan_slots_for_recompress).

Why: docs/design.md#writeback-and-recompression.

Everything here reads the store's handle table and flags through its
public view ``store.slot_tables()``, without the store's lock (a page that
changes during a scan is caught later: writeback and recompression install
through ``store.commit``, which compares the slot's content under the lock).
Flag updates take no lock, as in the store: at worst a page stays marked
idle a little longer.

How a scan walks the table: ``select`` takes ``SCAN_CHUNK_PAGES`` slots at
a time, copies the low two bytes of each handle and the flags out of the
tables with C-level slicing, tests them with ``bytes.translate`` tables
(0 or 1 per slot) and ANDs those as integers; ``itertools.compress`` then
yields the selected indices.  Python runs once per *selected* page, not
once per slot, so a scan that selects few pages (idle, huge) costs little
and one that selects every stored page (all, cold) still skips the loop
over empty and same slots.  ``mark_idle`` touches every stored page anyway
and keeps its plain walk.  Why: the GIL the scan holds is
the GIL every request waits for (docs/design.md#writeback-and-recompression).
The selected handles and flags are read again, one by one, and checked (a
page may change between the bytes test and that read).
"""

from __future__ import annotations

import bisect
import itertools
import operator
import sys

from ..units import PAGE_SIZE
from .arena import CLASS_TABLE, FLAG_BIT, LEN_MASK, LEN_SHIFT, OFF_SHIFT, TAG_MASK, TAG_OBJ
from .slots import COLD, HUGE_THRESHOLD, IDLE, INCOMPRESSIBLE, Recompressed

OBJ_CODEC_MASK = TAG_MASK | FLAG_BIT  # == TAG_OBJ: an object of the primary codec

# what candidates() can select: zram's writeback types, and all pages in RAM
# in page order (all) or oldest access first (cold)
SCAN_TYPES = ("idle", "huge", "huge_idle", "incompressible", "all", "cold")

# Slots tested per step: 64 Ki slots copy 128 KiB of handle bytes and 64 KiB
# of flags, well inside the caches (a bound, not a measurement).
SCAN_CHUNK_PAGES = 65536

# The tag, FLAG_BIT and the length of an arena object sit in the handle's
# low 16 bits, so two bytes per slot tell "stored in the arena" and "huge"
# (primary codec, 4096 bytes) apart from everything else.
assert LEN_SHIFT + LEN_MASK.bit_length() <= 16 <= OFF_SHIFT
_HUGE_LOW16 = TAG_OBJ | PAGE_SIZE << LEN_SHIFT
# where the handle's byte 0 and byte 1 sit in its 8 (native byte order)
_BYTE0, _BYTE1 = (0, 1) if sys.byteorder == "little" else (7, 6)


def _table(test) -> bytes:
    """A ``bytes.translate`` table: byte b -> 1 if test(b) else 0."""
    return bytes(1 if test(b) else 0 for b in range(256))


_IS_OBJ = _table(lambda b: b & TAG_MASK == TAG_OBJ)
_IS_HUGE0 = _table(lambda b: b == _HUGE_LOW16 & 0xFF)
_IS_HUGE1 = _table(lambda b: b == _HUGE_LOW16 >> 8)
_HAS_FLAG = {flag: _table(lambda b, f=flag: b & f) for flag in (IDLE, INCOMPRESSIBLE)}


def _and(a: bytes, b: bytes) -> bytes:
    """Slot by slot AND of two 0/1 byte strings of one length."""
    return (int.from_bytes(a, "little") & int.from_bytes(b, "little")).to_bytes(len(a), "little")


def select(
    store, flag: int = 0, huge: bool = False, start: int = 0, stop: int | None = None
) -> list:
    """Indices of the slots that hold an arena object (compressed, huge or
    recompressed), in page order; with ``flag``, only those with that flag
    set; with ``huge``, only huge pages; only slots ``start``..``stop``
    (default: all).  A snapshot without the lock: the caller reads each
    handle again."""
    handles, flags, _ = store.slot_tables()
    raw = handles.cast("B")
    out: list = []
    stop = store.nr_pages if stop is None else min(stop, store.nr_pages)
    for first in range(start, stop, SCAN_CHUNK_PAGES):
        end = min(stop, first + SCAN_CHUNK_PAGES)
        byte0 = bytes(raw[first * 8 + _BYTE0 : end * 8 : 8])
        if huge:
            byte1 = bytes(raw[first * 8 + _BYTE1 : end * 8 : 8])
            chosen = _and(byte0.translate(_IS_HUGE0), byte1.translate(_IS_HUGE1))
        else:
            chosen = byte0.translate(_IS_OBJ)
        if flag:
            chosen = _and(chosen, bytes(flags[first:end]).translate(_HAS_FLAG[flag]))
        out.extend(itertools.compress(range(first, end), chosen))
    return out


# the flag a scan type wants set, and the types that want huge pages
_SCAN_FLAG = {"idle": IDLE, "huge_idle": IDLE, "incompressible": INCOMPRESSIBLE}
_HUGE_SCANS = ("huge", "huge_idle")


def _is_huge(h: int) -> bool:
    return h & 0xFFFF == _HUGE_LOW16


def mark_idle(
    store, older_than_s: float | None = None, start: int = 0, stop: int | None = None
) -> int:
    """zram's ``echo all > idle`` (None) or ``echo SECONDS > idle``: mark
    pages that hold a payload in RAM idle (all, or those not accessed for
    that long); an access clears the mark.  Only slots ``start``..``stop``
    (default: all; the cold sweeper marks a window at a time).  Returns how
    many are idle now.  As in zram, same, pending and written-back pages
    are never idle."""
    handles, flags, atime = store.slot_tables()
    cutoff = None if older_than_s is None else store.now() - int(older_than_s * 10)
    stop = store.nr_pages if stop is None else min(stop, store.nr_pages)
    # Every stored page is touched here, so a plain walk beats select() and a
    # check per page (23 against 30 ms per GiB: docs/design.md, "Cost" under
    # "Writeback and recompression").
    for index in range(start, stop):
        h = handles[index]
        if h & TAG_MASK != TAG_OBJ:
            continue
        if cutoff is None or atime[index] <= cutoff:
            flags[index] |= IDLE
    return idle_pages(store)


def idle_pages(store) -> int:
    return bytes(store.slot_tables()[1]).translate(_HAS_FLAG[IDLE]).count(1)


def incompressible_pages(store) -> int:
    return bytes(store.slot_tables()[1]).translate(_HAS_FLAG[INCOMPRESSIBLE]).count(1)


def _coldest_largest_first(store, indices: list) -> list:
    """``indices`` by access time, then by object length, longest first.
    The handle's low 16 bits hold the length above the tag and FLAG_BIT
    (arena.py): one sort on ``atime << 14 | (8192 - length)``, every key
    made by C-level
    ``map`` (no Python call per page, as for the other scans)."""
    handles, _, atime = store.slot_tables()
    low16 = handles.cast("B").cast("H")  # four per handle
    at = map((4).__mul__, indices)
    if sys.byteorder != "little":
        at = map((3).__add__, at)  # where the low 16 bits sit
    lengths = map(LEN_SHIFT.__rrshift__, map(low16.__getitem__, at))  # x >> LEN_SHIFT
    shorter = map((1 << 13).__sub__, lengths)
    colder = map((1 << 14).__mul__, map(atime.__getitem__, indices))
    keys = list(map(operator.add, colder, shorter))
    order = sorted(range(len(indices)), key=keys.__getitem__)
    return list(map(indices.__getitem__, order))


def candidates(store, scan_type: str, limit: int | None = None) -> list:
    """``[(index, handle)]`` of pages that ``scan_type`` selects, in page order
    (or oldest access first for ``cold``, the largest objects first among
    pages of one access time), at most ``limit``.

    types: ``idle``, ``huge``, ``huge_idle``, ``incompressible`` (zram's
    writeback types), ``all`` and ``cold`` (every page that holds a payload
    in RAM).  Same, pending and written-back pages never qualify: they hold
    nothing worth moving.  ``store.holds(index, handle)`` tells whether a
    page is still the one selected.
    """
    if scan_type not in SCAN_TYPES:
        raise ValueError(f"unknown page type {scan_type!r}")
    handles, flags, atime = store.slot_tables()
    flag, want_huge = _SCAN_FLAG.get(scan_type, 0), scan_type in _HUGE_SCANS
    indices = select(store, flag=flag, huge=want_huge)
    if scan_type == "cold":
        # oldest access first, and the largest objects first among equally
        # cold pages (more memory back per page written:
        # docs/design.md#packed-writeback); C-level keys only
        indices = _coldest_largest_first(store, indices)
    out: list = []
    for index in indices:
        if limit is not None and len(out) >= limit:
            break
        # again: the page may have changed since the bytes test (a rewrite
        # clears its flags, and a fresh page must not be written back as idle)
        h = handles[index]
        if h & TAG_MASK != TAG_OBJ or (want_huge and not _is_huge(h)):
            continue
        if flag and not flags[index] & flag:
            continue
        out.append((index, h))
    return out


def aged(store, older_than_s: float, start: int = 0, stop: int | None = None) -> list:
    """``[(index, handle)]`` of slots ``start``..``stop`` that a recompression
    would try: compressed or huge with the primary codec, not marked
    incompressible, not accessed for ``older_than_s`` (the sweeper's window
    of the table, cold.py).  A recompressed page not accessed for that long
    whose ``COLD`` mark a read took off gets it back."""
    handles, flags, atime = store.slot_tables()
    cutoff = store.now() - int(older_than_s * 10)
    out = []
    for index in select(store, start=start, stop=stop):
        if atime[index] > cutoff:
            continue
        h = handles[index]
        if h & OBJ_CODEC_MASK == TAG_OBJ:
            if not flags[index] & INCOMPRESSIBLE:
                out.append((index, h))
        elif h & FLAG_BIT and not flags[index] & COLD:
            # recompressed, warmed by a read since, and cold again: its next
            # read is a promotion again (no lock, as every flag update here)
            flags[index] |= COLD
    return out


def class_bytes(length: int) -> int:
    """The size of the arena class an object of ``length`` bytes lands in
    (arena.py's zsmalloc classes); a recompression counts only when it
    lands in a smaller class (docs/design.md#cold-pages)."""
    return _CLASS_BYTES[length]


def _class_table() -> list:
    sizes = [c.size for c in CLASS_TABLE]
    return [sizes[bisect.bisect_left(sizes, n)] for n in range(PAGE_SIZE + 1)]


_CLASS_BYTES = _class_table()


def recompress(
    store,
    scan_type: str = "all",
    threshold: int = 0,
    limit: int | None = None,
    batch: list | None = None,
) -> dict:
    """zram's ``recompress``: compress selected pages again with the
    secondary codecs, in priority order; only pages whose payload is at
    least ``threshold`` bytes.  The first result that lands in a smaller
    size class than the page had (``class_bytes``) is installed; if the
    last codec fails too, the page is marked incompressible, as in zram.
    ``batch``: these ``(index, handle)`` pairs (from ``aged``) instead of a
    scan of ``scan_type``.  Returns counts."""
    if store.recomp_codec is None:
        raise ValueError("no secondary compression algorithm is configured")
    done = {"recompressed": 0, "incompressible": 0, "skipped": 0, "saved_bytes": 0}
    flags = store.slot_tables()[1]
    for index, h in candidates(store, scan_type) if batch is None else batch:
        if limit is not None and done["recompressed"] + done["incompressible"] >= limit:
            break
        length = (h >> LEN_SHIFT) & LEN_MASK
        if h & FLAG_BIT or flags[index] & INCOMPRESSIBLE or length < threshold:
            done["skipped"] += 1
            continue
        entry = store.entry(index)
        if not store.holds(index, h) or type(entry) is not tuple or entry[0] != h:
            done["skipped"] += 1  # changed since the scan
            continue
        new = _smaller(store, store.decode(entry), length)
        if new is None:
            if store.holds(index, h):
                flags[index] |= INCOMPRESSIBLE
            done["incompressible"] += 1
        elif store.commit(index, entry, Recompressed(new)):
            done["recompressed"] += 1
            done["saved_bytes"] += length - len(new)
        else:
            done["skipped"] += 1  # rewritten meanwhile: the new data stays
    return done


def _smaller(store, page, length: int) -> bytes | None:
    """The recompressed object (byte 0: the codec's priority index, then
    its output) from the first secondary codec whose result lands in a
    smaller size class than ``length`` bytes does; None if none does."""
    old_class = _CLASS_BYTES[length]
    # the object (1 + output bytes) must stay below the huge class
    max_len = min(length, HUGE_THRESHOLD - 1)
    for priority, codec in enumerate(store.recomp_codecs):
        out = codec.compress(page, max_len)
        if out is not None and _CLASS_BYTES[len(out) + 1] < old_class:
            return bytes((priority,)) + out
    return None

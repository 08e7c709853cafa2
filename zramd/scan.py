"""Scanning slots: idle marking, writeback/recompression candidates, and
recompression itself (zram keeps "scan the slots" apart from "act on
them": mark_idle, scan_slots_for_writeback, scan_slots_for_recompress).

Why: docs/design.md#writeback-and-recompression.

Everything here reads the store's handle table and flags without the
store's lock (a page that changes during a scan is caught later: writeback
and recompression install through ``store.commit``, which compares the
slot's content under the lock).  Flag updates take no lock, as in the
store: at worst a page stays marked idle a little longer.
"""

from __future__ import annotations

from .arena import FLAG_BIT, LEN_MASK, LEN_SHIFT, TAG_MASK, TAG_OBJ
from .store import HUGE_THRESHOLD, IDLE, INCOMPRESSIBLE, PAGE_SIZE, Recompressed

# what candidates() can select: zram's writeback types, and all pages in RAM
# in page order (all) or oldest access first (cold)
SCAN_TYPES = ("idle", "huge", "huge_idle", "incompressible", "all", "cold")


def mark_idle(store, older_than_s: float | None = None) -> int:
    """zram's ``echo all > idle`` (None) or ``echo SECONDS > idle``: mark
    pages that hold a payload in RAM idle (all, or those not accessed for
    that long); an access clears the mark.  Returns how many are idle now.
    As in zram, same, pending and written-back pages are never idle."""
    handles, flags, atime = store._handles, store._flags, store._atime
    cutoff = None if older_than_s is None else store.now() - int(older_than_s * 10)
    for index, h in enumerate(handles):
        if h & TAG_MASK != TAG_OBJ:
            continue
        if cutoff is None or atime[index] <= cutoff:
            flags[index] |= IDLE
    return idle_pages(store)


def idle_pages(store) -> int:
    flags = bytes(store._flags)
    return flags.count(IDLE) + flags.count(IDLE | INCOMPRESSIBLE)


def incompressible_pages(store) -> int:
    flags = bytes(store._flags)
    return flags.count(INCOMPRESSIBLE) + flags.count(IDLE | INCOMPRESSIBLE)


def candidates(store, scan_type: str, limit: int | None = None) -> list:
    """``[(index, handle)]`` of pages that ``scan_type`` selects, in page order
    (or oldest access first for ``cold``), at most ``limit``.

    types: ``idle``, ``huge``, ``huge_idle``, ``incompressible`` (zram's
    writeback types), ``all`` and ``cold`` (every page that holds a payload
    in RAM).  Same, pending and written-back pages never qualify: they hold
    nothing worth moving.  ``store.holds(index, handle)`` tells whether a
    page is still the one selected.
    """
    if scan_type not in SCAN_TYPES:
        raise ValueError(f"unknown page type {scan_type!r}")
    handles, flags = store._handles, store._flags
    out = []
    for index, h in enumerate(handles):
        if h & TAG_MASK != TAG_OBJ:
            continue
        huge = not h & FLAG_BIT and (h >> LEN_SHIFT) & LEN_MASK == PAGE_SIZE
        if scan_type == "idle":
            ok = flags[index] & IDLE
        elif scan_type == "huge":
            ok = huge
        elif scan_type == "huge_idle":
            ok = huge and flags[index] & IDLE
        elif scan_type == "incompressible":
            ok = flags[index] & INCOMPRESSIBLE
        else:
            ok = True
        if ok:
            out.append((index, h))
    if scan_type == "cold":
        atime = store._atime
        out.sort(key=lambda item: atime[item[0]])
    return out if limit is None else out[:limit]


def recompress(store, scan_type: str = "all", threshold: int = 0, limit: int | None = None) -> dict:
    """zram's ``recompress``: compress selected pages again with the
    secondary codec; only pages whose payload is at least ``threshold``
    bytes.  A page that does not shrink is marked incompressible.
    Returns counts."""
    if store.recomp_codec is None:
        raise ValueError("no secondary compression algorithm is configured")
    done = {"recompressed": 0, "incompressible": 0, "skipped": 0, "saved_bytes": 0}
    for index, h in candidates(store, scan_type):
        if limit is not None and done["recompressed"] + done["incompressible"] >= limit:
            break
        length = (h >> LEN_SHIFT) & LEN_MASK
        if h & FLAG_BIT or store._flags[index] & INCOMPRESSIBLE or length < threshold:
            done["skipped"] += 1
            continue
        entry = store.entry(index)
        if not store.holds(index, h) or type(entry) is not tuple or entry[0] != h:
            done["skipped"] += 1  # changed since the scan
            continue
        page = store.decode(entry)
        out = store.recomp_codec.compress(page, min(length, HUGE_THRESHOLD))
        if out is None:
            if store.holds(index, h):
                store._flags[index] |= INCOMPRESSIBLE
            done["incompressible"] += 1
        elif store.commit(index, entry, Recompressed(out)):
            done["recompressed"] += 1
            done["saved_bytes"] += length - len(out)
    return done

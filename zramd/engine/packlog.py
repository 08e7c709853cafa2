"""Packed compressed writeback: written-back pages keep their compressed
form, several to a 4 KiB block of the backing store (zram 7.0's
compressed_writeback, packed).  Why 4 KiB blocks and not a log of larger
segments: docs/design.md#packed-writeback.

Layering
--------
The packer sits above the block layer: it builds whole 4 KiB blocks in
memory and writes them with ``backing.write_many(blocks, pages)``, reads
them with ``backing.read_block(block)``, takes blocks with ``alloc`` and
gives them back with ``free`` / ``give_back`` (then ``discard_freed``
punches them out).  Any object with that interface (``BackingFile``, or a
remote NBD tier) can hold packed pages: encryption at rest, the xxh3 check
of plain blocks and the discard of freed blocks stay in the block layer,
per block, exactly as for raw pages.

Data structure
--------------
A packed page is the store's ``Backed(block, offset, length, codec)``: its
compressed bytes (``codec`` 0: the primary codec, 1: a secondary one,
whose byte 0 names which, as in the store's arena objects; ``length``
4096: a huge page, raw) lie at ``offset`` in ``block``.  Objects
never cross a block, so a read is one block read and one decompression.
Nothing about the objects is written to the block: where they are lives in
RAM, in the store's entries and here:

- ``_objs``: block -> {offset: its ``Backed`` entry}, the live objects of
  every block in use by the packer;
- ``_slots``: block -> {offset: the page index of that object} (kept apart
  from ``_objs`` so that no tuple per packed page lives on: a dict of ints
  is not tracked by the garbage collector, docs/design.md#packed-writeback);
- ``_live``: block -> live bytes in it;
- ``_dead``: blocks that hold freed objects beside live ones.  They are
  *repacked* (below): their live objects rewritten into new blocks, then
  the old block freed and discarded, so freed data does not stay on disk
  and mostly-empty blocks give their space back.

Placement (``_layout``): a window of objects is sorted largest first and
each is put into the block of the window with the least room that holds
it (best-fit decreasing); the wider the window, the fuller the blocks
(docs/design.md#packed-writeback).  Each object goes at the end of the
ones placed before it in its block, so a block's bytes are one join of
its objects and a zero tail (``_build``).

Batching (``store_pages``): a window is taken as parallel lists, its
blocks allocated in one call (``alloc_many``), built, written
``io_batch_blocks`` to a ``write_many``, registered under one hold of
``_lock`` per window and installed with one ``store.commit_backed``: the
per-page Python work is what bounds packed writeback's pages per second
(docs/design.md#packed-writeback).

Invariants (whenever ``_lock`` is free)
---------------------------------------
- a block is in ``_objs`` iff the packer holds it from the block layer (it
  has at least one live object, or is being installed);
- ``_live[b]`` = the sum of the lengths in ``_objs[b]``; objects of one block
  never overlap and end at most at 4096;
- ``_slots[b]`` has the same offsets as ``_objs[b]``;
- every ``Backed`` entry the store holds for a packed page is in ``_objs``
  under its block and offset (it is registered before ``store.commit_backed``,
  and removed only by ``free_backed``, which the store calls when the slot
  lets go of it, or by ``_remove`` when the commit failed);
- ``bd_blocks`` (``blocks_in_use``) = ``len(_objs)``.

Repacking (``repack``), on the writeback thread, at most ``max_blocks``
blocks a run, emptiest first: the live objects of each chosen block are
copied out of one verified block read and stored again like written-back
pages (``store_pages``: new blocks, then ``store.commit_backed``, which
hands entries that are not arena objects to ``commit_many``); a page
rewritten meanwhile keeps its new data (its commit fails, its new
copy is dropped).  The old block empties as its entries are replaced and
is freed by ``free_backed``.

Locking
-------
``_lock`` guards ``_objs``, ``_slots``, ``_live``, ``_dead`` and the counters.
``free_backed`` is called with the store's lock held (store lock, then
ours, then the block layer's: never the other way) and makes no system
call.  Readers take no lock: ``read_backed`` reads the block, then, if
the data does not decode, checks (one dict lookup under the GIL) whether
its entry is still live: if not, the block was freed and perhaps reused
during the read, and it returns zeros so that the store loads the slot
again (store.py ``_load``); if so, the block is corrupt: EIO.
"""

from __future__ import annotations

import bisect
import errno
import threading
from typing import Any

from ..units import PAGE_SIZE
from .backing import alloc_blocks
from .codecs import Codec
from .store import Backed

ZERO_PAGE = bytes(PAGE_SIZE)
PRIMARY, SECONDARY = 0, 1  # Backed.codec
# Room below this is not worth keeping open: no compressed page is smaller
# (lz4's smallest output for a 4 KiB page that is not same-filled).
MIN_OBJECT_BYTES = 16


class PackLog:
    def __init__(self, backing, codec, recomp_codecs=()):
        self.backing = backing
        self.codec = codec
        # the store's secondary codecs, in its order (a Codec alone: one)
        self.recomp_codecs = (
            (recomp_codecs,) if isinstance(recomp_codecs, Codec) else tuple(recomp_codecs or ())
        )
        self._lock = threading.Lock()
        self._objs: dict[int, dict[int, Backed]] = {}
        self._slots: dict[int, dict[int, int]] = {}
        self._live: dict[int, int] = {}
        self._dead: set[int] = set()
        self.repack_runs = 0
        self.repacked_blocks = 0
        self.repacked_objects = 0

    # -- the store's side (read and free) --------------------------------
    def read_backed(self, entry) -> bytes:
        """The 4 KiB page of a packed entry (see Locking)."""
        data = self.backing.read_block(entry.block)
        if data is None:
            return ZERO_PAGE  # freed meanwhile: the store loads the slot again
        obj = data[entry.offset : entry.offset + entry.length]
        try:
            page = self._decode(obj, entry.codec)
            if len(page) == PAGE_SIZE:
                return page
            problem = f"decodes to {len(page)} bytes"
        except Exception as exc:  # any codec's error on bytes that are not its own
            problem = f"does not decode ({exc})"
        if not self._is_live(entry):
            return ZERO_PAGE  # the block was freed or reused during our read
        raise OSError(errno.EIO, f"packed object in backing block {entry.block} {problem}")

    def _decode(self, obj: bytes, codec: int):
        if codec == SECONDARY:  # byte 0: which secondary codec
            return self.recomp_codecs[obj[0]].decompress(memoryview(obj)[1:])
        if len(obj) == PAGE_SIZE:
            return obj  # a huge page, raw
        return self.codec.decompress(obj)

    def _is_live(self, entry) -> bool:
        return self._objs.get(entry.block, {}).get(entry.offset) is entry

    def free_backed(self, entry) -> None:
        """The store let go of a packed entry (store's lock held; no system
        call): an emptied block goes back to the block layer (to be
        discarded), a block with live objects left is marked for repacking."""
        with self._lock:
            self._remove(entry, freed=True)

    def _remove(self, entry: Backed, freed: bool) -> None:
        """Forget one object (lock held)."""
        block, offset = entry.block, entry.offset
        objs = self._objs.get(block)
        if objs is None or objs.get(offset) is not entry:
            return
        del objs[offset], self._slots[block][offset]
        if objs:
            self._live[block] -= entry.length
            self._dead.add(block)
            return
        del self._objs[block], self._slots[block], self._live[block]
        self._dead.discard(block)
        if freed:
            self.backing.free(block)
        else:
            self.backing.give_back(block)

    # -- storing objects (the writeback thread) -----------------------------
    def store_pages(
        self,
        store,
        indexes: list[int],
        expected: list,
        payloads: list,
        codecs: list[int],
        io_batch_blocks: int = 64,
    ) -> dict:
        """Store page ``indexes[i]`` (whose slot held ``expected[i]`` when
        ``payloads[i]``, of codec ``codecs[i]``, was taken from it) packed,
        and install each as ``Backed`` through ``store.commit_backed``; the
        blocks are written ``io_batch_blocks`` to a ``write_many``.  Parallel
        lists, not a tuple per page: the per-page work is the floor of
        packed writeback (docs/design.md#packed-writeback).  Returns
        ``{"written", "superseded", "full", "failed", "error"}``: a full
        backing store stores what fits; after a failed write only the blocks
        written whole before it are installed (the other pages stay in RAM,
        their blocks go back)."""
        out: dict[str, Any] = {
            "written": 0,
            "superseded": 0,
            "full": 0,
            "failed": 0,
            "error": None,
        }
        if not indexes:
            return out
        lengths = [len(p) for p in payloads]
        bins = self._layout(lengths)
        blocks, full = alloc_blocks(self.backing, len(bins))
        if full:
            out["full"], out["error"] = 1, full
        del bins[len(blocks) :]
        news: list = [None] * len(indexes)
        contents, placed = self._build(blocks, bins, indexes, payloads, lengths, codecs, news)
        written = self._write(blocks, contents, io_batch_blocks, out)
        if written is not None:  # a failed write: keep the blocks written whole
            keep = [b for b, block in enumerate(blocks) if block in written]
            blocks = [blocks[b] for b in keep]
            bins = [bins[b] for b in keep]
            placed = [placed[b] for b in keep]
        with self._lock:  # live before the store can see them (module docstring)
            objs_of, live_of = self._objs, self._live
            for block, (objs, slots, live) in zip(blocks, placed, strict=True):
                objs_of[block] = objs
                self._slots[block] = slots
                live_of[block] = live
        if sum(map(len, bins)) < len(indexes):  # some were not stored: those stay in RAM
            chosen = [i for members in bins for i in members]
            indexes = [indexes[i] for i in chosen]
            expected = [expected[i] for i in chosen]
            news = [news[i] for i in chosen]
        done = store.commit_backed(indexes, expected, news)
        superseded = [new for new, ok in zip(news, done, strict=True) if not ok]
        if superseded:  # rewritten while under writeback: the new data wins
            with self._lock:
                for new in superseded:
                    self._remove(new, freed=False)
        out["written"] = len(news) - len(superseded)
        out["superseded"] = len(superseded)
        if self.backing.has_freed():
            self.backing.discard_freed()  # blocks of superseded pages only: out with them
        return out

    def _write(self, blocks, contents, io_batch_blocks: int, out: dict) -> set[int] | None:
        """Write the blocks, ``io_batch_blocks`` to a ``write_many``; None
        if all went, else the blocks written whole (the others went back)."""
        for first in range(0, len(blocks), io_batch_blocks):
            try:
                self.backing.write_many(
                    blocks[first : first + io_batch_blocks],
                    contents[first : first + io_batch_blocks],
                )
            except OSError as exc:
                written: set[int] = set(blocks[:first])
                written |= getattr(exc, "written", set())  # whole before the error
                for block in blocks:
                    if block not in written:
                        self.backing.give_back(block)  # never held our data: no space back
                self.backing.discard_freed()
                out["failed"], out["full"] = 1, 0
                out["error"] = f"backing file write failed: {exc.strerror or exc}"
                return written
        return None

    @staticmethod
    def _layout(lengths: list[int]) -> list[list[int]]:
        """Best-fit decreasing: objects largest first, each into the block
        of the window with the least room that still holds it (a bisect
        over the rooms, kept sorted).  Per block, its item numbers in the
        order they were placed: each at the end of the ones before it."""
        # largest first; reverse=True keeps equal lengths in candidate order
        order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
        bins: list[list[int]] = []
        used: list[int] = []  # bytes used per bin
        rooms: list[int] = []  # free bytes of the bins that have some, sorted
        room_bins: list[int] = []  # the bin of each entry of rooms
        bisect_left = bisect.bisect_left
        for i in order:
            length = lengths[i]
            at = bisect_left(rooms, length)
            if at < len(rooms):
                b = room_bins[at]
                del rooms[at], room_bins[at]
                bins[b].append(i)
                left = used[b] = used[b] + length
            else:
                b = len(bins)
                bins.append([i])
                used.append(length)
                left = length
            left = PAGE_SIZE - left
            if left >= MIN_OBJECT_BYTES:
                at = bisect_left(rooms, left)
                rooms.insert(at, left)
                room_bins.insert(at, b)
        return bins

    @staticmethod
    def _build(blocks, bins, indexes, payloads, lengths, codecs, news) -> tuple[list, list]:
        """Each block's 4096 bytes (one C-level join of its objects and the
        zero tail) and, per block, ``(objs, slots, live)`` as ``_objs``,
        ``_slots`` and ``_live`` keep them; ``news[i]``: item i's ``Backed``."""
        contents = []
        placed = []
        tail = memoryview(ZERO_PAGE)
        for block, members in zip(blocks, bins, strict=True):
            objs: dict[int, Backed] = {}
            slots: dict[int, int] = {}
            offset = 0
            for i in members:
                objs[offset] = news[i] = Backed(block, offset, lengths[i], codecs[i])
                slots[offset] = indexes[i]
                offset += lengths[i]
            contents.append(b"".join([payloads[i] for i in members] + [tail[offset:]]))
            placed.append((objs, slots, offset))
        return contents, placed

    # -- repacking --------------------------------------------------------
    def has_dead(self) -> bool:
        return bool(self._dead)

    def repack(self, store, max_blocks: int) -> dict:
        """Rewrite the live objects of at most ``max_blocks`` blocks that
        hold freed objects, emptiest first, into new blocks; the old ones
        are freed as their pages move (module docstring)."""
        with self._lock:
            chosen = sorted(self._dead, key=self._live.__getitem__)[:max_blocks]
            self.repack_runs += 1
        indexes: list[int] = []
        expected: list = []
        payloads: list = []
        for block in chosen:
            with self._lock:
                objs = list(self._objs.get(block, {}).values())
                slots = dict(self._slots.get(block, {}))
            if not objs:
                continue
            data = self.backing.read_block(block)
            if data is None:
                continue  # freed meanwhile
            for entry in objs:
                indexes.append(slots[entry.offset])
                expected.append(entry)
                payloads.append(data[entry.offset : entry.offset + entry.length])
        codecs = [entry.codec for entry in expected]
        out = self.store_pages(store, indexes, expected, payloads, codecs)
        with self._lock:
            self.repacked_blocks += len(chosen)
            self.repacked_objects += out["written"]
        out["blocks"] = len(chosen)
        return out

    # -- accounting ------------------------------------------------------------
    def blocks_in_use(self) -> int:
        with self._lock:
            return len(self._objs)

    def stats(self) -> dict:
        with self._lock:
            live = sum(self._live.values())
            blocks = len(self._objs)
            return {
                "bd_packed_bytes": live,
                "bd_dead_blocks": len(self._dead),
                "bd_repack_runs": self.repack_runs,
                "bd_repacked_blocks": self.repacked_blocks,
                "bd_repacked_pages": self.repacked_objects,
                "bd_pack_fill_percent": round(100 * live / (blocks * PAGE_SIZE), 1)
                if blocks
                else 0.0,
            }

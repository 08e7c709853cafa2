"""What a slot may hold besides the store's own kinds, shared by the store
and its scans (a leaf inside the engine: it imports only the arena).

``HUGE_THRESHOLD``: a compressed page longer than this is stored raw (huge).
zram stores pages that compress to zsmalloc's huge_class_size or more raw:
3632 bytes less the 7 of its in-object handle since Linux 6.3 (3264 before).
Our arena keeps no handle in the object, so the cut is its largest class
that still packs more than one object per block: 3632 bytes (arena.py).

Page flags (zram's names) live in the store's flags table, one byte a slot.
No state, no locking.
"""

from __future__ import annotations

from .arena import MAX_COMPRESSED_BYTES

HUGE_THRESHOLD = MAX_COMPRESSED_BYTES + 1

# page flags (zram's names)
IDLE = 1
INCOMPRESSIBLE = 2
# Stored cold (recompressed or written back) and not read since: the next
# read is a promotion, and clears it (docs/design.md#cold-pages).
COLD = 4


class Recompressed:
    """A page compressed again with the store's secondary codec (what
    ``commit`` installs; stored in the arena with ``FLAG_BIT``)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data

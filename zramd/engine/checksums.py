"""Per-page checksums, keyed by name: a function page -> int.

Computed on the stable page data at write time and verified after
decompression on every read (the store keeps one 64-bit value per page in an
``array('Q')``).  Measured per 4 KiB page on this machine kind:
xxh3 (64-bit) 0.14 us, zlib's crc32 1.3 us (as much as lz4 compression
itself), so xxh3 is the default.  No state, no locking.
"""

from __future__ import annotations

import zlib

import xxhash

CHECKSUMS = {
    "xxh3": xxhash.xxh3_64_intdigest,
    "crc32": zlib.crc32,
}


def make_checksum(name: str | None):
    """The checksum function for ``name`` (None or 'none': no checksums)."""
    if name in (None, "none", "off"):
        return None
    try:
        return CHECKSUMS[name]
    except KeyError:
        raise ValueError(
            f"unknown checksum {name!r} (choose from none, {', '.join(CHECKSUMS)})"
        ) from None

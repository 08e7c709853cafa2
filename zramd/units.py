"""Sizes and page arithmetic.

Sizes are written like nbdkit and zram write them: a whole number of bytes,
optionally with a binary suffix (``K``, ``M``, ``G``, ``T``, ``P``, also
``KiB``/``KB``: always powers of 1024, as in ``echo 1G > disksize``).
The store works in 4 KiB pages, so device sizes must be whole pages.

No state, no locking.
"""

from __future__ import annotations

import os
import re

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

_SUFFIX = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}
_SIZE_RE = re.compile(r"^\s*(\d{1,20})\s*([kmgtpe]?)(?:i?b)?\s*$", re.IGNORECASE)

# NBD carries the export size as a signed 64-bit number: docs/design.md#sizes-and-their-limits
MAX_SIZE_BYTES = (1 << 63) - 1


def parse_size(text: str | int) -> int:
    """Return ``text`` (e.g. ``"1G"``, ``"4096"``, ``"512MiB"``) in bytes.

    Raises ValueError with a message naming the bad value.
    """
    if isinstance(text, bool):
        raise ValueError(f"not a size: {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError("must not be negative")
        nbytes = text
    else:
        if not isinstance(text, str) or len(text) > 64:
            raise ValueError("not a size (use bytes or a K/M/G/T suffix, e.g. 1G)")
        m = _SIZE_RE.match(text)
        if not m:
            raise ValueError(f"not a size: {text!r} (use bytes or a K/M/G/T suffix, e.g. 1G)")
        nbytes = int(m.group(1)) << _SUFFIX[m.group(2).lower()]
    if nbytes > MAX_SIZE_BYTES:
        raise ValueError(f"must be at most {MAX_SIZE_BYTES} bytes (2^63-1, NBD's limit)")
    return nbytes


def format_size(nbytes: int) -> str:
    """Shortest exact binary form: 1073741824 -> '1G', 4096 -> '4K', 1000 -> '1000'."""
    for suffix, shift in (("E", 60), ("P", 50), ("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if nbytes and nbytes % (1 << shift) == 0:
            return f"{nbytes >> shift}{suffix}"
    return str(nbytes)


def human_size(nbytes: float) -> str:
    """Approximate human form for display: 1536 -> '1.5K'."""
    value = float(nbytes)
    for suffix in ("B", "K", "M", "G", "T"):
        if abs(value) < 1024 or suffix == "T":
            return f"{value:.0f}{suffix}" if suffix == "B" else f"{value:.1f}{suffix}"
        value /= 1024
    raise AssertionError("unreachable")


def physical_memory_bytes() -> int:
    """The machine's RAM in bytes (the bound for mem_limit and watermarks)."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def parse_device_size(text: str | int) -> int:
    """A device size: positive and a whole number of 4 KiB pages."""
    nbytes = parse_size(text)
    if nbytes == 0:
        raise ValueError("size must be greater than 0")
    if nbytes % PAGE_SIZE:
        raise ValueError(f"size {text} is not a whole number of {PAGE_SIZE}-byte pages")
    # zram allows a disksize above RAM, but the per-page arrays (at least
    # PAGE_ARRAY_BYTES per page) must fit in RAM + swap: docs/design.md#sizes-and-their-limits
    table_bytes = nbytes // PAGE_SIZE * PAGE_ARRAY_BYTES
    if table_bytes > addressable_bytes():
        raise ValueError(
            f"size {text} can never be served: its per-page arrays ({table_bytes} bytes) "
            "do not fit in RAM + swap"
        )
    return nbytes


# Lower bound of the bytes the store keeps per page (one 8-byte slot).
PAGE_ARRAY_BYTES = 8


def addressable_bytes() -> int:
    """RAM + swap in bytes (SwapTotal from /proc/meminfo, 0 if unreadable)."""
    swap_bytes = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("SwapTotal:"):
                    swap_bytes = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return physical_memory_bytes() + swap_bytes

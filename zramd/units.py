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
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgtpe]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Return ``text`` (e.g. ``"1G"``, ``"4096"``, ``"512MiB"``) in bytes.

    Raises ValueError with a message naming the bad value.
    """
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"size must not be negative: {text}")
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ValueError(f"not a size: {text!r} (use bytes or a K/M/G/T suffix, e.g. 1G)")
    return int(m.group(1)) << _SUFFIX[m.group(2).lower()]


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
    return nbytes

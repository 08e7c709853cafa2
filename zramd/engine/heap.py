"""Giving the process heap back to the OS, for ``compact``.

The arena's blocks are mmaps and go back when emptied, but two other heaps
keep what a busy server once used: glibc's malloc arenas (nbdkit's request
buffers, Python objects over 512 bytes; a thread's arena is only trimmed
from its top) and garbage cycles the collector has not reached yet.
``trim()`` runs a full collection, then ``malloc_trim(0)``, which returns
every free page of every malloc arena (MADV_DONTNEED), not only the tops.
Measured after fill, rewrite, full trim and ``compact`` of a 1 GiB device:
docs/design.md#page-arena-and-memory-accounting.

No state; ``malloc_trim`` takes each arena's lock in turn, so it is safe
under I/O (the callers hold no zramd lock).
"""

from __future__ import annotations

import ctypes
import gc

from ..libc import LIBC


def trim(collect: bool = True) -> bool:
    """Collect garbage (unless ``collect`` is False: a full collection
    holds the GIL for as long as it walks every object) and return free
    malloc pages; False where the C library has no malloc_trim (not
    glibc).  ctypes releases the GIL for the call."""
    if collect:
        gc.collect()
    try:
        malloc_trim = LIBC.malloc_trim
    except AttributeError:
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    malloc_trim(0)
    return True

"""Serving swap to the host that runs the server.

Swap over NBD to the same host can deadlock: to free memory the kernel swaps
out to us, and we need memory (page faults, allocations, our own dirty page
cache) to accept it.  Two defences, both applied by ``zramd serve --swap``:
nbdkit's ``--swap`` locks the process into RAM (mlockall), and
``PR_SET_IO_FLUSHER`` (Linux 5.6+, needs CAP_SYS_RESOURCE) makes the kernel
treat our own allocations as if from an I/O path (no recursion into I/O
during reclaim), as it does for loop and nbd helpers.  No state, no locking.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

PR_SET_IO_FLUSHER = 57


def set_io_flusher() -> str | None:
    """Mark this process as an I/O flusher; return None, or why not."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) == 0:
        return None
    return os.strerror(ctypes.get_errno())

"""The C library, for the few calls Python's ``os`` module lacks (mlockall,
prctl, fallocate's hole punching, malloc_trim).

Loaded once, from the process's own symbols (they include libc's):
``ctypes.util.find_library`` would import subprocess, shutil and tempfile,
2 MiB of RSS.  ``use_errno``: a failed call's errno is in
``ctypes.get_errno()``.  No other state; ctypes calls need no lock.
"""

from __future__ import annotations

import ctypes
import os

LIBC = ctypes.CDLL(None, use_errno=True)


def prctl(option: int, arg: int = 0) -> str | None:
    """``prctl(option, arg, 0, 0, 0)``: None when it succeeded, else why not."""
    if LIBC.prctl(option, arg, 0, 0, 0) == 0:
        return None
    return os.strerror(ctypes.get_errno())

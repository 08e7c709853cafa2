"""The backing file: where written-back pages live (zram's backing_dev).

Data structure
--------------
A regular file (created sparse if missing, sized to ``size_bytes``) or a
block device, cut into 4 KiB blocks.  Blocks are handed out from
``_free`` (a list used as a stack of freed block numbers, so recently freed
blocks are reused first) and then from ``_next`` upward; ``_used`` counts
blocks in use.  Pages are stored raw (uncompressed), as zram does.

The file is locked with ``flock(LOCK_EX | LOCK_NB)`` for as long as it is
open, so a second zramd refuses it instead of sharing it.

Locking
-------
``_lock`` guards ``_free``, ``_next`` and ``_used``.  ``free`` is called
with the store's lock held (store lock, then ours: never the other way).
``read``/``write`` use ``os.pread``/``os.pwrite`` on the shared descriptor
(no lock; they release the GIL).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading

from .units import PAGE_SIZE


class BackingError(OSError):
    """The backing file cannot be used; the message is one line."""


class BackingFull(BackingError):
    """No free block is left."""


def open_backing_fd(path: str, size_bytes: int) -> tuple[int, int]:
    """Open (creating a sparse regular file if missing) and lock ``path``;
    return ``(fd, capacity in bytes)``."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise BackingError(
            exc.errno, f"backing file {path} is not writable: {exc.strerror}"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackingError(
                errno.EBUSY, f"backing file {path} is in use by another zramd"
            ) from None
        st = os.fstat(fd)
        if stat.S_ISBLK(st.st_mode):
            capacity = os.lseek(fd, 0, os.SEEK_END)
        elif stat.S_ISREG(st.st_mode):
            capacity = st.st_size
            if capacity < size_bytes:
                os.ftruncate(fd, size_bytes)  # sparse: blocks are allocated as written
                capacity = os.fstat(fd).st_size
                if capacity < size_bytes:  # e.g. a file in /proc
                    raise BackingError(
                        errno.EINVAL, f"backing file {path} cannot be sized to {size_bytes} bytes"
                    )
        else:
            raise BackingError(
                errno.EINVAL, f"backing file {path} is neither a regular file nor a block device"
            )
        if capacity < PAGE_SIZE:
            raise BackingError(errno.EINVAL, f"backing file {path} holds no whole 4 KiB block")
        return fd, capacity
    except BaseException:
        os.close(fd)
        raise


class BackingFile:
    def __init__(self, path: str, size_bytes: int):
        self.path = path
        self.fd, capacity = open_backing_fd(path, size_bytes)
        self.nr_blocks = capacity // PAGE_SIZE
        self._lock = threading.Lock()
        self._free: list[int] = []
        self._next = 0
        self._used = 0
        self.write_errors = 0
        self.last_error = ""

    def alloc(self) -> int:
        with self._lock:
            if self._free:
                block = self._free.pop()
            elif self._next < self.nr_blocks:
                block = self._next
                self._next += 1
            else:
                raise BackingFull(
                    errno.ENOSPC, f"backing file {self.path} is full ({self.nr_blocks} blocks)"
                )
            self._used += 1
            return block

    def free(self, block: int) -> None:
        with self._lock:
            self._free.append(block)
            self._used -= 1

    def write(self, block: int, page) -> None:
        """Write one page; an error is counted and raised (the caller keeps
        the page in RAM and frees the block)."""
        try:
            n = os.pwrite(self.fd, page, block * PAGE_SIZE)
            if n != PAGE_SIZE:
                raise OSError(errno.ENOSPC, f"short write ({n} of {PAGE_SIZE} bytes)")
        except OSError as exc:
            with self._lock:
                self.write_errors += 1
                self.last_error = f"{exc.strerror or exc}"
            raise

    def read(self, block: int) -> bytes:
        data = os.pread(self.fd, PAGE_SIZE, block * PAGE_SIZE)
        if len(data) != PAGE_SIZE:
            raise OSError(errno.EIO, f"short read of backing block {block}")
        return data

    def used_blocks(self) -> int:
        with self._lock:
            return self._used

    def touched_blocks(self) -> int:
        """Blocks ever handed out (freed ones are reused before new ones)."""
        with self._lock:
            return self._next

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # also drops the flock
            self.fd = -1

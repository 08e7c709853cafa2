"""The backing file: where written-back pages live (zram's backing_dev).

Data structure
--------------
A regular file (created if missing, sparse, sized to ``size_bytes``) or a
block device, cut into 4 KiB blocks.  Blocks are handed out from ``_free``
(a list used as a stack of freed *and already discarded* block numbers, so
recently freed blocks are reused first) and then from ``_next`` upward;
``_used`` counts blocks in use.  A freed block first goes to ``_dirty``: it
still holds a page's data, and it is reused only after it was discarded
(``discard_freed``).  A block holds a raw page, as zram stores it, or,
with ``--writeback-compressed``, a block the packer (packlog.py) built of
several compressed pages; either way this layer sees whole 4 KiB blocks,
plain or encrypted (below).  ``write_many`` writes a batch of blocks, one
``pwritev`` per run of contiguous blocks; if it fails part way it raises
``PartialWrite`` naming the blocks written whole (those are in use, the
others are not).  ``read_block`` returns None for a block not in use or
freed or rewritten during the read; ``read`` makes that zeros.

Security (docs/design.md#security)
----------------------------------
- ``open_backing`` never follows a symbolic link, in the file name or in
  any directory above it: it walks the absolute path with ``openat`` and
  ``O_NOFOLLOW`` from ``/`` and refuses a link with one line naming it.
- A missing file is created with ``O_CREAT | O_EXCL``, mode 0600; an
  existing file or block device must belong to our effective uid and have
  no group or other permission bits.
- A freed block is discarded before it is reused: ``fallocate(PUNCH_HOLE
  | KEEP_SIZE)`` on a file, ``BLKDISCARD`` on a device (falling back to
  zeroing where that is not supported).  ``discard_freed`` runs outside the
  store's lock, in the request thread that freed the block, before the
  reply (see device.py), and on the writeback thread.
- Opening an existing file punches it whole (a device: one BLKDISCARD,
  best effort, never a zeroing pass over a whole disk): old contents are
  meaningless to a new zramd, and a crashed one may have left pages there.
  ``close`` (clean stop) discards every block below ``_next`` (all we ever
  wrote; a device with BLKZEROOUT, which promises zeros) and removes a
  file we created; an existing file or device is kept, emptied.

Encryption at rest (``cipher``: ``aes-256-gcm`` or ``chacha20-poly1305``)
-------------------------------------------------------------------------
The key is 32 random bytes made in this process and never written
anywhere.  Each write takes the next value of a 64-bit counter (``_wctr``);
the 12-byte nonce is that counter (8 bytes, little-endian) followed by the
low 32 bits of the block number, so no nonce repeats under one key.  The
block number (8 bytes, little-endian) is the associated data, so a block
copied to another place does not authenticate.  The file keeps the 4096
ciphertext bytes at the block's usual offset (same layout, still 4 KiB
aligned, holes still punchable); the 16-byte tag and the counter live in a
sidecar in memory: ``_tags`` (a bytearray, 16 bytes per block) and
``_ctrs`` (an ``array('Q')``, 0 = block not in use), grown as ``_next``
grows: 24 bytes of RAM per block ever used.  A block that does not
authenticate is an EIO, counted in ``auth_errors``; a replayed older
ciphertext fails too (its counter is not the one in the sidecar).

Check of plain pages (docs/design.md#a-page-never-reads-back-as-other-data)
---------------------------------------------------------------------------
Without encryption, each block in use has ``page_check(page)`` (xxh3_64 of
the page with its low bit set, so never 0) in ``_checks`` (an
``array('Q')``, 0 = block not in use), grown like the sidecar: 8 bytes of
RAM per block ever used.  ``read`` verifies it; a mismatch (the file was
cut and grew back as holes, or changed outside zramd) is an EIO counted in
``checksum_errors``, never data.  Encrypted pages need no check: the AEAD
tag and counter authenticate them already.  ``check_size`` notices a
regular file cut below blocks in use (one log line per new size): it runs
at each writeback run and on a short read or a failed check.

Locking
-------
``_lock`` guards ``_free``, ``_dirty``, ``_next``, ``_used``, the sidecar
and the counters, except that an item of ``_checks`` is stored by ``write``
and loaded by ``read`` without it: one array item, atomic under the GIL,
and stored only by the block's holder (the writer that allocated it) or
``free`` (under the lock).  ``free`` is called with the store's lock held (store
lock, then ours: never the other way); it only moves the block to
``_dirty``.  ``read``/``write``/``discard_freed`` do their system calls
without our lock (they release the GIL).  A reader racing with a free: the
store loads the slot again when it no longer holds the ``Backed`` entry it
read (store.py), so ``read`` returns zeros instead of an EIO when the block
was freed or rewritten during the read (its sidecar counter or check
changed).
"""

from __future__ import annotations

import array
import ctypes
import errno
import fcntl
import logging
import os
import stat
import struct
import threading

import xxhash

from .. import safeopen
from ..libc import LIBC
from ..units import PAGE_SIZE

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
BLKDISCARD = 0x1277  # _IO(0x12, 119)
BLKZEROOUT = 0x127F  # _IO(0x12, 127)
CIPHERS = ("aes-256-gcm", "chacha20-poly1305")
TAG_BYTES = 16
# errnos meaning "this file or device cannot discard": fall back to zeroing
_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENOTTY)
ZERO_PAGE = bytes(PAGE_SIZE)
# the sidecar (counters and tags, or checks) grows this many blocks at a time:
# docs/design.md#a-page-never-reads-back-as-other-data
SIDECAR_STEP_BLOCKS = 4096
# Most pages in one pwritev: well below IOV_MAX (1024) on Linux.
IOV_MAX_PAGES = 256

log = logging.getLogger("zramd.backing")

LIBC.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
LIBC.fallocate.restype = ctypes.c_int


class BackingError(OSError):
    """The backing file cannot be used; the message is one line."""


class BackingFull(BackingError):
    """No free block is left."""


class PartialWrite(OSError):
    """A write of several blocks failed; ``written`` holds the blocks that
    were written whole before it (they are in use, as after a success)."""

    def __init__(self, err: int, message: str, written: set[int]):
        super().__init__(err, message)
        self.written = written


def punch_hole(fd: int, offset: int, length: int) -> None:
    """fallocate(PUNCH_HOLE | KEEP_SIZE): the range reads as zeros and its
    disk blocks go back to the filesystem."""
    if LIBC.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def page_check(page) -> int:
    """The check kept in RAM for a plain written-back page: never 0 (0 marks
    a block not in use)."""
    return xxhash.xxh3_64_intdigest(page) | 1


def alloc_blocks(layer, count: int) -> tuple[list[int], str | None]:
    """Up to ``count`` blocks of a block layer (this file's ``BackingFile``
    or any object with ``alloc``: the remote tier), and why fewer (None if
    all came): in one call where the layer has ``alloc_many``."""
    alloc_many = getattr(layer, "alloc_many", None)
    if alloc_many is not None:
        blocks = alloc_many(count)
        return blocks, None if len(blocks) == count else layer.full_message()
    blocks = []
    for _ in range(count):
        try:
            blocks.append(layer.alloc())
        except BackingFull as exc:
            return blocks, str(exc)
    return blocks, None


def make_aead(cipher: str):
    """An AEAD object with a fresh random key that lives only in it."""
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
    except ImportError:  # pragma: no cover - a dependency of the package
        raise BackingError(
            errno.EINVAL,
            "backing file encryption needs the cryptography package (pip install cryptography)",
        ) from None
    if cipher == "aes-256-gcm":
        return AESGCM(AESGCM.generate_key(256))
    if cipher == "chacha20-poly1305":
        return ChaCha20Poly1305(ChaCha20Poly1305.generate_key())
    raise BackingError(
        errno.EINVAL, f"unknown cipher {cipher!r} (choose from {', '.join(CIPHERS)})"
    )


def seal(aead, ctr: int, block: int, page) -> bytes:
    """Encrypt one page for ``block`` under write counter ``ctr`` (module
    docstring: nonce and associated data): the 4096 ciphertext bytes, then
    the 16-byte tag.  Shared with the remote tier (remote.py)."""
    nonce = ctr.to_bytes(8, "little") + (block & 0xFFFFFFFF).to_bytes(4, "little")
    return aead.encrypt(nonce, bytes(page), block.to_bytes(8, "little"))


def unseal(aead, ctr: int, block: int, data: bytes, tag: bytes) -> bytes:
    """The page ``seal`` sealed; raises (cryptography's InvalidTag) when the
    ciphertext, the tag, the counter or the block do not match."""
    nonce = ctr.to_bytes(8, "little") + (block & 0xFFFFFFFF).to_bytes(4, "little")
    return aead.decrypt(nonce, data + tag, block.to_bytes(8, "little"))


def _walk_to_parent(path: str) -> tuple[int, str]:
    """safeopen.walk_to_parent, its errors as BackingError."""
    try:
        return safeopen.walk_to_parent(path, "backing file")
    except safeopen.UnsafePath as exc:
        raise BackingError(exc.errno, exc.strerror) from None
    except OSError as exc:
        raise BackingError(
            exc.errno, f"backing file {path} is not writable: {exc.strerror}"
        ) from None


def check_owner_only(path: str, st: os.stat_result) -> None:
    """Refuse a file or device that is not ours alone (one line)."""
    try:
        safeopen.check_owner_only("backing file", path, st)
    except safeopen.UnsafePath as exc:
        raise BackingError(exc.errno, exc.strerror) from None


class Opened:
    """What ``open_backing`` found: ``fd``, ``capacity`` (bytes), whether we
    ``created`` the file, whether it is a block device, and the directory
    (``dir_fd``, ``name``) to remove a created file from."""

    def __init__(self, fd, capacity, created, is_device, dir_fd, name):
        self.fd, self.capacity, self.created = fd, capacity, created
        self.is_device, self.dir_fd, self.name = is_device, dir_fd, name

    def close(self) -> None:
        for fd in (self.fd, self.dir_fd):
            if fd >= 0:
                os.close(fd)  # the first also drops the flock
        self.fd = self.dir_fd = -1


def _not_writable(path: str, exc: OSError) -> BackingError:
    return BackingError(exc.errno, f"backing file {path} is not writable: {exc.strerror}")


def _open_existing(path: str, name: str, dir_fd: int, flags: int) -> int:
    """Open an existing file or device, refusing what is not ours alone."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except OSError as exc:
        raise _not_writable(path, exc) from None
    if stat.S_ISLNK(st.st_mode):
        raise BackingError(
            errno.ELOOP, safeopen.link_message("backing file", path, os.path.abspath(path))
        )
    if stat.S_ISDIR(st.st_mode):
        raise BackingError(errno.EISDIR, f"backing file {path} is not writable: Is a directory")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise BackingError(
            errno.EINVAL, f"backing file {path} is neither a regular file nor a block device"
        )
    check_owner_only(path, st)  # before opening: opening a device can act
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        raise _not_writable(path, exc) from None


def open_backing(path: str, size_bytes: int) -> Opened:
    """Open and lock ``path`` (creating an owner-only sparse file if missing)
    after the checks in the module docstring."""
    dir_fd, name = _walk_to_parent(path)
    fd = -1
    created = False
    try:
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
        try:
            fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dir_fd)
            created = True
        except FileExistsError:
            pass
        except OSError as exc:
            raise _not_writable(path, exc) from None
        if not created:
            fd = _open_existing(path, name, dir_fd, flags)
        st = os.fstat(fd)
        check_owner_only(path, st)  # the object we opened, whatever the name is now
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackingError(
                errno.EBUSY, f"backing file {path} is in use by another zramd"
            ) from None
        if stat.S_ISBLK(st.st_mode):
            capacity = os.lseek(fd, 0, os.SEEK_END)
        elif stat.S_ISREG(st.st_mode):
            capacity = st.st_size
            if capacity < size_bytes:
                try:
                    os.ftruncate(fd, size_bytes)  # sparse: blocks are allocated as written
                except OSError:
                    pass
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
        return Opened(fd, capacity, created, stat.S_ISBLK(st.st_mode), dir_fd, name)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        if created:
            _unlink_quietly(name, dir_fd)
        os.close(dir_fd)
        raise


def _unlink_quietly(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def check_backing(path: str, size_bytes: int) -> None:
    """Every check ``BackingFile`` makes, without leaving anything behind
    (a file created to check it is removed again): for the wrapper process,
    so that a bad backing file is one line before nbdkit starts."""
    opened = open_backing(path, size_bytes)
    if opened.created:
        _unlink_quietly(opened.name, opened.dir_fd)
    opened.close()


class BackingFile:
    def __init__(self, path: str, size_bytes: int, cipher: str | None = None):
        self.path = path
        self._aead = make_aead(cipher) if cipher else None
        self.cipher = cipher
        self._opened = open_backing(path, size_bytes)
        self.fd = self._opened.fd
        self.created = self._opened.created
        self.is_device = self._opened.is_device
        self.nr_blocks = self._opened.capacity // PAGE_SIZE
        self._lock = threading.Lock()
        self._free: list[int] = []
        self._dirty: list[int] = []
        self._next = 0
        self._used = 0
        self._wctr = 0
        self._ctrs = array.array("Q")
        self._tags = bytearray()
        self._checks = array.array("Q")  # plain pages only (module docstring)
        self._cut_size: int | None = None  # the cut file size logged last
        self.write_errors = 0
        self.last_error = ""
        self.discarded_blocks = 0
        self.discard_errors = 0
        self.auth_errors = 0
        self.checksum_errors = 0
        self.freed_total = 0  # blocks of written-back pages ever freed: the stall watches it
        if not self.created:
            # a crashed zramd may have left pages here; they are meaningless to us
            self._discard(0, self.nr_blocks, how="start")

    # -- blocks ------------------------------------------------------------
    def alloc(self) -> int:
        for attempt in (0, 1):
            with self._lock:
                if self._free:
                    block = self._free.pop()
                elif self._next < self.nr_blocks:
                    block = self._next
                    self._next += 1
                    if len(self._marks()) < self._next:
                        self._grow_sidecar()
                elif self._dirty and not attempt:
                    block = None
                else:
                    raise BackingFull(errno.ENOSPC, self.full_message())
                if block is not None:
                    self._used += 1
                    return block
            self.discard_freed()  # freed blocks wait to be discarded: do it now
        raise AssertionError("unreachable")

    def alloc_many(self, count: int) -> list[int]:
        """Up to ``count`` blocks, as ``count`` calls of ``alloc`` would hand
        them out but under one hold of the lock (writeback's batches); fewer
        only when the file is full (``full_message`` says so)."""
        blocks: list[int] = []
        counted = 0  # of blocks, those in _used already
        for attempt in (0, 1):
            with self._lock:
                free = self._free
                take = min(count - len(blocks), len(free))
                if take:
                    blocks += reversed(free[-take:])  # the order of pops
                    del free[-take:]
                take = min(count - len(blocks), self.nr_blocks - self._next)
                if take:
                    first = self._next
                    self._next += take
                    while len(self._marks()) < self._next:
                        self._grow_sidecar()
                    blocks += range(first, first + take)
                self._used += len(blocks) - counted
                counted = len(blocks)
                if counted == count or attempt or not self._dirty:
                    return blocks
            self.discard_freed()  # freed blocks wait to be discarded: do it now
        return blocks

    def full_message(self) -> str:
        return f"backing file {self.path} is full ({self.nr_blocks} blocks)"

    def free(self, block: int) -> None:
        """Give back the block of a written-back page (trimmed, rewritten;
        called under the store's lock: no system call here); it is reused
        only after ``discard_freed``.  Counted in ``freed_total``."""
        self._release(block, freed=1)

    def give_back(self, block: int) -> None:
        """Give back a block writeback took but never installed (its write
        failed, or the page changed meanwhile), as ``free`` does, but not
        in ``freed_total``: it was free before that run, so no space came
        back (a stall must not end for it, see writeback.py)."""
        self._release(block, freed=0)

    def _release(self, block: int, freed: int) -> None:
        with self._lock:
            self._dirty.append(block)
            self._used -= 1
            self.freed_total += freed
            self._marks()[block] = 0  # a racing reader sees the change

    def _marks(self) -> array.array:
        """Per block, nonzero while in use: the counters or the checks."""
        return self._ctrs if self._aead is not None else self._checks

    def _grow_sidecar(self) -> None:
        """A step more of sidecar: 96 KiB encrypted, 32 KiB of checks (lock held)."""
        grow = min(SIDECAR_STEP_BLOCKS, self.nr_blocks - len(self._marks()))
        if self._aead is not None:
            self._ctrs.extend([0] * grow)
            self._tags.extend(bytes(TAG_BYTES * grow))
        else:
            self._checks.extend([0] * grow)

    def has_freed(self) -> bool:
        return bool(self._dirty)

    def discard_freed(self) -> None:
        """Discard every freed block (punch it out of the file), then make it
        reusable.  Called outside the store's lock."""
        with self._lock:
            blocks, self._dirty = self._dirty, []
        if not blocks:
            return
        blocks.sort()
        start = prev = blocks[0]
        for block in blocks[1:] + [None]:
            if block is not None and block == prev + 1:
                prev = block
                continue
            self._discard(start, prev - start + 1)
            if block is not None:
                start = prev = block
        with self._lock:
            self._free.extend(reversed(blocks))
            self.discarded_blocks += len(blocks)

    def _discard(self, first: int, count: int, how: str = "free") -> None:
        """Make blocks ``first .. first+count-1`` hold nothing of their data.

        ``free`` (a freed block): punch a hole in a file, BLKDISCARD on a
        device, and where that is unsupported BLKZEROOUT or zeros written.
        ``stop`` (clean stop): the same for a file; a device is zeroed with
        BLKZEROOUT, which promises zeros where a discard may not.  ``start``
        (leftovers of an earlier run, possibly a whole disk): only what is
        cheap, punch or BLKDISCARD, never writing zeros over the range.
        """
        offset, length = first * PAGE_SIZE, count * PAGE_SIZE
        if not length:
            return
        try:
            if not self.is_device:
                try:
                    punch_hole(self.fd, offset, length)
                    return
                except OSError as exc:
                    if exc.errno not in _UNSUPPORTED:
                        raise
                    if how == "start":
                        return
            else:
                rng = struct.pack("QQ", offset, length)
                if how != "stop":
                    try:
                        fcntl.ioctl(self.fd, BLKDISCARD, rng)
                        return
                    except OSError as exc:
                        if exc.errno not in _UNSUPPORTED:
                            raise
                        if how == "start":
                            return
                try:
                    fcntl.ioctl(self.fd, BLKZEROOUT, rng)
                    return
                except OSError as exc:
                    if exc.errno not in _UNSUPPORTED:
                        raise
            for pos in range(offset, offset + length, PAGE_SIZE):
                os.pwrite(self.fd, ZERO_PAGE, pos)
        except OSError as exc:
            with self._lock:
                self.discard_errors += 1
                self.last_error = f"discard: {exc.strerror or exc}"

    # -- data ----------------------------------------------------------------
    def write(self, block: int, page) -> None:
        """Write one page; an error is counted and raised (the caller keeps
        the page in RAM and frees the block)."""
        self.write_many([block], [page])

    def write_many(self, blocks: list[int], pages: list) -> None:
        """Write ``pages[i]`` (4 KiB each) to ``blocks[i]``: one ``pwritev``
        per run of contiguous blocks (docs/design.md#packed-writeback).  An
        error is counted and raised as ``PartialWrite``: its ``written``
        holds the blocks written whole before it (marked in use, as after a
        success); the others are not in use (their holder gives them back)."""
        sealed = [self._seal(block, page) for block, page in zip(blocks, pages, strict=True)]
        done: list[int] = []  # item numbers written whole
        try:
            order = sorted(range(len(blocks)), key=blocks.__getitem__)
            run: list[int] = []
            for i in order + [-1]:
                if run and (i < 0 or blocks[i] != blocks[run[-1]] + 1 or len(run) >= IOV_MAX_PAGES):
                    self._pwritev(blocks[run[0]], [sealed[j][0] for j in run], run, done)
                    run = []
                if i >= 0:
                    run.append(i)
        except OSError as exc:
            self._mark(done, blocks, sealed)
            with self._lock:
                self.write_errors += 1
                self.last_error = f"{exc.strerror or exc}"
            raise PartialWrite(
                exc.errno or errno.EIO, exc.strerror or str(exc), {blocks[i] for i in done}
            ) from None
        self._mark(range(len(blocks)), blocks, sealed)

    def _mark(self, done, blocks: list[int], sealed: list) -> None:
        """Mark the written items ``done`` in use: checks, or counters and tags."""
        if self._aead is None:
            checks = self._checks
            for i in done:
                checks[blocks[i]] = sealed[i][1]  # one item, no lock (module docstring)
        else:
            with self._lock:
                for i in done:
                    block = blocks[i]
                    self._ctrs[block] = sealed[i][1]
                    self._tags[block * TAG_BYTES : (block + 1) * TAG_BYTES] = sealed[i][2]

    def _seal(self, block: int, page) -> tuple:
        """(bytes to write, the block's mark, its tag): the page itself and
        its check, or its ciphertext, counter and tag."""
        aead = self._aead
        if aead is None:
            return page, page_check(page), b""
        with self._lock:
            self._wctr += 1
            ctr = self._wctr
        sealed = seal(aead, ctr, block, page)
        return memoryview(sealed)[:PAGE_SIZE], ctr, sealed[PAGE_SIZE:]

    def _pwritev(self, first: int, bufs: list, items: list[int], done: list[int]) -> None:
        """Write ``bufs`` from block ``first`` on, adding to ``done`` the
        ``items`` written whole; a short write is tried again from where it
        stopped, so that a full disk ends in its own error."""
        whole = 0
        while whole < len(bufs):
            n = os.pwritev(self.fd, bufs[whole:], (first + whole) * PAGE_SIZE)
            if n < PAGE_SIZE:
                raise OSError(errno.ENOSPC, f"short write ({n} of {PAGE_SIZE} bytes)")
            done += items[whole : whole + n // PAGE_SIZE]
            whole += n // PAGE_SIZE  # a block written in part is written again

    def read(self, block: int) -> bytes:
        """The page in ``block``; zeros if it was freed or rewritten during
        the read (the store then loads the slot again)."""
        data = self.read_block(block)
        return ZERO_PAGE if data is None else data

    def read_backed(self, entry) -> bytes:
        """The page of a store's ``Backed`` entry (a raw page)."""
        return self.read(entry.block)

    def free_backed(self, entry) -> None:
        """The store let go of a ``Backed`` entry (a raw page)."""
        self.free(entry.block)

    def read_block(self, block: int) -> bytes | None:
        """The 4 KiB in ``block``, verified; None if the block was not in use
        or was freed or rewritten during the read."""
        aead = self._aead
        if aead is None:
            checks = self._checks
            check = checks[block] if block < len(checks) else 0  # one load: no lock
            if not check:
                return None
        else:
            with self._lock:
                ctr = self._ctrs[block] if block < len(self._ctrs) else 0
                tag = bytes(self._tags[block * TAG_BYTES : (block + 1) * TAG_BYTES])
            if not ctr:
                return None
        data = os.pread(self.fd, PAGE_SIZE, block * PAGE_SIZE)
        if len(data) != PAGE_SIZE:
            self.check_size()
            raise OSError(errno.EIO, f"short read of backing block {block}")
        if aead is None:
            if page_check(data) == check:
                return data
            with self._lock:
                if self._checks[block] != check:
                    return None  # freed or rewritten during our read
                self.checksum_errors += 1
            self.check_size()
            raise OSError(
                errno.EIO, f"backing block {block} does not match its check (changed outside zramd)"
            )
        try:
            return unseal(aead, ctr, block, data, tag)
        except Exception:  # cryptography's InvalidTag
            with self._lock:
                if self._ctrs[block] != ctr:
                    return None  # freed or rewritten during our read
                self.auth_errors += 1
            raise OSError(
                errno.EIO, f"backing block {block} failed authentication (changed outside zramd)"
            ) from None

    def check_size(self) -> None:
        """Log one line when a regular file was cut below blocks in use (once
        per size): the pages there read as errors, also after it grows again."""
        if self.is_device:
            return
        try:
            size_bytes = os.fstat(self.fd).st_size
        except OSError:
            return
        first = size_bytes // PAGE_SIZE  # the first block not whole in the file
        with self._lock:
            if first >= self._next:
                self._cut_size = None
                return
            if size_bytes == self._cut_size:
                return
            lost = sum(1 for mark in self._marks()[first : self._next] if mark)
            if not lost:
                return
            self._cut_size = size_bytes
        log.error(
            "backing file %s shrank to %d bytes (changed outside zramd): "
            "%d written-back pages beyond it read as I/O errors",
            self.path,
            size_bytes,
            lost,
        )

    # -- accounting ------------------------------------------------------------
    def used_blocks(self) -> int:
        with self._lock:
            return self._used

    def touched_blocks(self) -> int:
        """Blocks ever handed out (freed ones are reused before new ones)."""
        with self._lock:
            return self._next

    def stats(self) -> dict:
        with self._lock:
            return {
                "backing_discarded_blocks": self.discarded_blocks,
                "backing_discard_errors": self.discard_errors,
                "backing_encryption": self.cipher or "none",
                "bd_auth_errors": self.auth_errors,
                "bd_checksum_errors": self.checksum_errors,
            }

    def close(self) -> None:
        """Clean stop: discard everything we stored, remove a file we created
        (an existing file or device is kept, emptied); then close."""
        if self.fd < 0:
            return
        opened = self._opened
        # everything we wrote is below _next (an existing file was emptied at start)
        self._discard(0, self._next, how="stop")
        if not self.is_device:
            if self.created:
                try:  # only if the name still means our file
                    st, here = os.fstat(self.fd), os.lstat(opened.name, dir_fd=opened.dir_fd)
                    if (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino):
                        os.unlink(opened.name, dir_fd=opened.dir_fd)
                except OSError:
                    pass
        opened.close()
        self.fd = -1

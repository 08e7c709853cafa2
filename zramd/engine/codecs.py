"""Compression backends behind one small interface, keyed by name.

Like zram's ``zcomp`` front end over per-algorithm backends (and borgbackup's
compressor registry), each codec is a small class:

- ``compress(page, max_len)`` takes a 4 KiB bytes-like page and returns the
  compressed bytes, or ``None`` when the result would not be smaller than
  ``max_len`` bytes ("not worth compressing" is an ordinary result: the store
  then keeps the page raw, as a huge page).
- ``decompress(data)`` returns the 4 KiB page as ``bytes``.
- ``compress_pages(pages)`` compresses each 4 KiB bytes-like page of the
  list ``pages`` in one call and returns one output per page, not
  filtered by size (``None``: not compressed): the caller keeps a page
  raw whose output is not smaller than its threshold.  One call into the
  library for the batch where it has one (zstd), one context for the
  whole batch, no method call per page (docs/design.md#multi-page-requests).

Codecs are shared by all threads.  lz4.block is stateless.  zstd contexts are
not thread-safe, so ZstdCodec keeps a free list of contexts: a thread pops
one (or makes one), uses it, and pushes it back.  ``list.pop``/``append`` are
atomic under the GIL, so no lock is needed, and unlike ``threading.local``
the pool survives nbdkit's per-call thread-state churn.  Both libraries
release the GIL while (de)compressing.

What each costs per page is in docs/design.md#tuning-constants.
"""

from __future__ import annotations

import lz4.block

from ..units import PAGE_SIZE


class Codec:
    """Interface; see the module docstring."""

    name = "?"
    level: int | None = None

    def compress(self, page, max_len: int) -> bytes | None:
        raise NotImplementedError

    def decompress(self, data) -> bytes:  # data: bytes-like
        raise NotImplementedError

    def compress_pages(self, pages) -> list:
        compress = self.compress
        return [compress(page, PAGE_SIZE + 1) for page in pages]

    def describe(self) -> str:
        return self.name if self.level is None else f"{self.name}:{self.level}"


class NoneCodec(Codec):
    """No compression: every page that is not same-filled is kept raw."""

    name = "none"

    def compress(self, page, max_len):
        return None

    def compress_pages(self, pages):
        return [None] * len(pages)

    def decompress(self, data):
        raise ValueError("the none codec stores no compressed pages")


class Lz4Codec(Codec):
    """LZ4 block format, default mode (what zram's lz4 backend uses).

    The page size is known, so the 4-byte size header is not stored.
    """

    name = "lz4"

    def compress(self, page, max_len):
        out = lz4.block.compress(page, store_size=False)
        return out if len(out) < max_len else None

    def decompress(self, data):
        return lz4.block.decompress(data, PAGE_SIZE)  # positional: no keyword parsing

    def compress_pages(self, pages):
        compress = lz4.block.compress
        return [compress(page, store_size=False) for page in pages]


class ZstdCodec(Codec):
    """Zstandard at a level (1-22), frames without checksum or dict id."""

    name = "zstd"
    DEFAULT_LEVEL = 3
    MIN_LEVEL = 1
    MAX_LEVEL = 22

    def __init__(self, level: int | None = None):
        level = self.DEFAULT_LEVEL if level is None else level
        if not self.MIN_LEVEL <= level <= self.MAX_LEVEL:
            raise ValueError(f"zstd level must be {self.MIN_LEVEL}..{self.MAX_LEVEL}, not {level}")
        self.level = level
        # Imported here, not at the top: 1.1 MiB of RSS that an lz4 server
        # does not need (docs/design.md#page-arena-and-memory-accounting).
        import zstandard

        self._zstandard = zstandard
        self._cctx_pool: list = []
        self._dctx_pool: list = []

    def _cctx(self):
        """A compression context of the pool's (see the module docstring),
        or a new one; the caller gives it back with ``_cctx_pool.append``."""
        pool = self._cctx_pool
        if pool:
            return pool.pop()
        return self._zstandard.ZstdCompressor(
            level=self.level, write_checksum=False, write_dict_id=False, write_content_size=True
        )

    def compress(self, page, max_len):
        pool = self._cctx_pool
        cctx = self._cctx()
        try:
            out = cctx.compress(page)
        finally:
            pool.append(cctx)
        if len(out) >= max_len:
            return None
        # python-zstandard's result keeps its worst-case allocation (nearly
        # twice a 4 KiB page, docs/design.md#tuning-constants): store a copy.
        return bytes(memoryview(out))

    def compress_pages(self, pages):
        pool = self._cctx_pool
        cctx = self._cctx()
        try:
            # one call for the batch, in this thread (threads=0: no thread
            # started per call), the GIL released for all of it
            done = cctx.multi_compress_to_buffer(pages, threads=0)
        finally:
            pool.append(cctx)
        return [segment.tobytes() for segment in done]  # copies of their own size

    def decompress(self, data):
        pool = self._dctx_pool
        dctx = pool.pop() if pool else self._zstandard.ZstdDecompressor()
        try:
            return dctx.decompress(data, max_output_size=PAGE_SIZE)
        finally:
            pool.append(dctx)


CODECS: dict[str, type[Codec]] = {
    "lz4": Lz4Codec,
    "zstd": ZstdCodec,
    "none": NoneCodec,
}


# zram's recomp_algorithm takes priorities 1..3 (ZRAM_MAX_COMPS - 1).
MAX_RECOMP_CODECS = 3


def make_codecs(spec: str, level: int | None = None) -> list[Codec]:
    """The secondary codecs of ``--recomp-algorithm``, in priority order:
    ``NAME[:LEVEL],...`` (at most ``MAX_RECOMP_CODECS``; e.g. ``zstd:3,zstd:19``);
    ``level`` (``--recomp-level``) is the level of every zstd entry that
    names none.  ValueError: one line naming what is wrong."""
    names = [part.strip() for part in str(spec).split(",")]
    if not 1 <= len(names) <= MAX_RECOMP_CODECS or not all(names):
        raise ValueError(
            f"recomp_algorithm must be 1..{MAX_RECOMP_CODECS} algorithms "
            f"separated by commas, not {spec!r}"
        )
    if level is not None and not any(n.partition(":")[0] == "zstd" for n in names):
        raise ValueError(f"a compression level applies only to zstd, not {spec}")
    out = []
    for part in names:
        name, sep, level_text = part.partition(":")
        own = level if name == "zstd" else None
        if sep:
            try:
                own = int(level_text)
            except ValueError:
                raise ValueError(
                    f"level of {name} must be a whole number, not {level_text!r}"
                ) from None
        out.append(make_codec(name, own))
    return out


def describe_codecs(codecs) -> str | None:
    """``zstd:3,zstd:19``: a codec list as ``make_codecs`` reads it."""
    return ",".join(c.describe() for c in codecs) or None


def make_codec(name: str, level: int | None = None) -> Codec:
    """Build a codec by name; ValueError names what is wrong."""
    try:
        cls = CODECS[name]
    except KeyError:
        raise ValueError(
            f"unknown compression algorithm {name!r} (choose from {', '.join(CODECS)})"
        ) from None
    if cls is ZstdCodec:
        return ZstdCodec(level)
    if level is not None:
        raise ValueError(f"a compression level applies only to zstd, not {name}")
    return cls()

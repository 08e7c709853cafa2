"""Per-page costs behind zramd's tuning constants (docs/design.md#tuning-constants).

Run on an idle machine: `.venv/bin/python tools/microbench.py`.  Prints the
median of several rounds for each measurement; nothing is asserted (speed
targets live in `make bench`, as ratios against peers of the same run).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
import timeit
import zlib

import lz4.block
import xxhash

from zramd.engine.backing import BackingFile
from zramd.engine.codecs import make_codec
from zramd.engine.store import PageStore

PAGE = (b"swap-like text page 0123456789 " * 140)[:4096]
ROUNDS = 5


def per_call_us(stmt, number=20000) -> str:
    runs = [timeit.timeit(stmt, number=number) / number * 1e6 for _ in range(ROUNDS)]
    return f"{statistics.median(runs):6.2f} us  (min {min(runs):.2f}, max {max(runs):.2f})"


def parallel_speedup(chunk_pages: int, total_pages: int = 32000) -> float:
    """Pages per second with 2 threads compressing over 1 thread."""
    data = PAGE * chunk_pages

    def rate(nthreads):
        calls = total_pages // chunk_pages // nthreads

        def work():
            for _ in range(calls):
                lz4.block.compress(data, store_size=False)

        threads = [threading.Thread(target=work) for _ in range(nthreads)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return total_pages / (time.perf_counter() - start)

    return statistics.median(rate(2) / rate(1) for _ in range(ROUNDS))


def main() -> int:
    lz4c, zstd = make_codec("lz4"), make_codec("zstd", 3)
    lz4_out, zstd_out = lz4c.compress(PAGE, 4096), zstd.compress(PAGE, 4096)
    store = PageStore(64 << 20, lz4c)
    snap4, snap128 = bytearray(4096), bytearray(128 << 10)
    rows = [
        ("lz4 compress, one page", lambda: lz4c.compress(PAGE, 4096)),
        ("lz4 decompress, one page", lambda: lz4c.decompress(lz4_out)),
        ("zstd:3 compress, one page", lambda: zstd.compress(PAGE, 4096)),
        ("zstd:3 decompress, one page", lambda: zstd.decompress(zstd_out)),
        ("xxh3 checksum, one page", lambda: xxhash.xxh3_64_intdigest(PAGE)),
        ("crc32 checksum, one page", lambda: zlib.crc32(PAGE)),
        ("snapshot bytes(buf), 4 KiB", lambda: bytes(snap4)),
        ("snapshot bytes(buf), 128 KiB", lambda: bytes(snap128)),
        ("PageStore.write, one page, lz4", lambda: store.write(PAGE, 8192)),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        # the backing file, in the page cache: the cost of --backing-encrypt per page
        for cipher in (None, "aes-256-gcm", "chacha20-poly1305"):
            backing = BackingFile(f"{tmp}/{cipher}.img", 1 << 20, cipher)
            block = backing.alloc()
            backing.write(block, PAGE)
            name = cipher or "plain"
            rows += [
                (f"backing write, {name}", lambda b=backing, k=block: b.write(k, PAGE)),
                (f"backing read, {name}", lambda b=backing, k=block: b.read(k)),
            ]
        for label, stmt in rows:
            print(f"{label:34} {per_call_us(stmt)}")
    for word in (b"\x11", bytes(range(8))):
        page = word * (4096 // len(word))
        print(
            f"same-filled page {word.hex():16} lz4 {len(lz4c.compress(page, 4096) or b''):3} "
            f"bytes, zstd:3 {len(zstd.compress(page, 4096) or b''):3} bytes"
        )
    for pages in (1, 16):
        print(f"2 threads vs 1, {pages * 4:3} KiB per lz4 call: {parallel_speedup(pages):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

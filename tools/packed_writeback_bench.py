"""Raw against packed writeback on the real-program corpus (bench/corpus.py):
the backing file's allocated bytes (st_blocks * 512) and pages written back
per second, in interleaved rounds, medians and min-max spread.

Engine level (the store, the backing file and the writeback thread; nbdkit
takes no part in writeback): each round fills a fresh store with the
corpus, writes every page back with one writeback request by page range
(the public request), then reads the whole device back and compares.

    python3 tools/packed_writeback_bench.py [--size 64M] [--rounds 5] [--dir DIR]
        [--cipher aes-256-gcm]

Both formats run in every round, in alternating order, so that a noisy
neighbour or the page cache's state weighs on both alike; the ratio is
taken within each round, then its median and min-max are printed.  Pages
per CPU second (the writeback thread's own user and system time, the
reply's ``cpu_s``) are the steadier figure when others share the cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import corpus  # noqa: E402
from zramd.engine.backing import BackingFile  # noqa: E402
from zramd.engine.codecs import make_codec  # noqa: E402
from zramd.engine.packlog import PackLog  # noqa: E402
from zramd.engine.store import PageStore  # noqa: E402
from zramd.engine.writeback import Writeback  # noqa: E402
from zramd.units import PAGE_SIZE, parse_size  # noqa: E402

CHUNK_BYTES = 256 << 10


def one_run(
    data: bytes, workdir: str, packed: bool, batch: int, algorithm: str, cipher: str | None
) -> dict:
    size = len(data)
    codec = make_codec(algorithm)
    path = os.path.join(workdir, f"b-{os.getpid()}-{time.monotonic_ns()}.img")
    backing = BackingFile(path, size, cipher)
    pack = PackLog(backing, codec) if packed else None
    store = PageStore(size, codec, backing=pack or backing)
    wb = Writeback(store, backing, pack=pack, batch_pages=batch)
    wb.start()
    try:
        for off in range(0, size, CHUNK_BYTES):
            store.write(data[off : off + CHUNK_BYTES], off)
        in_ram = store.stats()["mem_used_total"]
        result = wb.request(None, pages=[(0, size // PAGE_SIZE - 1)])
        assert not result["error"], result
        os.fsync(backing.fd)
        allocated = os.stat(path).st_blocks * 512
        stats = wb.stats()
        t0 = time.perf_counter()
        buf = bytearray(size)
        store.read(memoryview(buf), 0)
        read_s = time.perf_counter() - t0
        assert buf == data, "read back differs"
        return {
            "written": result["written"],
            "pages_per_s": result["written"] / result["elapsed_s"],
            "pages_per_cpu_s": result["written"] / result["cpu_s"],
            "allocated_bytes": allocated,
            "bd_blocks": stats["bd_blocks"],
            "fill": stats.get("bd_pack_fill_percent", 100.0),
            "read_pages_per_s": stats.get("bd_count", 0) / read_s if read_s else 0,
            "mem_used_before": in_ram,
        }
    finally:
        wb.stop()


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3g} [{min(values):.3g}-{max(values):.3g}]"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="64M")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where backing files go (default: a temp dir)")
    ap.add_argument("--corpus-dir", default=os.path.join(tempfile.gettempdir(), "zramd-corpus"))
    ap.add_argument("--algorithm", default="lz4")
    ap.add_argument("--cipher", default=None, help="encrypt the backing file (--backing-encrypt)")
    ap.add_argument("--batches", default="64", help="comma-separated batch sizes")
    args = ap.parse_args()
    path, info = corpus.ensure(args.corpus_dir, parse_size(args.size))
    with open(path, "rb") as f:
        data = f.read()
    workdir = args.dir or tempfile.mkdtemp(prefix="zramd-packed-bench-")
    systems = [
        (f"{'packed' if packed else 'raw'}/b{batch}", packed, batch)
        for batch in (int(b) for b in args.batches.split(","))
        for packed in (False, True)
    ]
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in systems}
    for r in range(args.rounds):
        order = systems if r % 2 == 0 else systems[::-1]  # interleaved, alternating
        for name, packed, batch in order:
            runs[name].append(one_run(data, workdir, packed, batch, args.algorithm, args.cipher))
    print(
        f"corpus {path}: {info['pages']} pages {info['pages_by_program']}, {args.algorithm}, "
        f"backing encryption {args.cipher or 'none'}, {args.rounds} interleaved rounds"
    )
    print(
        f"{'system':12} {'pages/s':>24} {'pages/CPU s':>24} {'allocated MiB':>24} "
        f"{'bd_blocks':>22} fill%"
    )
    base = runs[systems[0][0]]
    for name, _, _ in systems:
        rs = runs[name]
        print(
            f"{name:12} {summary([x['pages_per_s'] for x in rs]):>24} "
            f"{summary([x['pages_per_cpu_s'] for x in rs]):>24} "
            f"{summary([x['allocated_bytes'] / 2**20 for x in rs]):>24} "
            f"{summary([x['bd_blocks'] for x in rs]):>22} "
            f"{summary([x['fill'] for x in rs])}"
        )
    for name, _, _ in systems[1:]:
        rs = runs[name]
        speed = [x["pages_per_s"] / b["pages_per_s"] for x, b in zip(rs, base, strict=True)]
        cpu = [x["pages_per_cpu_s"] / b["pages_per_cpu_s"] for x, b in zip(rs, base, strict=True)]
        space = [x["allocated_bytes"] / b["allocated_bytes"] for x, b in zip(rs, base, strict=True)]
        print(
            f"{name} / {systems[0][0]} (same round): pages/s x{summary(speed)}, "
            f"pages/CPU s x{summary(cpu)}, "
            f"allocated x{summary(space)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

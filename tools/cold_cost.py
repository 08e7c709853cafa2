#!/usr/bin/env python3
"""What the cold-page sweeper costs the 4 KiB read path: fio 4 KiB random
reads (its nbd engine, iodepth 16, as tests/e2e does) over the last
REGION_MIB of one device filled with compressible text, with the policy
off ("quiet", `zramd set recompress_after 0`) and while the sweeper
recompresses the rest of the device with zstd -19 ("sweep": it starts on
the first pages, so it is still sweeping when fio ends; the script checks
that it was), ROUNDS rounds, the order alternating; prints each run's p50/p99 read latency and the
median and min-max of the sweep/quiet p99 ratio (docs/design.md#cold-pages).

Usage: .venv/bin/python tools/cold_cost.py [ROUNDS]   (default 3)
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from zramd.control import call  # noqa: E402
from zramd.server import Server  # noqa: E402
from zramd.settings import Settings  # noqa: E402

PAGE = 4096
SIZE_MIB = 512
REGION_MIB = 64  # fio reads here: the end of the device, which the sweep reaches last
RUNTIME_S = 10
WORDS = b"cold pages flow to disk on their own while hot ones stay in memory".split()


def base_pages() -> list[bytes]:
    out = []
    for seed in range(64):
        rng = random.Random(seed)
        out.append(b" ".join(rng.choice(WORDS) for _ in range(1200))[:PAGE])
    return out


def fill(server: Server) -> None:
    import nbd

    bases = base_pages()
    h = nbd.NBD()
    h.connect_unix(server.socket_path)
    chunk = 1024  # pages
    for first in range(0, SIZE_MIB * 256, chunk):
        data = b"".join((b"%010d" % i + bases[i % 64])[:PAGE] for i in range(first, first + chunk))
        h.pwrite(data, first * PAGE)
    h.shutdown()


def fio_p99(server: Server, workdir: str) -> tuple[float, float, float]:
    """(p50 us, p99 us, IOPS) of 4 KiB random reads over the region."""
    cmd = [
        "fio", "--name=cold", "--ioengine=nbd", f"--uri={server.uri}",
        "--output-format=json", "--rw=randread", "--bs=4k", "--iodepth=16",
        f"--offset={SIZE_MIB - REGION_MIB}M", f"--size={REGION_MIB}M",
        "--time_based", f"--runtime={RUNTIME_S}", "--ramp_time=2",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=workdir).stdout
    job = json.loads(out[out.index("{") :])["jobs"][0]["read"]
    pct = job["clat_ns"]["percentile"]
    return pct["50.000000"] / 1000, pct["99.000000"] / 1000, job["iops"]


def measure(server: Server, kind: str, workdir: str) -> dict:
    """One fio run with the policy off (quiet) or sweeping (sweep)."""
    path = server.control_path
    if kind == "sweep":
        call(path, "set", recompress_after=1)  # every page is older than 1 s
        start = call(path, "stats")["cold_swept_pages"]
        while call(path, "stats")["cold_swept_pages"] == start:
            time.sleep(0.05)
    else:
        call(path, "set", recompress_after=0)
    before = call(path, "stats")
    p50, p99, iops = fio_p99(server, workdir)
    after = call(path, "stats")
    if kind == "sweep":  # still sweeping at the end, and not in fio's region
        assert after["cold_passes"] == 0, "the sweep ended during the run: make it longer"
        assert after["promoted_recompressed"] == 0
    return {"p50_us": p50, "p99_us": p99, "iops": round(iops),
            "swept_pages": after["cold_swept_pages"] - before["cold_swept_pages"]}  # fmt: skip


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    results: dict[str, list[dict]] = {"quiet": [], "sweep": []}
    with tempfile.TemporaryDirectory(prefix="coldcost-", dir="/tmp") as d:
        settings = Settings(
            size_bytes=SIZE_MIB << 20,
            socket_path=os.path.join(d, "z.sock"),
            recomp_algorithm="zstd:19",
            force_stop=True,
        )
        with open(os.path.join(d, "z.log"), "w") as log:
            server = Server(settings, log_file=log)
            server.start()
            try:
                fill(server)
                time.sleep(1.1)
                for r in range(rounds):
                    order = ["quiet", "sweep"] if r % 2 == 0 else ["sweep", "quiet"]
                    for kind in order:
                        res = measure(server, kind, d)
                        results[kind].append(res)
                        print(f"round {r} {kind}: {res}", flush=True)
            finally:
                server.stop()
    pairs = list(zip(results["quiet"], results["sweep"], strict=True))
    ratios = [s["p99_us"] / q["p99_us"] for q, s in pairs]
    iops = [s["iops"] / q["iops"] for q, s in pairs]
    for kind, runs in results.items():
        p99 = [x["p99_us"] for x in runs]
        print(f"{kind}: p99 median {statistics.median(p99):.0f} us (min {min(p99):.0f}, "
              f"max {max(p99):.0f})")  # fmt: skip
    print(f"sweep/quiet p99: median {statistics.median(ratios):.2f} (min {min(ratios):.2f}, "
          f"max {max(ratios):.2f}); IOPS ratio median {statistics.median(iops):.2f} "
          f"(min {min(iops):.2f}, max {max(iops):.2f})")  # fmt: skip


if __name__ == "__main__":
    main()

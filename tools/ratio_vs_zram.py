#!/usr/bin/env python3
"""Compression ratio of zramd against the running kernel's zram, per fio
compressibility: orig/compr and orig/mem_used (mm_stat) after the same fio
write (same options, same seed) to a fresh kernel zram device (lz4) and to a
fresh zramd.  The page arena's size classes and huge threshold aim at
within 3% of zram at every compressibility
(docs/design.md#page-arena-and-memory-accounting).

Needs root (kernel zram), fio with the nbd engine, and zramd on PATH or
given with --zramd.  Uses a zram device of its own (bench/kernel_zram.py:
hot_add, or zram0 only if unused); --lock PATH holds an flock on PATH while
it does.

    sudo .venv/bin/python tools/ratio_vs_zram.py --data 96M
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.kernel_zram import ZramDevice  # noqa: E402


def fio(target: list[str], data: str, percent: int) -> None:
    cmd = [
        "fio",
        "--name=ratio",
        "--rw=write",
        "--bs=128k",
        f"--size={data}",
        "--direct=1",
        f"--buffer_compress_percentage={percent}",
        "--refill_buffers",
        "--randseed=42",
        "--output-format=terse",
        *target,
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def kernel(size: int, data: str, percent: int, lock: str | None) -> tuple[int, int, int]:
    dev = ZramDevice("lz4", size, lock_path=lock)
    dev.setup()
    try:
        fio([f"--filename={dev.dev}", "--ioengine=libaio"], data, percent)
        mm = dev.mm_stat()
        return mm["orig_data_size"], mm["compr_data_size"], mm["mem_used_total"]
    finally:
        dev.teardown()


def zramd(cmd: str, size: int, data: str, percent: int) -> tuple[int, int, int]:
    tmp = tempfile.mkdtemp(prefix="ratio-")
    sock = os.path.join(tmp, "z.sock")
    proc = subprocess.Popen(
        [cmd, "serve", "--size", str(size), "--socket", sock],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        fio(["--ioengine=nbd", f"--uri=nbd+unix:///?socket={sock}"], data, percent)
        out = subprocess.run(
            [cmd, "stats", "--json", "--socket", sock], capture_output=True, text=True, check=True
        ).stdout
        s = json.loads(out)
        return s["orig_data_size"], s["compr_data_size"], s["mem_used_total"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zramd", default=shutil.which("zramd") or "zramd")
    p.add_argument("--data", default="96M", help="bytes fio writes per point (default 96M)")
    p.add_argument("--size", type=int, default=256 << 20, help="device size in bytes")
    p.add_argument("--lock", help="flock this file while using kernel zram")
    p.add_argument("--percent", type=int, nargs="*", default=list(range(0, 100, 10)))
    a = p.parse_args()
    if ZramDevice.unavailable():
        print(f"ratio_vs_zram: {ZramDevice.unavailable()}", file=sys.stderr)
        return 1
    print("compressible  zram orig/compr orig/mem   zramd orig/compr orig/mem   diff")
    worst = 0.0
    for pct in a.percent:
        k = kernel(a.size, a.data, pct, a.lock)
        z = zramd(a.zramd, a.size, a.data, pct)
        rk = (k[0] / k[1], k[0] / k[2])
        rz = (z[0] / z[1], z[0] / z[2])
        d = (100 * (rz[0] / rk[0] - 1), 100 * (rz[1] / rk[1] - 1))
        worst = min(worst, *d)
        print(
            f"{pct:11d}%  {rk[0]:15.3f} {rk[1]:8.3f}   {rz[0]:16.3f} {rz[1]:8.3f}   "
            f"{d[0]:+.1f}% {d[1]:+.1f}%",
            flush=True,
        )
    print(f"worst: {worst:+.1f}% (target: no worse than -3%)")
    return 0 if worst >= -3 else 1


if __name__ == "__main__":
    sys.exit(main())

"""Writing the corpus dataset onto a system, as one client at a time.

Through NBD with libnbd (plain writes of `chunk_bytes`, one in flight: zero
pages stay writes, as a kernel swapping would send them), or nbdcopy where
the libnbd bindings are missing; onto a block device with dd oflag=direct.
Each returns (bytes written, seconds, how).
"""

from __future__ import annotations

import os
import subprocess
import time


def corpus_over_nbd(sock: str, corpus_path: str, chunk_bytes: int) -> tuple[int, float, str]:
    t0 = time.monotonic()
    try:
        import nbd
    except ImportError:
        nbd = None
    if nbd is not None:
        h = nbd.NBD()
        h.connect_uri(f"nbd+unix:///?socket={sock}")
        offset = 0
        with open(corpus_path, "rb") as f:
            while chunk := f.read(chunk_bytes):
                h.pwrite(chunk, offset)
                offset += len(chunk)
        if h.can_flush():
            h.flush()
        h.shutdown()
        method = f"libnbd pwrite {chunk_bytes >> 10} KiB, one at a time"
    else:
        subprocess.run(
            [
                "nbdcopy",
                "--no-extents",
                "--connections=1",
                "--requests=1",
                f"--request-size={chunk_bytes}",
                "--flush",
                corpus_path,
                f"nbd+unix:///?socket={sock}",
            ],
            check=True,
            capture_output=True,
        )
        offset = os.path.getsize(corpus_path)
        method = f"nbdcopy {chunk_bytes >> 10} KiB requests, one at a time"
    return offset, time.monotonic() - t0, method


def corpus_onto_device(dev: str, corpus_path: str, chunk_bytes: int) -> tuple[int, float, str]:
    t0 = time.monotonic()
    subprocess.run(
        [
            "dd",
            f"if={corpus_path}",
            f"of={dev}",
            f"bs={chunk_bytes}",
            "oflag=direct",
            "conv=fsync",
            "status=none",
        ],
        check=True,
        capture_output=True,
    )
    return (
        os.path.getsize(corpus_path),
        time.monotonic() - t0,
        f"dd oflag=direct bs={chunk_bytes >> 10}K",
    )

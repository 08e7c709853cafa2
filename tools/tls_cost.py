#!/usr/bin/env python3
"""What TLS costs: nbdcopy writes then reads a 128 MiB half-compressible
image through `zramd serve` on a Unix socket, plain TCP (--insecure-tcp)
and TCP with a TLS pre-shared key, ROUNDS rounds interleaved; prints the
median and the min-max MiB/s of each (docs/design.md#security).

Usage: .venv/bin/python tools/tls_cost.py [ROUNDS]   (default 3)
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))
from servectl import SYSTEM_ENV, Serve, free_port, write_psk  # noqa: E402

MIB = 128


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    with tempfile.TemporaryDirectory(prefix="tlscost-", dir="/tmp") as d:
        data = os.path.join(d, "data.bin")
        with open(data, "wb") as f:  # half random, half zero per 4 KiB page
            for _ in range(MIB * 256):
                f.write(os.urandom(2048) + bytes(2048))
        psk = write_psk(os.path.join(d, "keys.psk"))
        results: dict[str, tuple[list[float], list[float]]] = {
            "unix": ([], []),
            "tcp": ([], []),
            "tcp+tls": ([], []),
        }
        for _ in range(rounds):
            for kind, (writes, reads) in results.items():
                port = free_port()
                if kind == "unix":
                    args = ["--socket", f"{d}/z.sock"]
                    uri = f"nbd+unix:///?socket={d}/z.sock"
                elif kind == "tcp":
                    args = ["--port", str(port), "--insecure-tcp", "--control", f"{d}/t.ctl"]
                    uri = f"nbd://127.0.0.1:{port}/"
                else:
                    args = ["--port", str(port), "--tls-psk", psk, "--control", f"{d}/t.ctl"]
                    uri = f"nbds://alice@127.0.0.1:{port}/?tls-psk-file={psk}"
                srv = Serve(d, *args, "--size", f"{MIB}M", "--force", name=kind)
                try:
                    t = time.monotonic()
                    subprocess.run(["nbdcopy", data, uri], check=True, env=SYSTEM_ENV)
                    writes.append(MIB / (time.monotonic() - t))
                    t = time.monotonic()
                    subprocess.run(["nbdcopy", uri, "null:"], check=True, env=SYSTEM_ENV)
                    reads.append(MIB / (time.monotonic() - t))
                finally:
                    srv.signal(signal.SIGTERM)
                    srv.wait()
                    srv.kill()
        for kind, (writes, reads) in results.items():
            print(
                f"{kind:8} write MiB/s {statistics.median(writes):5.0f} "
                f"({min(writes):.0f}-{max(writes):.0f})   read MiB/s "
                f"{statistics.median(reads):5.0f} ({min(reads):.0f}-{max(reads):.0f})"
            )


if __name__ == "__main__":
    main()

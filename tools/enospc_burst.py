"""Rate of failed writes and the log lines they cost, for an ENOSPC burst.

    .venv/bin/python tools/enospc_burst.py [TREE] [N]

Serves a 64M device with a 1M mem_limit from the zramd checkout TREE
(default: this one), fills it, then sends N (default 3000) 32 KiB writes
that fail with ENOSPC, and prints the failed writes per second and the
number of lines nbdkit's stderr got (docs/design.md#logs).  Run it on two
checkouts, interleaved, to compare.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time


def main() -> None:
    tree = os.path.abspath(
        sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
    )
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    sys.path.insert(0, tree)
    import nbd

    from zramd.server import Server
    from zramd.settings import Settings

    workdir = tempfile.mkdtemp(prefix="zramd-enospc-", dir="/tmp")
    try:
        log_path = os.path.join(workdir, "log")
        settings = Settings(
            size_bytes=64 << 20,
            mem_limit_bytes=1 << 20,
            socket_path=os.path.join(workdir, "s.sock"),
        )
        with open(log_path, "w") as log:
            server = Server(settings, log_file=log)
            server.start()
            try:
                h = nbd.NBD()
                h.connect_unix(settings.socket_path)
                offset = 0
                try:
                    while True:
                        h.pwrite(os.urandom(32768), offset)
                        offset += 32768
                except nbd.Error:
                    pass
                data = os.urandom(32768)  # did not fit: never will
                start = time.perf_counter()
                for _ in range(n):
                    try:
                        h.pwrite(data, offset)
                    except nbd.Error:
                        pass
                seconds = time.perf_counter() - start
                h.shutdown()
            finally:
                server.stop()
        with open(log_path) as f:
            lines = sum(1 for _ in f)
        print(f"{tree}: {n / seconds:.0f} failed writes/s, {lines} log lines for {n}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

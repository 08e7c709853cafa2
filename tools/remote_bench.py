"""Writeback and read-back of the cold tier: a local file against a remote
export over a Unix socket, TCP and TLS-PSK (docs/design.md#remote-tier).

    .venv/bin/python tools/remote_bench.py [PAGES] [ROUNDS]

For each target, in interleaved rounds (default 3 rounds of 4096 pages,
16 MiB): a fresh zramd (real nbdkit) on the tier, PAGES incompressible
pages written, ``writeback huge`` timed (its own ``elapsed_s``: MB/s),
then every page read back once through NBD in order (MB/s) with each
read's latency (p50/p99 of a written-back page, client side).  Targets:
``file`` (a backing file, plain), ``file-aes`` (the same, encrypted as
the remote always is), ``unix`` (nbdkit memory on a Unix socket), ``tcp``
(nbdkit memory on loopback TCP), ``tls`` (the same with TLS-PSK).
Prints the median and min-max of each figure over the rounds, and each
remote target's ratio to ``file-aes`` within the same run.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

TARGETS = ("file", "file-aes", "unix", "tcp", "tls")
PAGE = 4096


def _remote(workdir: str, target: str):
    """(process, URI) of an nbdkit memory export for ``target``."""
    import socket

    size = "256M"
    cmd = ["nbdkit", "-f", "-P", os.path.join(workdir, f"{target}.pid")]
    if target == "unix":
        sock = os.path.join(workdir, "remote.sock")
        cmd += ["-U", sock]
        uri = f"nbd+unix:///?socket={sock}"
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd += ["-i", "127.0.0.1", "-p", str(port)]
        uri = f"nbd://127.0.0.1:{port}/"
        if target == "tls":
            psk = os.path.join(workdir, "remote.psk")
            if not os.path.exists(psk):
                fd = os.open(psk, os.O_WRONLY | os.O_CREAT, 0o600)
                os.write(fd, f"bench:{os.urandom(32).hex()}\n".encode())
                os.close(fd)
            cmd += ["--tls=require", f"--tls-psk={psk}"]
            uri = f"nbds://bench@127.0.0.1:{port}/?tls-psk-file={psk}"
    pid_file = cmd[3]
    for stale in (pid_file, os.path.join(workdir, "remote.sock")):
        if os.path.exists(stale):
            os.unlink(stale)  # the last round's: not a sign this one is ready
    proc = subprocess.Popen([*cmd, "memory", size], stderr=subprocess.DEVNULL)
    while not os.path.exists(pid_file):
        time.sleep(0.01)
    return proc, uri


def one_round(workdir: str, target: str, pages: int) -> dict:
    import nbd

    from zramd.server import Server
    from zramd.settings import Settings

    proc = None
    kwargs: dict = {}
    if target.startswith("file"):
        kwargs["backing_file"] = os.path.join(workdir, "backing.img")
        if target == "file-aes":
            kwargs["backing_encrypt"] = "aes-256-gcm"
    else:
        proc, kwargs["backing_uri"] = _remote(workdir, target)
    settings = Settings(
        size_bytes=2 * pages * PAGE,
        mem_limit_bytes=0,
        socket_path=os.path.join(workdir, "zramd.sock"),
        **kwargs,
    )
    log = open(os.path.join(workdir, "zramd.log"), "w")
    server = Server(settings, log_file=log)
    try:
        server.start()
        from zramd.control import call

        h = nbd.NBD()
        h.connect_unix(settings.socket_path)
        chunk = os.urandom(PAGE * 256)
        for first in range(0, pages, 256):
            h.pwrite(chunk[: min(256, pages - first) * PAGE], first * PAGE)
        result = call(server.control_path, "writeback", type="huge")
        assert result["written"] == pages, result
        latencies = []
        started = time.perf_counter()
        for i in range(pages):
            t = time.perf_counter()
            h.pread(PAGE, i * PAGE)
            latencies.append(time.perf_counter() - t)
        read_s = time.perf_counter() - started
        h.shutdown()
        latencies.sort()
        return {
            "writeback_mb_s": pages * PAGE / result["elapsed_s"] / 1e6,
            "read_mb_s": pages * PAGE / read_s / 1e6,
            "read_p50_ms": latencies[len(latencies) // 2] * 1000,
            "read_p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        }
    finally:
        server.stop()
        log.close()
        if proc is not None:
            proc.kill()
            proc.wait()


def main() -> None:
    pages = int(sys.argv[1]) if len(sys.argv) > 1 else 4096
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    workdir = tempfile.mkdtemp(prefix="zrb-", dir="/tmp")
    results: dict[str, list[dict]] = {t: [] for t in TARGETS}
    try:
        for _ in range(rounds):
            for target in TARGETS:  # interleaved: each round runs every target
                results[target].append(one_round(workdir, target, pages))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    keys = ("writeback_mb_s", "read_mb_s", "read_p50_ms", "read_p99_ms")
    print(f"{pages} pages x {rounds} rounds: median [min-max]")
    print(f"{'target':9}" + "".join(f"{k:>26}" for k in keys))
    for target in TARGETS:
        cells = []
        for k in keys:
            values = [r[k] for r in results[target]]
            cells.append(f"{statistics.median(values):10.2f} [{min(values):.2f}-{max(values):.2f}]")
        print(f"{target:9}" + "".join(f"{c:>26}" for c in cells))
    print("ratio to file-aes (medians):")
    base = {k: statistics.median(r[k] for r in results["file-aes"]) for k in keys}
    for target in TARGETS[2:]:
        ratios = [statistics.median(r[k] for r in results[target]) / base[k] for k in keys]
        print(f"{target:9}" + "".join(f"{x:>26.2f}" for x in ratios))


if __name__ == "__main__":
    main()

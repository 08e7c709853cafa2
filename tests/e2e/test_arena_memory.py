"""Memory that is real, through nbdkit and libnbd: the page arena under
churn with compaction running during I/O, RSS against mem_used_total, and
ENOSPC at mem_limit against the process's real memory.

RSS bounds are generous (the precise figures belong to ``make bench``):
they only catch an arena that does not give memory back, or accounting
that is off by a large factor (docs/design.md#page-arena-and-memory-accounting).
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from helpers import connect, nbd, stats
from zramd import process
from zramd.control import call

PAGE = 4096
MiB = 1 << 20


def page_data(rng: random.Random, compressible_percent: int, pages: int = 1) -> bytes:
    """Pages like fio's buffer_compress_percentage: each page is random
    bytes followed by zeros, the zeros being that share of the page."""
    keep = PAGE * (100 - compressible_percent) // 100
    return b"".join(rng.randbytes(keep) + bytes(PAGE - keep) for _ in range(pages))


def fill(h, model, rng, start, length, percent, chunk=MiB):
    for off in range(start, start + length, chunk):
        data = page_data(rng, percent, chunk // PAGE)
        h.pwrite(data, off)
        model[off:off + chunk] = data


def churn(h, model, rng, region_bytes):
    """The churn workload: fill half at 50% compressible, rewrite pages at
    random at 20%, then trim a random half of the pages."""
    fill(h, model, rng, 0, region_bytes, 50)
    pages = region_bytes // PAGE
    for _ in range(pages // 2):
        off = rng.randrange(pages) * PAGE
        data = page_data(rng, 20)
        h.pwrite(data, off)
        model[off:off + PAGE] = data
    for index in rng.sample(range(pages), pages // 2):
        h.trim(PAGE, index * PAGE)
        model[index * PAGE:(index + 1) * PAGE] = bytes(PAGE)


def test_churn_with_compaction_in_a_loop_reads_back_the_model(make_server):
    size = 64 * MiB
    rng = random.Random(20261126)
    model = bytearray(size)
    with make_server(size="64M") as server:
        h = connect(server)
        h2 = connect(server)
        churn(h, model, rng, size // 2)
        # the trims left sparse blocks, unless the automatic compactor
        # (kicked by those frees) packs them: wait out a run in progress
        for _ in range(100):
            before = stats(server)
            if before["compactable_bytes"] > 0 or before["compact_runs"] > 0:
                break
            time.sleep(0.1)
        assert before["compactable_bytes"] > 0 or before["compact_runs"] > 0
        stop = threading.Event()
        results: list[dict] = []
        errors: list[BaseException] = []

        def compactor():
            try:
                while not stop.is_set():
                    results.append(call(server.control_path, "compact"))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        def workload(handle, seed, parity):
            """Random reads, writes, trims and zeroes on this connection's
            own 256 KiB regions (even or odd), checked against the model."""
            r = random.Random(seed)
            region = 256 * 1024
            try:
                for _ in range(1200):
                    base = (r.randrange(size // region // 2) * 2 + parity) * region
                    off = base + r.randrange(region // 512) * 512
                    length = min(r.choice([512, PAGE, 3 * PAGE, 16 * PAGE, 64 * 1024]),
                                 base + region - off)
                    op = r.random()
                    if op < 0.35:
                        assert handle.pread(length, off) == bytes(model[off:off + length]), off
                    elif op < 0.7:
                        data = page_data(r, r.choice([0, 20, 50, 75, 90]),
                                         -(-length // PAGE))[:length]
                        handle.pwrite(data, off)
                        model[off:off + length] = data
                    elif op < 0.85:
                        handle.trim(length, off)
                        model[off:off + length] = bytes(length)
                    else:
                        flags = nbd.CMD_FLAG_FAST_ZERO if r.random() < 0.5 else 0
                        handle.zero(length, off, flags)
                        model[off:off + length] = bytes(length)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=compactor)]
        workers = [threading.Thread(target=workload, args=(handle, seed, parity))
                   for handle, seed, parity in ((h, 1, 0), (h2, 2, 1))]
        for t in threads + workers:
            t.start()
        for t in workers:
            t.join()
        stop.set()
        for t in threads:
            t.join()
        assert not errors, errors[:3]
        assert sum(r["moved"] for r in results) > 0
        final = call(server.control_path, "compact")
        for off in range(0, size, 4 * MiB):
            assert h.pread(4 * MiB, off) == bytes(model[off:off + 4 * MiB]), off
        s = stats(server)
        assert s["failed_reads"] == s["failed_writes"] == s["checksum_errors"] == 0
        assert s["pages_compacted"] >= final["pages_freed"]
        assert s["pages_compacted"] > 0
        # compacted: blocks hold little more than the payload
        assert s["arena_block_bytes"] <= 1.15 * s["compr_data_size"] + 4 * MiB
        h.shutdown()
        h2.shutdown()


def test_rss_follows_the_arena_and_compaction_gives_it_back(make_server):
    """Fill, random rewrite, random half trim, compact, full trim: VmRSS of
    the nbdkit process above its idle value tracks mem_used_total."""
    rng = random.Random(7)
    size = 256 * MiB
    model = bytearray(size)  # (only for the workload's bookkeeping)
    with make_server(size="256M") as server:
        h = connect(server)
        h.pread(PAGE, 0)
        idle = process.status_bytes(server.pid)["VmRSS"]
        fill(h, model, rng, 0, size // 2, 50)
        s = stats(server)
        filled = process.status_bytes(server.pid)["VmRSS"]
        payload = s["compr_data_size"]
        assert payload > 40 * MiB
        # RSS above idle is what mem_used_total says, within generous bounds
        assert 0.8 * s["mem_used_total"] < filled - idle < 1.25 * s["mem_used_total"] + 16 * MiB
        for index in rng.sample(range(size // 2 // PAGE), size // 4 // PAGE):
            h.trim(PAGE, index * PAGE)
        trimmed = stats(server)
        r = call(server.control_path, "compact")
        compacted = stats(server)
        assert r["pages_freed"] > 0
        assert compacted["mem_used_total"] < trimmed["mem_used_total"]
        assert compacted["arena_block_bytes"] <= 1.1 * compacted["compr_data_size"] + 4 * MiB
        h.trim(size, 0)
        call(server.control_path, "compact")
        empty = stats(server)
        assert empty["mem_used_total"] == 0 and empty["arena_blocks"] == 0
        after = process.status_bytes(server.pid)["VmRSS"]
        assert after < filled - payload // 2, (idle >> 20, filled >> 20, after >> 20)
        h.shutdown()


def test_enospc_at_mem_limit_holds_for_real_memory(make_server):
    """Writes past mem_limit fail with ENOSPC; the process's RSS above idle
    stays near the limit, earlier data is intact, and memory freed by a
    trim (and compaction) can be written again."""
    limit = 48 * MiB
    rng = random.Random(3)
    with make_server(size="256M", mem_limit="48M") as server:
        h = connect(server)
        h.pread(PAGE, 0)
        idle = process.status_bytes(server.pid)["VmRSS"]
        written = {}
        with pytest.raises(nbd.Error) as info:
            for off in range(0, 256 * MiB, 256 * 1024):
                data = page_data(rng, 20, 64)
                h.pwrite(data, off)
                written[off] = data
        assert info.value.errno == "ENOSPC"
        s = stats(server)
        assert s["mem_used_total"] <= limit and s["failed_writes"] >= 1
        assert s["mem_used_total"] > limit * 0.85  # the limit was usable
        rss = process.status_bytes(server.pid)["VmRSS"]
        assert rss - idle < limit * 1.25 + 8 * MiB, (rss - idle) >> 20
        for off, data in list(written.items())[::7]:
            assert h.pread(len(data), off) == data
        # trim half of it (every other request), compact: room again
        for off in list(written)[::2]:
            h.trim(256 * 1024, off)
        call(server.control_path, "compact")
        h.pwrite(page_data(rng, 20, 64), 255 * MiB)
        assert stats(server)["mem_used_total"] <= limit
        h.shutdown()


def test_zramd_compact_command(make_server):
    """``zramd compact`` (zram's compact knob) reports what it gave back;
    a stray argument is one line and status 2."""
    import subprocess
    import sys

    rng = random.Random(11)
    with make_server(size="64M") as server:
        h = connect(server)
        data = page_data(rng, 50, 2048)
        h.pwrite(data, 0)
        for index in range(0, 2048, 2):
            h.trim(PAGE, index * PAGE)
        before = stats(server)
        cmd = [sys.executable, "-m", "zramd.cli", "compact", "--socket", server.socket_path]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("compact: ") and "pages" in done.stdout
        after = stats(server)
        assert after["pages_compacted"] > 0
        assert after["mem_used_total"] < before["mem_used_total"]
        assert f"pages_compacted {after['pages_compacted']}" in done.stdout
        bad = subprocess.run(cmd + ["now"], capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
        for index in range(1, 2048, 2):
            assert h.pread(PAGE, index * PAGE) == data[index * PAGE:(index + 1) * PAGE]
        h.shutdown()

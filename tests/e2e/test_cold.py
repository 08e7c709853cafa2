"""Cold pages through NBD: the sweeper recompresses pages left alone past
--recompress-after, they read back identical, a read of one counts a
promotion and a rewrite does not, pages rewritten while the sweeper runs
keep their new data, and the knobs and stats reach zramd stats, status
and the metrics."""

import os
import random
import subprocess
import sys
import time

from helpers import connect, stats
from zramd import metrics

PAGE = 4096
ZRAMD = os.path.join(os.path.dirname(sys.executable), "zramd")
WORDS = b"cold pages flow to disk on their own while hot ones stay in memory".split()


def base_page(seed: int) -> bytes:
    rng = random.Random(seed)
    return b" ".join(rng.choice(WORDS) for _ in range(1200))[:PAGE]


BASE = [base_page(i) for i in range(16)]


def word_page(index: int, version: int = 0) -> bytes:
    """Text zstd shrinks to half of lz4's size: a smaller size class."""
    return (b"%08d.%04d " % (index, version) + BASE[index % 16])[:PAGE]


def until(server, predicate, timeout_s=60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        s = stats(server)
        if predicate(s) or time.monotonic() > deadline:
            return s
        time.sleep(0.1)


def test_cold_pages_are_recompressed_read_back_and_promoted(make_server):
    with make_server(size="16M", recomp_algorithm="lz4,zstd:19", recompress_after_s=1) as server:
        h = connect(server)
        data = b"".join(word_page(i) for i in range(64))
        noise = random.randbytes(4 * PAGE)
        h.pwrite(data, 0)
        h.pwrite(noise, 64 * PAGE)
        s = until(server, lambda s: s["recompressed_pages"] == 64 and s["incompressible_pages"] == 4)
        assert s["recompressed_pages"] == 64 and s["incompressible_pages"] == 4, s
        assert s["cold_state"] in ("sweeping", "no candidates")
        assert s["cold_recompressed_bytes"] > 0 and s["cold_backed_bytes"] == 0
        assert s["promoted_recompressed"] == 0
        assert h.pread(len(data), 0) == data  # 64 promotions
        # read again: warm now (a promotion is the first read since it went cold)
        assert h.pread(PAGE, 5 * PAGE) == data[5 * PAGE : 6 * PAGE]
        assert h.pread(len(noise), 64 * PAGE) == noise  # not cold: no promotion
        s = stats(server)
        assert s["promoted_recompressed"] == 64
        assert s["recompressed_pages"] == 64  # a read does not undo the recompression
        h.pwrite(word_page(0, 1), 0)  # a rewrite: not a promotion, primary codec again
        h.pwrite(b"x" * 100, PAGE + 7)  # a partial rewrite reads the old page: not one either
        s = stats(server)
        assert s["promoted_recompressed"] == 64
        assert s["recompressed_pages"] == 62
        assert h.pread(PAGE, 0) == word_page(0, 1)
        h.shutdown()


def test_pages_rewritten_while_the_sweeper_runs_keep_the_new_data(make_server):
    pages = 2048
    with make_server(size="16M", recomp_algorithm="zstd:19", recompress_after_s=1) as server:
        h = connect(server)
        for first in range(0, pages, 256):
            h.pwrite(b"".join(word_page(i) for i in range(first, first + 256)), first * PAGE)
        until(server, lambda s: s["recompressed_pages"] > 0)
        # rewrite every page, one at a time, while the sweep goes on
        version = {}
        rng = random.Random(3)
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            i = rng.randrange(pages)
            version[i] = version.get(i, 0) + 1
            h.pwrite(word_page(i, version[i]), i * PAGE)
        s = stats(server)
        assert s["promoted_recompressed"] == 0  # rewrites are not promotions
        until(server, lambda s: s["recompressed_pages"] > pages // 2)  # swept again
        got = h.pread(pages * PAGE, 0)
        for i in range(pages):
            assert got[i * PAGE : (i + 1) * PAGE] == word_page(i, version.get(i, 0)), i
        s = stats(server)
        assert s["cold_last_error"] is None
        h.shutdown()


def test_recompress_after_is_set_while_serving(make_server):
    with make_server(size="16M", recomp_algorithm="zstd:19") as server:
        h = connect(server)
        data = b"".join(word_page(i) for i in range(32))
        h.pwrite(data, 0)
        s = stats(server)
        assert s["cold_state"] == "off" and s["cold_age_s"] == 0
        r = subprocess.run(
            [ZRAMD, "set", "--control", server.control_path,
             "recompress_after", "1"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        s = until(server, lambda s: s["recompressed_pages"] == 32)
        assert s["recompressed_pages"] == 32 and s["recompress_after"] == 1
        assert s["cold_age_s"] >= 1 and s["cold_target"] == 0.2
        bad = subprocess.run(
            [ZRAMD, "set", "--control", server.control_path,
             "cold_target", "200"], capture_output=True, text=True)
        assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert "percentage 0..100" in bad.stderr
        status = subprocess.run(
            [ZRAMD, "status", "--control", server.control_path],
            capture_output=True, text=True, check=True).stdout
        assert "COLD-AGE" in status and "PROMO%/MIN" in status
        text = metrics.exposition([("d", stats(server))])
        for name in ("zramd_cold_age_s", "zramd_promotion_rate_pct_min",
                     "zramd_promoted_recompressed_pages_total", "zramd_cold_recompressed_bytes",
                     "zramd_recompress_after_s", "zramd_cold_target_pct"):
            assert name in text, name
        assert h.pread(len(data), 0) == data
        h.shutdown()


def test_a_target_of_zero_is_reported_and_makes_nothing_cold(make_server):
    with make_server(size="16M", recomp_algorithm="zstd", cold_target_pct=0.0) as server:
        h = connect(server)
        h.pwrite(b"".join(word_page(i) for i in range(16)), 0)
        time.sleep(1)
        s = stats(server)
        assert s["cold_state"] == "impossible target" and s["cold_passes"] == 0
        assert s["recompressed_pages"] == 0
        h.shutdown()


def test_writeback_is_the_second_tier(make_server, sockdir):
    with make_server(size="16M", backing_file=os.path.join(sockdir, "b.img"),
                     recompress_after_s=1) as server:
        h = connect(server)
        data = b"".join(word_page(i) for i in range(16))
        h.pwrite(data, 0)
        s = until(server, lambda s: s["bd_count"] == 16)
        assert s["bd_count"] == 16 and s["cold_backed_bytes"] == 16 * PAGE
        assert s["cold_writeback_runs"] >= 1
        assert h.pread(len(data), 0) == data
        assert stats(server)["promoted_backed"] == 16
        h.shutdown()



def test_the_manual_recompress_takes_the_codec_list(make_server):
    with make_server(size="16M", recomp_algorithm="lz4,zstd:19") as server:
        h = connect(server)
        data = b"".join(word_page(i) for i in range(16))
        h.pwrite(data, 0)
        h.pwrite(random.randbytes(2 * PAGE), 16 * PAGE)
        r = subprocess.run([ZRAMD, "recompress", "--control", server.control_path],
                           capture_output=True, text=True, check=True)
        assert "16 pages recompressed" in r.stdout, r.stdout
        s = stats(server)
        assert s["recompressed_pages"] == 16 and s["incompressible_pages"] == 2
        assert s["recomp_algorithm"] == "lz4,zstd:19"
        assert h.pread(len(data), 0) == data
        h.shutdown()

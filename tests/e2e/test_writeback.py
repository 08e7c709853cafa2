"""Writeback to a backing file, idle tracking, recompression and the
control commands, through NBD and the control socket (the races that NBD
cannot time are in tests/unit/test_writeback_engine.py)."""

import json
import os
import random
import shutil
import subprocess
import sys
import threading

import pytest

from helpers import connect, stats
from zramd.settings import ConfigError
from zramd.control import ControlError, call

PAGE = 4096
TEXT = (b"cold pages flow to disk on their own. " * 120)[:PAGE]


WORDS = b"cold pages flow to disk on their own while hot ones stay in memory".split()


def word_page(i: int) -> bytes:
    rng = random.Random(i)
    return b" ".join(rng.choice(WORDS) for _ in range(1200))[:PAGE]


def text_page(i: int) -> bytes:
    return (b"%08d " % i + TEXT)[:PAGE]


@pytest.fixture
def wb_server(make_server, sockdir):
    def factory(**kwargs):
        kwargs.setdefault("size", "64M")
        kwargs.setdefault("backing_file", os.path.join(sockdir, "backing.img"))
        return make_server(**kwargs)
    return factory


def ctl(server, cmd, **args):
    return call(server.control_path, cmd, **args)


def test_writeback_huge_and_idle_moves_pages_out(wb_server):
    with wb_server(recomp_algorithm="zstd") as server:
        h = connect(server)
        huge = os.urandom(10 * PAGE)
        text = b"".join(text_page(i) for i in range(20))
        h.pwrite(huge, 0)
        h.pwrite(text, 100 * PAGE)
        before = stats(server)
        r = ctl(server, "writeback", type="huge")
        assert r["written"] == 10 and r["error"] is None
        s = stats(server)
        assert (s["bd_count"], s["bd_writes"]) == (10, 10)
        assert s["mem_used_total"] < before["mem_used_total"]
        assert s["orig_data_size"] == before["orig_data_size"]   # still stored (zram counts WB)
        assert s["huge_pages"] == 0 and s["compr_data_size"] == before["compr_data_size"] - 10 * PAGE
        assert h.pread(10 * PAGE, 0) == huge
        assert stats(server)["bd_reads"] == 10
        # compaction gives back the emptied block the huge class kept
        ctl(server, "compact")
        assert before["mem_used_total"] - stats(server)["mem_used_total"] >= 10 * PAGE
        # idle: mark all, touch some, write back the rest
        assert ctl(server, "idle")["idle_pages"] == 20  # written-back pages are not marked
        h.pread(PAGE, 100 * PAGE)  # page 100 is no longer idle
        r = ctl(server, "writeback", type="idle")
        assert r["written"] == 19  # the 10 huge ones are already out, page 100 was read
        s = stats(server)
        assert s["bd_count"] == 29 and s["idle_pages"] == 0
        assert h.pread(20 * PAGE, 100 * PAGE) == text
        # a rewrite or trim of a written-back page frees its file slot; slots are reused
        used = s["backing_used_blocks"]
        h.pwrite(text_page(999), 0)
        h.trim(2 * PAGE, PAGE)
        s = stats(server)
        assert s["backing_used_blocks"] == used - 3 and s["bd_count"] == 26
        ctl(server, "idle")
        assert ctl(server, "writeback", type="idle")["written"] == 2  # pages 0 and 100
        s = stats(server)
        assert s["backing_used_blocks"] == used - 1
        assert s["backing_touched_blocks"] == used  # both went into freed slots
        assert h.pread(PAGE, 0) == text_page(999)
        assert h.pread(2 * PAGE, PAGE) == bytes(2 * PAGE)
        h.shutdown()


def test_writeback_limit_budget(wb_server):
    with wb_server() as server:
        h = connect(server)
        h.pwrite(os.urandom(20 * PAGE), 0)
        ctl(server, "writeback_limit", pages=3, enable="on")
        assert ctl(server, "writeback", type="huge")["written"] == 3
        assert stats(server)["writeback_limit"] == 0
        assert ctl(server, "writeback", type="huge")["written"] == 0
        ctl(server, "writeback_limit", enable="off")
        assert ctl(server, "writeback", type="huge", limit=5)["written"] == 5
        assert stats(server)["bd_count"] == 8
        h.shutdown()


def test_rewrites_during_writeback_keep_the_new_data(wb_server):
    """Writers rewrite pages while a recompression and a writeback of all of
    them run: control commands are safe with I/O in flight."""
    with wb_server(size="32M", recomp_algorithm="zstd") as server:
        h = connect(server)
        npages = 2000
        h.pwrite(b"".join(text_page(i) for i in range(npages)), 0)
        ctl(server, "idle")
        final = {}
        done = threading.Event()

        def rewriter():
            w = connect(server)
            rng = random.Random(3)
            while not done.is_set():
                i = rng.randrange(npages)
                data = text_page(i + 1_000_000 * rng.randrange(1, 50))
                w.pwrite(data, i * PAGE)
                final[i] = data
            w.shutdown()

        t = threading.Thread(target=rewriter)
        t.start()
        assert ctl(server, "recompress", type="idle")["recompressed"] > 0
        ctl(server, "idle")
        r = ctl(server, "writeback", type="idle")
        done.set()
        t.join()
        for i in range(npages):
            assert h.pread(PAGE, i * PAGE) == final.get(i, text_page(i)), f"page {i}"
        s = stats(server)
        assert r["written"] > 0 and s["failed_reads"] == 0
        assert s["bd_count"] == s["backing_used_blocks"]  # no leaked file slots
        h.shutdown()


def test_full_backing_file_loses_nothing(wb_server):
    with wb_server(backing_size_bytes=16 * PAGE) as server:
        h = connect(server)
        data = os.urandom(40 * PAGE)
        h.pwrite(data, 0)
        r = ctl(server, "writeback", type="huge")
        assert r["written"] == 16 and "full" in r["error"]
        s = stats(server)
        assert s["bd_count"] == 16 and s["bd_full_events"] == 1 and s["huge_pages"] == 24
        assert h.pread(len(data), 0) == data
        h.pwrite(b"still serving", 5)
        h.shutdown()


def test_disk_full_under_writeback_loses_nothing(make_server, small_tmpfs):
    tiny_fs = small_tmpfs("64k")
    with make_server(size="16M", backing_file=os.path.join(tiny_fs, "b.img")) as server:
        h = connect(server)
        data = os.urandom(64 * PAGE)
        h.pwrite(data, 0)
        r = ctl(server, "writeback", type="huge")
        assert 0 < r["written"] < 64 and "No space left" in r["error"]
        s = stats(server)
        assert s["bd_write_errors"] == 1 and "No space left" in s["bd_last_error"]
        assert s["bd_count"] == r["written"] == s["backing_used_blocks"]
        assert h.pread(len(data), 0) == data
        h.pwrite(data[:PAGE], 100 * PAGE)  # serving continues
        h.shutdown()


def test_recompression_shrinks_idle_pages(wb_server):
    with wb_server(recomp_algorithm="zstd", recomp_level=19) as server:
        h = connect(server)
        # words in random order: zstd -19 halves lz4's output, so each page
        # lands in a smaller size class (a saving inside one class frees
        # nothing and is not a recompression: docs/design.md#cold-pages)
        pages = b"".join(word_page(i) for i in range(64))
        h.pwrite(pages, 0)
        h.pwrite(os.urandom(4 * PAGE), 64 * PAGE)
        before = stats(server)
        ctl(server, "idle")
        r = ctl(server, "recompress", type="idle", threshold=64)
        assert r["recompressed"] == 64 and r["saved_bytes"] > 0
        assert r["incompressible"] == 4  # the random pages do not shrink
        s = stats(server)
        assert s["recompressed_pages"] == 64 and s["recomp_algorithm"] == "zstd:19"
        assert s["compr_data_size"] == before["compr_data_size"] - r["saved_bytes"]
        r = ctl(server, "recompress", type="huge")  # tried already: skipped
        assert r["skipped"] == 4 and stats(server)["incompressible_pages"] == 4
        assert ctl(server, "writeback", type="incompressible")["written"] == 4
        assert h.pread(len(pages), 0) == pages  # reads work across mixed codecs
        ctl(server, "idle")
        assert ctl(server, "writeback", type="idle")["written"] == 64  # recompressed pages too
        assert h.pread(len(pages), 0) == pages
        h.shutdown()


def test_idle_by_age(wb_server):
    with wb_server() as server:
        h = connect(server)
        h.pwrite(TEXT * 4, 0)
        assert ctl(server, "idle", age=3600)["idle_pages"] == 0  # all were just written
        assert ctl(server, "idle", age=0)["idle_pages"] == 4
        h.shutdown()


def test_watermark_policy_keeps_memory_down_under_fio(wb_server):
    """fio writes 48 MiB of incompressible data with verification through a
    device whose high watermark is 8 MiB: the coldest pages flow to the
    backing file on their own, memory stays near the mark, nothing is lost."""
    if not shutil.which("fio"):
        pytest.skip("fio not installed")
    high = 8 << 20
    with wb_server(size="64M", high_watermark_bytes=high, low_watermark_bytes=6 << 20) as server:
        result = subprocess.run(
            ["fio", "--name=wm", "--ioengine=nbd", f"--uri={server.uri}", "--rw=randwrite",
             "--bs=4k", "--size=48M", "--iodepth=16", "--verify=crc32c", "--do_verify=1",
             "--verify_fatal=1", "--output-format=json"],
            capture_output=True, text=True, timeout=600, cwd=os.path.dirname(server.socket_path))
        assert result.returncode == 0, result.stderr[-2000:]
        job = json.loads(result.stdout[result.stdout.index("{"):])["jobs"][0]
        assert job["error"] == 0 and job["read"]["io_bytes"] == 48 << 20
        s = stats(server)
        assert s["mem_used_max"] <= high + 64 * 1024, s["mem_used_max"]
        assert s["bd_count"] > (40 << 20) // PAGE and s["policy_runs"] > 0
        assert s["orig_data_size"] == 48 << 20 and s["failed_reads"] == 0


@pytest.mark.parametrize("cmd,args,message", [
    ("writeback", {"type": "cold"}, "writeback type must be one of"),
    ("writeback", {}, "writeback type must be one of"),
    ("writeback", {"type": "huge", "limit": 0}, "limit must be at least 1"),
    ("writeback", {"type": "huge", "limit": "x"}, "limit must be a whole number"),
    ("writeback", {"type": "huge", "speed": 1}, "does not take speed"),
    ("idle", {"age": -1}, "age must be at least 0"),
    ("idle", {"age": "soon"}, "age must be a whole number"),
    ("recompress", {"type": "bogus"}, "recompress type must be one of"),
    ("recompress", {"threshold": 5000}, "threshold must be at most 4096"),
    ("writeback_limit", {}, "needs pages and/or enable"),
    ("writeback_limit", {"enable": "maybe"}, "enable must be on or off"),
    ("writeback_limit", {"pages": -3}, "pages must be at least 0"),
    ("watermarks", {"high": "1M", "low": "2M"}, "low watermark must not be above"),
    ("watermarks", {"high": [1]}, "high must be a size"),
    ("mem_limit", {"size": "-1"}, "not a size"),
])
def test_control_errors_change_nothing(wb_server, cmd, args, message):
    with wb_server(recomp_algorithm="zstd") as server:
        h = connect(server)
        h.pwrite(os.urandom(4 * PAGE) + TEXT * 4, 0)
        before = stats(server)
        with pytest.raises(ControlError, match=message):
            ctl(server, cmd, **args)
        assert stats(server) == before
        h.shutdown()


def test_commands_without_backing_file_or_recomp(make_server):
    with make_server() as server:
        with pytest.raises(ControlError, match="no backing file"):
            ctl(server, "writeback", type="idle")
        with pytest.raises(ControlError, match="no backing file"):
            ctl(server, "watermarks", high="1M")
        with pytest.raises(ControlError, match="no secondary algorithm"):
            ctl(server, "recompress")


def test_backing_file_errors_are_one_line(wb_server, make_server, sockdir):
    with wb_server() as server:
        path = server.settings.backing_file
        with pytest.raises(ConfigError, match=f"backing file {path} is in use by another zramd"):
            make_server(backing_file=path).start()
    with pytest.raises(ConfigError, match="backing file /nonexistent/b.img is not writable"):
        make_server(backing_file="/nonexistent/b.img").start()
    with pytest.raises(ConfigError, match="is not writable: Is a directory"):
        make_server(backing_file=sockdir).start()
    with pytest.raises(ConfigError, match=r"/proc/version is accessible to group or others "
                                          r"\(mode 0444\): chmod 600 it first"):
        make_server(backing_file="/proc/version").start()
    with pytest.raises(ConfigError, match="watermarks need a backing file"):
        make_server(high_watermark_bytes=1 << 20)


ZRAMD = [sys.executable, "-m", "zramd.cli"]


def test_cli_knobs_and_views(wb_server):
    with wb_server(recomp_algorithm="zstd") as server:
        h = connect(server)
        h.pwrite(os.urandom(8 * PAGE) + TEXT * 8, 0)
        sock = ["--socket", server.socket_path]

        def zramd(*args):
            return subprocess.run(ZRAMD + list(args) + sock, capture_output=True, text=True,
                                  timeout=60)

        assert "8 pages written" in zramd("writeback", "huge", "--limit", "8").stdout
        assert zramd("stats", "bd_stat").stdout.split() == ["8", "0", "8"]
        assert "8 pages idle" in zramd("idle", "all").stdout  # written-back ones are not
        assert "recompressed" in zramd("recompress", "--type", "idle").stdout
        table = zramd("status").stdout.splitlines()
        assert table[0].split()[:4] == ["NAME", "DISKSIZE", "DATA", "COMPR"]
        assert table[1].split()[0] == server.socket_path
        assert zramd("set", "mem_limit", "32M").returncode == 0
        assert stats(server)["mem_limit"] == 32 << 20
        assert zramd("set", "watermarks", "4M", "2M").returncode == 0
        assert (stats(server)["high_watermark"], stats(server)["low_watermark"]) == (4 << 20, 2 << 20)
        assert zramd("set", "mem_used_max", "0").returncode == 0
        bad = zramd("set", "mem_used_max", "5")
        assert bad.returncode == 2 and bad.stderr.strip() == \
            "zramd: error: mem_used_max can only be reset, with 0 (as in zram)"
        bad = zramd("set", "writeback_limit", "lots")
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1  # checked before sending
        watch = zramd("stats", "--watch", "--count", "2", "--interval", "0.2").stdout.splitlines()
        assert len(watch) == 3 and watch[0].split()[:4] == ["time", "data", "compr", "ratio"]
        assert watch[2].split()[9] == "8"  # bd_count column
        h.shutdown()

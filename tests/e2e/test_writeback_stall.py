"""Automatic writeback that cannot progress (backing file full, its disk
full, or writeback_limit used up) with memory above the high watermark:
writers stop waiting for it, the stats say so, and it resumes when
something changes.  Through real nbdkit, libnbd and fio; asserted on the
counters, and on speed only as a ratio to a run without a backing file in
the same test."""

import os
import shutil

import pytest

from helpers import connect, run_fio, stats
from zramd.control import call

PAGE = 4096


def write_pages(h, first: int, count: int) -> None:
    for i in range(first, first + count):
        h.pwrite(os.urandom(PAGE), i * PAGE)  # incompressible: each costs a page


def test_full_backing_file_stops_throttling_until_space_is_freed(make_server, sockdir):
    with make_server(size="16M", backing_file=os.path.join(sockdir, "b.img"),
                     backing_size_bytes=16 * PAGE, high_watermark_bytes=32 * PAGE,
                     low_watermark_bytes=16 * PAGE) as server:
        h = connect(server)
        write_pages(h, 0, 64)  # 16 pages fit in the file, then it is full
        s = stats(server)
        assert s["writeback_stalled"] == 1 and s["writeback_stalls"] == 1
        assert "full" in s["writeback_stall_reason"]
        assert s["backing_used_blocks"] == 16 and s["bd_full_events"] >= 1
        assert s["mem_used_total"] > s["high_watermark"]
        # while stalled, no writer waits: every write is a skipped throttle
        write_pages(h, 64, 20)
        t = stats(server)
        assert t["throttled_writes"] == s["throttled_writes"]
        assert t["throttle_skipped"] == s["throttle_skipped"] + 20
        assert t["writeback_stalled"] == 1 and t["writeback_stalls"] == 1
        # space comes back (trimmed written-back pages): writeback resumes
        h.trim(16 * PAGE, 0)
        assert stats(server)["backing_used_blocks"] < 16
        write_pages(h, 100, 1)
        u = stats(server)
        assert u["backing_used_blocks"] == 16  # the freed blocks were used again
        assert u["throttled_writes"] == t["throttled_writes"] + 1  # it waited for that
        assert u["writeback_stalls"] == 2 and u["writeback_stalled"] == 1  # full again
        h.shutdown()


def test_writeback_limit_used_up_stops_throttling_until_raised(make_server, sockdir):
    with make_server(size="16M", backing_file=os.path.join(sockdir, "b.img"),
                     high_watermark_bytes=32 * PAGE, low_watermark_bytes=16 * PAGE) as server:
        h = connect(server)
        call(server.control_path, "writeback_limit", pages=8, enable="on")
        write_pages(h, 0, 48)
        s = stats(server)
        assert s["writeback_stalled"] == 1
        assert s["writeback_stall_reason"] == "writeback_limit used up"
        assert s["bd_count"] == 8 and s["writeback_limit"] == 0
        write_pages(h, 48, 10)
        t = stats(server)
        assert t["throttled_writes"] == s["throttled_writes"]
        assert t["throttle_skipped"] == s["throttle_skipped"] + 10
        call(server.control_path, "writeback_limit", pages=1000)  # raised: resumes
        write_pages(h, 58, 1)
        u = stats(server)
        assert u["writeback_stalled"] == 0 and u["bd_count"] > 8
        assert u["mem_used_total"] <= u["high_watermark"]
        h.shutdown()


def test_full_disk_stall_holds_and_writes_keep_their_speed(make_server, small_tmpfs):
    """The backing file's filesystem (a 2 MiB tmpfs) fills up while fio
    writes 4 KiB pages far past the high watermark. Each failed writeback
    gives its own block back; that is no space coming back, so writeback
    stays stalled and writers do not wait for it again: they keep most of
    the speed of the same job on a device without a backing file, and fio
    reads every page back intact."""
    if not shutil.which("fio"):
        pytest.skip("fio not installed")
    job_args = ("--rw=randwrite", "--bs=4k", "--size=32M", "--iodepth=16",
                "--verify=crc32c", "--do_verify=1", "--verify_fatal=1")
    writes = (32 << 20) // PAGE
    with make_server(size="64M") as plain:
        base = run_fio(plain, *job_args)
    fs = small_tmpfs("2m")
    with make_server(size="64M", backing_file=os.path.join(fs, "b.img"),
                     high_watermark_bytes=8 << 20, low_watermark_bytes=6 << 20) as server:
        job = run_fio(server, *job_args)  # verifies every page it wrote
        assert job["read"]["io_bytes"] == 32 << 20
        s = stats(server)
    assert s["bd_write_errors"] >= 1 and "No space left" in s["bd_last_error"]  # the disk filled
    assert 0 < s["bd_count"] <= 512 and s["writeback_stalled"] == 1
    assert s["writeback_stalls"] <= 3, s
    assert s["throttled_writes"] < writes // 50, s
    assert s["policy_runs"] < writes // 50 and s["throttle_skipped"] > writes // 2, s
    assert s["orig_data_size"] == 32 << 20 and s["failed_reads"] == s["failed_writes"] == 0
    ratio = job["write"]["iops"] / base["write"]["iops"]
    assert ratio >= 0.3, (job["write"]["iops"], base["write"]["iops"])

"""Automatic writeback that cannot progress (backing file full, or
writeback_limit used up) with memory above the high watermark: writers
stop waiting for it, the stats say so, and it resumes when something
changes.  Through real nbdkit and libnbd; asserted on the counters, not on
wall time."""

import os

from helpers import connect, stats
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

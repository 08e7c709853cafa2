"""End to end through a real nbdkit and real NBD clients (libnbd, nbdinfo,
qemu-img): from connecting up to concurrency, in that order."""

import hashlib
import json
import os
import random
import shutil
import struct
import subprocess

import pytest

from helpers import connect, nbd, run_threads, stats
from zramd.control import call

PAGE = 4096
TEXT = (b"compressible swap-like text page with some numbers 0123456789 " * 100)[:PAGE]


def test_size_and_capabilities(h, server):
    assert h.get_size() == 64 << 20
    assert h.get_block_size(nbd.SIZE_MINIMUM) == 1
    assert h.get_block_size(nbd.SIZE_PREFERRED) == PAGE
    assert h.get_block_size(nbd.SIZE_MAXIMUM) == 32 << 20
    assert h.can_trim() and h.can_zero() and h.can_fast_zero() and h.can_flush()
    assert h.can_fua() and h.can_multi_conn() and not h.is_read_only()
    assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)


def test_unwritten_reads_zeros(h):
    assert h.pread(3 * PAGE + 5, 12345) == bytes(3 * PAGE + 5)


@pytest.mark.parametrize("pin", [True, False], ids=["pinned", "unpinned"])
def test_round_trips_at_odd_offsets(make_server, pin):
    rng = random.Random(42)
    size = 4 << 20
    with make_server(size="4M", pin_thread_state=pin) as server:
        h = connect(server)
        model = bytearray(size)
        cases = [(0, 1), (1, 1), (PAGE - 1, 2), (PAGE - 3, PAGE + 6), (10, 5 * PAGE),
                 (7 * PAGE, PAGE), (size - 1, 1), (size - 3 * PAGE - 1, 3 * PAGE + 1)]
        cases += [(rng.randrange(size - 70000), rng.randrange(1, 70000)) for _ in range(40)]
        for offset, length in cases:
            data = rng.choice([os.urandom(length), (TEXT * 20)[:length], b"\x09" * length])
            h.pwrite(data, offset)
            model[offset:offset + length] = data
            assert h.pread(length, offset) == data
        assert h.pread(size, 0) == model
        h.shutdown()


def test_large_request_spanning_many_pages(h):
    data = (TEXT * 2000)[:8 << 20]
    data = data[:PAGE * 100] + os.urandom(PAGE * 10) + data[PAGE * 110:]
    h.pwrite(data, 3)
    assert hashlib.sha256(h.pread(len(data), 3)).digest() == hashlib.sha256(data).digest()


def test_requests_above_the_advertised_maximum_fail_with_einval(h):
    maximum = h.get_block_size(nbd.SIZE_MAXIMUM)
    h.set_strict_mode(0)  # let the client send what the server advertised against
    data = (TEXT * (maximum // PAGE + 1))[:maximum]
    h.pwrite(data, 0)  # exactly the maximum is served
    assert h.pread(maximum, 0) == data
    for length in (maximum + 1, 2 * maximum):
        with pytest.raises(nbd.Error) as exc:
            h.pwrite(b"\xff" * length, 0)
        assert exc.value.errno == "EINVAL"
        with pytest.raises(nbd.Error) as exc:
            h.pread(length, 0)
        assert exc.value.errno == "EINVAL"
    assert h.pread(maximum, 0) == data  # the refused write changed nothing
    assert h.pread(PAGE, maximum) == bytes(PAGE)


def test_stats_deltas_are_exact(h, server):
    before = stats(server)
    h.pwrite(bytes(PAGE) + b"\x42" * PAGE + os.urandom(PAGE), 0)
    after = stats(server)
    assert after["orig_data_size"] - before["orig_data_size"] == 3 * PAGE
    assert after["same_pages"] - before["same_pages"] == 2
    assert after["huge_pages"] - before["huge_pages"] == 1
    assert after["huge_pages_since"] - before["huge_pages_since"] == 1
    assert after["compr_data_size"] - before["compr_data_size"] == PAGE
    h.pwrite(TEXT, 8 * PAGE)
    later = stats(server)
    assert 0 < later["compr_data_size"] - after["compr_data_size"] < PAGE // 4
    assert later["num_writes"] - before["num_writes"] == 2


def test_trim_frees_memory(h, server):
    full_data = os.urandom(64 * PAGE)
    h.pwrite(full_data, 0)
    full = stats(server)
    assert full["mem_used_total"] > 64 * PAGE
    h.trim(62 * PAGE, PAGE)  # pages 1..62 freed whole
    s = stats(server)
    assert s["orig_data_size"] == 2 * PAGE
    assert s["notify_free"] - full["notify_free"] == 62
    # the two pages left sit in two blocks of the huge class (8 pages each)
    assert s["mem_used_total"] < full["mem_used_total"] // 3
    assert s["mem_used_max"] == full["mem_used_max"]
    # compaction moves one into the other's block and gives a block back
    r = call(server.control_path, "compact")
    assert r["pages_freed"] == 8 and stats(server)["mem_used_total"] < 9 * PAGE
    assert h.pread(PAGE, 0) == full_data[:PAGE] and h.pread(PAGE, 63 * PAGE) == full_data[-PAGE:]
    assert h.pread(PAGE, PAGE) == bytes(PAGE)
    # trim with partial edges zeroes the edges and keeps the rest
    h.pwrite(b"\xee" * 3 * PAGE, 100 * PAGE)
    h.trim(PAGE, 100 * PAGE + 100)
    assert h.pread(3 * PAGE, 100 * PAGE) == b"\xee" * 100 + bytes(PAGE) + b"\xee" * (2 * PAGE - 100)


@pytest.mark.parametrize("flags", [0, "fast", "may_trim"])
def test_write_zeroes(h, server, flags):
    flag = {0: 0, "fast": nbd.CMD_FLAG_FAST_ZERO, "may_trim": nbd.CMD_FLAG_NO_HOLE * 0}[flags]
    h.pwrite(os.urandom(16 * PAGE), 0)
    used = stats(server)["mem_used_total"]
    h.zero(14 * PAGE + 50, PAGE - 25, flag)
    assert h.pread(16 * PAGE, 0)[PAGE - 25:15 * PAGE + 25] == bytes(14 * PAGE + 50)
    # 16 huge pages filled two blocks of 8; the two edge pages now share one
    assert stats(server)["mem_used_total"] <= used - 8 * PAGE


def test_flush_and_fua(h):
    h.pwrite(TEXT, 0, nbd.CMD_FLAG_FUA)
    h.flush()
    assert h.pread(PAGE, 0) == TEXT


def test_extents_show_holes_zeros_and_data(h):
    h.pwrite(TEXT * 2, 4 * PAGE)
    h.pwrite(bytes(PAGE), 8 * PAGE)
    seen = []

    def callback(metacontext, offset, entries, err):
        seen.extend(zip(entries[0::2], entries[1::2]))
        return 0

    h.block_status(16 * PAGE, 0, callback)
    runs = []
    pos = 0
    for length, flags in seen:
        runs.append((pos, length, flags))
        pos += length
    assert runs[:4] == [(0, 4 * PAGE, 3), (4 * PAGE, 2 * PAGE, 0), (6 * PAGE, 2 * PAGE, 3),
                        (8 * PAGE, PAGE, 2)]


def test_nbdinfo_map(h, server):
    h.pwrite(TEXT, 0)
    out = subprocess.run(["nbdinfo", "--map", "--json", server.uri], capture_output=True,
                         text=True, check=True).stdout
    extents = json.loads(out)
    assert extents[0] == {"offset": 0, "length": PAGE, "type": 0, "description": "data"}
    assert extents[1]["type"] == 3 and extents[1]["description"] == "hole,zero"


def test_qemu_img_copy_and_compare(server, tmp_path):
    if not shutil.which("qemu-img"):
        pytest.skip("qemu-img not installed")
    image = tmp_path / "disk.raw"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
        for i in range(0, 64 << 20, 1 << 20):
            f.seek(i)
            f.write(TEXT * 16 if i % (3 << 20) else os.urandom(PAGE * 8))
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(image),
                    server.uri], check=True)
    result = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(image),
                             server.uri], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_enospc_at_mem_limit_keeps_earlier_data(make_server):
    with make_server(size="64M", mem_limit="1M") as server:
        h = connect(server)
        written = {}
        offset = 0
        with pytest.raises(nbd.Error) as info:
            while True:
                data = os.urandom(8 * PAGE)
                h.pwrite(data, offset)
                written[offset] = data
                offset += len(data)
        assert info.value.errno == "ENOSPC"
        s = stats(server)
        assert s["mem_used_total"] <= s["mem_limit"] == 1 << 20
        assert s["failed_writes"] == 1
        for off, data in written.items():
            assert h.pread(len(data), off) == data
        assert h.pread(8 * PAGE, offset) == bytes(8 * PAGE)  # the failed write left nothing
        # freeing space makes writes succeed again
        h.trim(8 * PAGE, 0)
        h.pwrite(os.urandom(8 * PAGE), offset)
        h.shutdown()


def test_concurrent_connections_overlapping_writes(make_server):
    """Several connections, many requests in flight each: whole-page writes
    land whole (every page is one writer's page, never a mix), sub-page
    writes to disjoint ranges of shared pages are never lost, and the
    stats match the final contents."""
    nconn, pages, rounds = 4, 32, 150
    with make_server(size="1M") as server:
        handles = [connect(server) for _ in range(nconn)]
        span = PAGE // 16
        last_partial = {}

        def page_for(conn, seq):
            head = struct.pack("<II", conn, seq)
            body = hashlib.sha256(head).digest() * (PAGE // 32)
            return head + body[:PAGE - 8]

        def worker(conn):
            h = handles[conn]
            rng = random.Random(conn)
            for seq in range(rounds):
                cookies = []
                for k in range(8):  # 8 requests in flight
                    index = rng.randrange(pages)
                    if k % 2:
                        cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(
                            bytearray(page_for(conn, seq * 8 + k))), index * PAGE))
                    else:  # sub-page: this connection's own range of page 'index'
                        fill = bytes([conn + 1]) * span
                        cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(
                            bytearray(fill)), pages * PAGE + index * PAGE + conn * span))
                        last_partial[(conn, index)] = fill
                while h.aio_in_flight() > 0:
                    h.poll(-1)
                for c in cookies:
                    assert h.aio_command_completed(c)

        run_threads(worker, range(nconn))
        h = handles[0]
        data = h.pread(pages * PAGE, 0)
        for index in range(pages):
            page = data[index * PAGE:(index + 1) * PAGE]
            if page != bytes(PAGE):
                conn, seq = struct.unpack("<II", page[:8])
                assert page == page_for(conn, seq), f"page {index} is a mix of writes"
        for (conn, index), fill in last_partial.items():
            off = pages * PAGE + index * PAGE + conn * span
            assert h.pread(span, off) == fill
        s = stats(server)
        assert s["failed_writes"] == s["failed_reads"] == 0
        for hh in handles:
            hh.shutdown()

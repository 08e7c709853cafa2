"""Packed compressed writeback (--writeback-compressed) through a real
nbdkit, NBD (libnbd) and the control socket: pages read back identical,
bd_count against bd_blocks, freed packed space punched out of the file,
repacking, encryption, a full or failing backing store, rewrites racing a
writeback, writeback by page index, and bad values refused in one line."""

import errno
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time

import pytest

from helpers import connect, stats
from zramd.control import ControlError, call

PAGE = 4096
ZRAMD = [sys.executable, "-m", "zramd.cli"]
WORDS = [b"swap ", b"page ", b"zram ", b"block ", b"cold ", b"packed ", b"nbd "]


def text_page(i: int) -> bytes:
    """A page that compresses to about a quarter of its size, unique per i."""
    rng = random.Random(i)
    out = bytearray(b"%08d " % i)
    while len(out) < PAGE:
        out += rng.choice(WORDS)
        if rng.randrange(8) == 0:
            out += b"%d " % rng.randrange(1 << 20)
    return bytes(out[:PAGE])


def ctl(server, cmd, **args):
    return call(server.control_path, cmd, **args)


def allocated_bytes(path: str) -> int:
    return os.stat(path).st_blocks * 512


@pytest.fixture
def packed_server(make_server, sockdir):
    def factory(**kwargs):
        kwargs.setdefault("size", "32M")
        kwargs.setdefault("backing_file", os.path.join(sockdir, "backing.img"))
        kwargs.setdefault("writeback_compressed", True)
        return make_server(**kwargs)

    return factory


def wait_for(pred, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_packed_round_trip_and_block_counts(packed_server):
    with packed_server(recomp_algorithm="zstd") as server:
        h = connect(server)
        npages = 600
        data = b"".join(text_page(i) for i in range(npages)) + os.urandom(8 * PAGE)
        h.pwrite(data, 0)
        ctl(server, "recompress", type="all")  # some pages in the secondary codec's form
        assert ctl(server, "writeback", type="huge")["written"] == 8
        ctl(server, "idle")
        r = ctl(server, "writeback", type="idle")
        assert r["written"] == npages and r["error"] is None
        s = stats(server)
        assert s["writeback_compressed"] is True
        assert s["bd_count"] == npages + 8  # zram's meaning: pages on the backing store
        # packed: the compressed text pages share blocks, the huge ones take one each
        assert 8 < s["bd_blocks"] < npages // 2 + 8
        assert s["bd_blocks"] == s["backing_used_blocks"]
        assert allocated_bytes(server.settings.backing_file) <= s["bd_blocks"] * PAGE + (1 << 20)
        assert h.pread(len(data), 0) == data
        assert stats(server)["bd_reads"] == npages + 8
        h.shutdown()


def test_trim_and_rewrite_free_packed_space_and_repack_keeps_data(packed_server):
    with packed_server() as server:
        path = server.settings.backing_file
        h = connect(server)
        npages = 1024
        pages = [text_page(i) for i in range(npages)]
        h.pwrite(b"".join(pages), 0)
        ctl(server, "idle")
        assert ctl(server, "writeback", type="idle")["written"] == npages
        full = allocated_bytes(path)
        blocks = stats(server)["bd_blocks"]
        # trim the first half whole: its blocks empty and are punched out
        h.trim(npages // 2 * PAGE, 0)
        s = stats(server)
        assert s["bd_count"] == npages // 2 and s["bd_blocks"] <= blocks // 2 + 2
        assert allocated_bytes(path) <= full // 2 + 2 * PAGE
        # rewrite every other page of the rest: blocks hold dead objects beside
        # live ones, and the writeback thread repacks them
        for i in range(npages // 2, npages, 2):
            pages[i] = text_page(i + 10_000)
            h.pwrite(pages[i], i * PAGE)
        wait_for(lambda: stats(server)["bd_dead_blocks"] == 0)
        s = stats(server)
        assert s["bd_repacked_pages"] > 0 and s["bd_count"] == npages // 4
        assert s["bd_blocks"] <= blocks // 4 + 4  # the live half of the half, packed again
        assert allocated_bytes(path) <= full // 4 + 4 * PAGE
        assert h.pread(npages // 2 * PAGE, 0) == bytes(npages // 2 * PAGE)
        for i in range(npages // 2, npages):
            assert h.pread(PAGE, i * PAGE) == pages[i], f"page {i}"
        # everything trimmed: nothing left in the file
        h.trim(npages * PAGE, 0)
        wait_for(lambda: stats(server)["bd_blocks"] == 0)
        assert allocated_bytes(path) == 0
        h.shutdown()


def test_encrypted_packed_pages(packed_server):
    marker = b"PLAINTEXT-MARKER-" * 240
    with packed_server(backing_encrypt="aes-256-gcm") as server:
        h = connect(server)
        data = b"".join((b"%04d" % i + marker)[:PAGE] for i in range(64))
        h.pwrite(data, 0)
        ctl(server, "idle")
        assert ctl(server, "writeback", type="idle")["written"] == 64
        s = stats(server)
        assert s["backing_encryption"] == "aes-256-gcm" and s["bd_blocks"] < 64
        with open(server.settings.backing_file, "rb") as f:
            raw = f.read()
        assert b"PLAINTEXT-MARKER" not in raw
        assert h.pread(len(data), 0) == data
        assert stats(server)["bd_auth_errors"] == 0
        h.shutdown()


def test_full_backing_file_keeps_the_rest_in_ram(packed_server):
    with packed_server(backing_size_bytes=4 * PAGE) as server:
        h = connect(server)
        data = b"".join(text_page(i) for i in range(200))
        h.pwrite(data, 0)
        ctl(server, "idle")
        r = ctl(server, "writeback", type="idle")
        assert 4 <= r["written"] < 200 and "full" in r["error"]
        s = stats(server)
        assert s["bd_blocks"] == 4 and s["bd_count"] == r["written"]
        assert h.pread(len(data), 0) == data
        h.pwrite(b"still serving", 5)
        h.shutdown()


def test_disk_full_under_packed_writeback_leaves_pages_in_ram(make_server, small_tmpfs):
    tiny_fs = small_tmpfs("64k")
    backing = os.path.join(tiny_fs, "b.img")
    with make_server(size="16M", backing_file=backing, writeback_compressed=True) as server:
        h = connect(server)
        data = b"".join(text_page(i) for i in range(600))
        h.pwrite(data, 0)
        ctl(server, "idle")
        r = ctl(server, "writeback", type="idle")
        assert 0 < r["written"] < 600 and "No space left" in r["error"]
        s = stats(server)
        assert s["bd_write_errors"] == 1 and s["bd_count"] == r["written"]
        assert s["bd_blocks"] == s["backing_used_blocks"]
        assert h.pread(len(data), 0) == data
        h.pwrite(data[:PAGE], 1000 * PAGE)  # serving continues
        h.shutdown()


def test_rewrites_during_packed_writeback_keep_the_new_data(packed_server):
    with packed_server(writeback_batch_pages=8) as server:
        h = connect(server)
        npages = 3000
        h.pwrite(b"".join(text_page(i) for i in range(npages)), 0)
        final = {}
        done = threading.Event()

        def rewriter():
            w = connect(server)
            rng = random.Random(3)
            while not done.is_set():
                i = rng.randrange(npages)
                final[i] = text_page(i + 1_000_000 * rng.randrange(1, 50))
                w.pwrite(final[i], i * PAGE)
            w.shutdown()

        t = threading.Thread(target=rewriter)
        t.start()
        try:
            for _ in range(3):
                ctl(server, "idle")
                ctl(server, "writeback", type="idle")
        finally:
            done.set()
            t.join()
        for i in range(npages):
            assert h.pread(PAGE, i * PAGE) == final.get(i, text_page(i)), f"page {i}"
        wait_for(lambda: stats(server)["bd_dead_blocks"] == 0)
        s = stats(server)
        assert s["bd_count"] > 0 and s["failed_reads"] == 0
        assert s["bd_blocks"] == s["backing_used_blocks"]
        h.shutdown()


@pytest.mark.parametrize("packed", [False, True])
def test_writeback_by_page_index_and_range(packed_server, packed):
    with packed_server(writeback_compressed=packed) as server:
        h = connect(server)
        data = b"".join(text_page(i) for i in range(100))
        h.pwrite(data, 0)
        sock = ["--socket", server.socket_path]

        def zramd(*args):
            return subprocess.run(ZRAMD + list(args) + sock, capture_output=True, text=True,
                                  timeout=60)

        out = zramd("writeback", "--page-index", "7", "--page-indexes", "20-29")
        assert out.returncode == 0 and "11 pages written" in out.stdout, out
        assert stats(server)["bd_count"] == 11
        r = ctl(server, "writeback", page_indexes="20-29")
        assert (r["written"], r["candidates"]) == (0, 0)  # those are out already: no longer in RAM
        r = ctl(server, "writeback", page_indexes="40-49,7,95")
        assert r["written"] == 11  # page 7 is out already
        assert stats(server)["bd_count"] == 22
        assert h.pread(len(data), 0) == data
        before = stats(server)
        for bad, message in [
            ("0-8192", "page 8192 is beyond the device"),
            ("9-3", "is not a range A-B with A <= B"),
            ("x", "is not N or A-B"),
            ("5-", "is not N or A-B"),
            ("", "page_indexes must be"),
        ]:
            with pytest.raises(ControlError, match=message):
                ctl(server, "writeback", page_indexes=bad)
        with pytest.raises(ControlError, match="a type or page_indexes, not both"):
            ctl(server, "writeback", type="idle", page_indexes="1")
        out = zramd("writeback", "--page-indexes", "3-1")
        assert out.returncode != 0 and out.stderr.count("\n") == 1, out
        out = zramd("writeback", "idle", "--page-index", "1")
        assert out.returncode != 0 and out.stderr.count("\n") == 1, out
        after = stats(server)
        assert (after["bd_count"], after["bd_writes"]) == (before["bd_count"], before["bd_writes"])
        h.shutdown()


def test_batch_size_is_runtime_settable_and_checked(packed_server):
    with packed_server() as server:
        assert stats(server)["writeback_batch_pages"] == 64
        sock = ["--socket", server.socket_path]
        ok = subprocess.run(ZRAMD + ["set", "writeback_batch_size", "16"] + sock,
                            capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0, ok
        assert stats(server)["writeback_batch_pages"] == 16
        bad = subprocess.run(ZRAMD + ["set", "writeback_batch_size", "0"] + sock,
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode != 0 and bad.stderr.count("\n") == 1, bad
        assert "writeback_batch_size must be 1..4096" in bad.stderr
        assert stats(server)["writeback_batch_pages"] == 16


def test_bad_serve_options_are_one_line(sockdir):
    for argv, message in [
        (["--writeback-compressed"], "compressed writeback needs a backing store"),
        (["--backing-file", os.path.join(sockdir, "b.img"), "--writeback-batch-size", "0"],
         "writeback_batch_size must be 1..4096"),
        (["--backing-file", os.path.join(sockdir, "b.img"), "--writeback-batch-size", "lots"],
         "writeback-batch-size"),
    ]:
        out = subprocess.run(ZRAMD + ["serve", "--size", "16M", "-U",
                                      os.path.join(sockdir, "x.sock"), *argv],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode != 0 and out.stderr.count("\n") == 1, out
        assert message in out.stderr, out


def test_watermark_policy_with_packed_writeback_under_fio(packed_server):
    """fio writes 48 MiB of half-compressible data with verification through
    a device whose high watermark is 8 MiB: the coldest pages go to the
    backing file packed, memory stays near the mark, nothing is lost."""
    if not shutil.which("fio"):
        pytest.skip("fio not installed")
    high = 8 << 20
    with packed_server(size="64M", high_watermark_bytes=high, low_watermark_bytes=6 << 20) as server:
        result = subprocess.run(
            ["fio", "--name=wm", "--ioengine=nbd", f"--uri={server.uri}", "--rw=randwrite",
             "--bs=4k", "--size=48M", "--iodepth=16", "--verify=crc32c", "--do_verify=1",
             "--verify_fatal=1", "--buffer_compress_percentage=60", "--refill_buffers",
             "--output-format=json"],
            capture_output=True, text=True, timeout=600, cwd=os.path.dirname(server.socket_path))
        assert result.returncode == 0, result.stderr[-2000:]
        job = json.loads(result.stdout[result.stdout.index("{"):])["jobs"][0]
        assert job["error"] == 0 and job["read"]["io_bytes"] == 48 << 20
        s = stats(server)
        assert s["mem_used_max"] <= high + 64 * 1024, s["mem_used_max"]
        assert s["policy_runs"] > 0 and s["failed_reads"] == 0
        assert s["bd_count"] > (30 << 20) // PAGE
        assert s["bd_blocks"] < s["bd_count"] * 3 // 4  # packed: fewer blocks than pages


def nbd_eio(h, length, offset) -> bool:
    import nbd

    try:
        h.pread(length, offset)
    except nbd.Error as exc:
        assert exc.errnum == errno.EIO
        return True
    return False


def test_packed_cut_then_regrown_file_is_an_eio_never_zeros(packed_server):
    """The block-level check holds for packed blocks: a file cut below them
    and grown again reads EIO for the cut pages, never zeros or other data."""
    with packed_server() as server:
        path = server.settings.backing_file
        h = connect(server)
        pages = [text_page(i) for i in range(2048)]
        h.pwrite(b"".join(pages), 0)
        ctl(server, "idle")
        assert ctl(server, "writeback", type="idle")["written"] == 2048
        blocks = stats(server)["bd_blocks"]
        os.truncate(path, blocks // 2 * PAGE)  # the second half of the blocks is cut
        more = b"".join(text_page(i + 50_000) for i in range(64))
        h.pwrite(more, 4096 * PAGE)
        assert ctl(server, "writeback", page_indexes="4096-4159")["written"] == 64  # regrows
        assert os.stat(path).st_size > blocks // 2 * PAGE
        bad = [i for i in range(0, 2048, 7) if nbd_eio(h, PAGE, i * PAGE)]
        assert bad and stats(server)["bd_checksum_errors"] >= len(bad)
        for i in set(range(0, 2048, 7)) - set(bad):
            assert h.pread(PAGE, i * PAGE) == pages[i]
        assert h.pread(len(more), 4096 * PAGE) == more
        h.shutdown()


def test_packed_tampered_encrypted_block_is_an_eio(packed_server):
    with packed_server(backing_encrypt="chacha20-poly1305") as server:
        path = server.settings.backing_file
        h = connect(server)
        pages = [text_page(i) for i in range(64)]
        h.pwrite(b"".join(pages), 0)
        ctl(server, "idle")
        assert ctl(server, "writeback", type="idle")["written"] == 64
        with open(path, "r+b") as f:  # flip a bit in block 0
            f.seek(100)
            byte = f.read(1)
            f.seek(100)
            f.write(bytes([byte[0] ^ 1]))
        bad = [i for i in range(64) if nbd_eio(h, PAGE, i * PAGE)]
        assert 1 <= len(bad) < 64  # the pages packed in block 0, and only those
        assert stats(server)["bd_auth_errors"] >= len(bad)
        for i in set(range(64)) - set(bad):
            assert h.pread(PAGE, i * PAGE) == pages[i]
        h.shutdown()

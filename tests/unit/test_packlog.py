"""Packed compressed writeback (packlog.py) at the engine level: real
files, real codecs, the store's own audit."""

import os
import random

import pytest

from zramd.engine.backing import BackingFile
from zramd.engine.codecs import make_codec
from zramd.engine.packlog import PackLog
from zramd.engine.store import PageStore
from zramd.engine.writeback import Writeback

PAGE = 4096


def page_of(i: int, rng: random.Random | None = None) -> bytes:
    """Text-like pages: lz4 makes about 1.9..2.1 KiB of each (two to a block)."""
    rng = rng or random.Random(i)
    words = [b"alpha ", b"beta ", b"gamma ", b"delta ", b"zram ", b"block ", b"%d " % i]
    out = bytearray()
    noisy = rng.randrange(2, 30)
    while len(out) < PAGE:
        out += rng.choice(words)
        if rng.randrange(100) < noisy:
            out += bytes([rng.randrange(32, 127)])
    return bytes(out[:PAGE])


def make(tmp_path, pages=64, cipher=None, recomp=False, backing_pages=None):
    codec = make_codec("lz4")
    rc = make_codec("zstd") if recomp else None
    backing = BackingFile(str(tmp_path / "b.img"), (backing_pages or pages) * PAGE, cipher)
    pack = PackLog(backing, codec, rc)
    store = PageStore(pages * PAGE, codec, recomp_codec=rc, backing=pack)
    wb = Writeback(store, backing, pack=pack)
    return store, backing, pack, wb


def read_all(store) -> bytes:
    buf = bytearray(store.size_bytes)
    store.read(memoryview(buf), 0)
    return bytes(buf)


@pytest.mark.parametrize("cipher", [None, "aes-256-gcm"])
def test_packed_round_trip_and_counts(tmp_path, cipher):
    store, backing, pack, wb = make(tmp_path, cipher=cipher)
    data = b"".join(page_of(i) for i in range(64))
    store.write(data, 0)
    result = wb._writeback(store.candidates("all"), None)
    assert result["written"] == 64 and not result["error"]
    stats = wb.stats()
    assert store.bd_count == 64
    assert 0 < stats["bd_blocks"] <= 64 // 2  # packed: at least two pages a block
    assert stats["bd_blocks"] == pack.blocks_in_use() == backing.used_blocks()
    assert read_all(store) == data
    store.audit()
    backing.close()


def test_huge_and_recompressed_pages_pack_and_read_back(tmp_path):
    store, backing, pack, wb = make(tmp_path, recomp=True)
    noise = os.urandom(PAGE)
    store.write(noise, 0)  # huge: stored raw, a block of its own
    store.write(page_of(1), PAGE)
    store.write(page_of(2), 2 * PAGE)
    store.recompress("all")
    assert store.block_state(2) == "recompressed"
    result = wb._writeback(store.candidates("all"), None)
    assert result["written"] == 3
    assert read_all(store)[: 3 * PAGE] == noise + page_of(1) + page_of(2)
    assert backing.used_blocks() == 2
    backing.close()


def test_trim_frees_blocks_and_repack_moves_live_objects(tmp_path):
    store, backing, pack, wb = make(tmp_path)
    data = [page_of(i) for i in range(64)]
    store.write(b"".join(data), 0)
    wb._writeback(store.candidates("all"), None)
    before = backing.used_blocks()
    # trim every other page: most blocks keep live objects beside dead ones
    for i in range(0, 64, 2):
        store.discard(i * PAGE, PAGE)
        data[i] = bytes(PAGE)
    wb.discard_freed()
    assert pack.has_dead()
    wb._repack()
    assert not pack.has_dead()
    assert backing.used_blocks() < before
    assert pack.stats()["bd_repacked_pages"] > 0
    assert read_all(store) == b"".join(data)
    store.audit()
    # everything trimmed: no block left in use, all discarded
    store.discard(0, store.size_bytes)
    wb.discard_freed()
    assert backing.used_blocks() == 0 and pack.blocks_in_use() == 0
    backing.close()


def test_page_rewritten_during_packing_keeps_new_data(tmp_path):
    store, backing, pack, wb = make(tmp_path)
    store.write(page_of(1) + page_of(2), 0)
    candidates = store.candidates("all")
    store.write(page_of(9), 0)  # after selection, before writeback
    result = wb._writeback(candidates, None)
    assert result["written"] == 1 and result["superseded"] == 1
    assert read_all(store)[: 2 * PAGE] == page_of(9) + page_of(2)
    store.audit()
    backing.close()


def test_full_backing_keeps_pages_in_ram(tmp_path):
    store, backing, pack, wb = make(tmp_path, pages=64, backing_pages=2)
    data = b"".join(page_of(i) for i in range(64))
    store.write(data, 0)
    result = wb._writeback(store.candidates("all"), None)
    assert result["error"] and "full" in result["error"]
    assert 0 < result["written"] < 64
    assert backing.used_blocks() == 2
    assert read_all(store) == data
    store.audit()
    backing.close()


def test_write_error_leaves_the_batch_in_ram(tmp_path):
    store, backing, pack, wb = make(tmp_path)
    data = b"".join(page_of(i) for i in range(8))
    store.write(data, 0)
    os.close(backing.fd)
    backing.fd = os.open(os.devnull, os.O_RDONLY)  # every write now fails (EBADF)
    result = wb._writeback(store.candidates("all"), None)
    assert result["written"] == 0 and "write failed" in result["error"]
    assert backing.used_blocks() == 0 and store.bd_count == 0
    assert read_all(store)[: 8 * PAGE] == data
    store.audit()


def test_batch_size_is_checked():
    from zramd.engine.writeback import MAX_WRITEBACK_BATCH_PAGES

    wb = Writeback.__new__(Writeback)
    with pytest.raises(ValueError):
        wb.set_batch_size(0)
    with pytest.raises(ValueError):
        wb.set_batch_size(MAX_WRITEBACK_BATCH_PAGES + 1)


def test_alloc_many_hands_out_what_alloc_would(tmp_path):
    """The batch allocation writeback uses: the same blocks, in the same
    order, as one ``alloc`` per block (recently freed first, once
    discarded), the same ``used_blocks``, and fewer only when full."""
    one = BackingFile(str(tmp_path / "one.img"), 16 * PAGE)
    many = BackingFile(str(tmp_path / "many.img"), 16 * PAGE)
    for backing in (one, many):
        for block in (3, 7, 1):
            if block >= backing.touched_blocks():
                while backing.touched_blocks() <= block:
                    backing.alloc()
        for block in (3, 7, 1):
            backing.free(block)
        # 3, 7 and 1 wait to be discarded: neither path may reuse them yet
    by_one = [one.alloc() for _ in range(8)]
    assert many.alloc_many(8) == by_one
    assert many.used_blocks() == one.used_blocks()
    # 13 of 16 in use, 3 freed ones wait for their discard: alloc_many
    # discards them and hands them out, then stops at the end of the file
    got = many.alloc_many(10)
    assert len(got) == 3 and set(got) == {1, 3, 7}
    assert many.used_blocks() == 16 and many.alloc_many(1) == []
    assert "full" in many.full_message()
    one.close()
    many.close()


@pytest.mark.parametrize("packed", [False, True])
def test_batch_commit_keeps_the_counters_of_the_general_install(tmp_path, packed):
    """``commit_backed`` (writeback's batch install) against the store's own
    audit: huge, recompressed and compressed pages written back, one of
    them rewritten meanwhile (it keeps its new data and stays in RAM)."""
    codec, rc = make_codec("lz4"), make_codec("zstd")
    backing = BackingFile(str(tmp_path / "b.img"), 64 * PAGE)
    pack = PackLog(backing, codec, rc) if packed else None
    store = PageStore(64 * PAGE, codec, recomp_codec=rc, backing=pack or backing)
    wb = Writeback(store, backing, pack=pack)
    rng = random.Random(5)
    data = b"".join(page_of(i) for i in range(16)) + rng.randbytes(4 * PAGE)  # 4 huge
    store.write(data, 0)
    store.recompress("all")  # some text pages go to zstd
    assert store.stats()["recompressed_pages"] > 0 and store.stats()["huge_pages"] == 4
    candidates = store.candidates("all")
    store.write(page_of(99), 2 * PAGE)  # rewritten after selection
    result = wb._writeback(candidates, None)
    assert result["written"] == 19 and result["superseded"] == 1
    counts = store.audit()
    assert counts["bd_count"] == 19 and counts["huge_pages"] == 0
    assert counts["recompressed_pages"] == 0 and counts["pages_stored"] == 20
    assert store.stats()["bd_writes"] == 19
    expect = data[: 2 * PAGE] + page_of(99) + data[3 * PAGE :]
    assert read_all(store)[: 20 * PAGE] == expect
    store.audit()
    backing.close()


def test_failed_write_part_way_installs_only_the_blocks_written_whole(tmp_path):
    """A window whose second write_many fails: the blocks of the first are
    installed, every other page stays in RAM, nothing leaks."""
    store, backing, pack, wb = make(tmp_path, pages=256)
    data = b"".join(page_of(i) for i in range(256))
    store.write(data, 0)
    calls = []
    real = backing.write_many
    file_fd = backing.fd

    def then_fail(blocks, pages):  # the real write; after the first, a read-only fd
        calls.append(len(blocks))
        real(blocks, pages)
        backing.fd = os.open(os.devnull, os.O_RDONLY)  # every later write fails (EBADF)

    backing.write_many = then_fail
    result = wb._writeback(store.candidates("all"), None)
    assert result["error"] and "write failed" in result["error"]
    assert len(calls) == 2 and 0 < result["written"] < 256
    assert store.bd_count == result["written"]
    assert backing.used_blocks() == pack.blocks_in_use() == calls[0]
    os.close(backing.fd)
    backing.fd = file_fd  # reads of the written blocks
    assert read_all(store) == data
    store.audit()
    backing.close()

"""BackingFile on its own (no nbdkit): discard before reuse, the
encryption sidecar (unique nonces, replay and tamper refused, a read racing
a free is not a false EIO), and the writeback stall engine."""

from __future__ import annotations

import errno
import os

import pytest

from zramd.engine.backing import BackingError, BackingFile, check_backing
from zramd.engine.codecs import make_codec
from zramd.engine.store import PageStore
from zramd.engine.writeback import Writeback

PAGE = 4096


def page(tag: bytes) -> bytes:
    return (tag * (PAGE // len(tag) + 1))[:PAGE]


def test_a_freed_block_is_discarded_before_it_is_reused(tmp_path):
    b = BackingFile(str(tmp_path / "b.img"), 4 * PAGE)
    blocks = [b.alloc() for _ in range(4)]
    for blk in blocks:
        b.write(blk, page(b"data%d" % blk))
    b.free(2)
    assert b.has_freed()
    with open(tmp_path / "b.img", "rb") as f:
        assert b"data2" in f.read()  # not yet discarded: and not reusable either
    assert b.alloc() == 2  # full: alloc discards the freed block, then reuses it
    assert b.discarded_blocks == 1
    with open(tmp_path / "b.img", "rb") as f:
        data = f.read()
    assert b"data2" not in data and b"data3" in data
    b.close()
    assert not (tmp_path / "b.img").exists()


def test_check_backing_leaves_nothing_behind(tmp_path):
    check_backing(str(tmp_path / "new.img"), 16 * PAGE)
    assert not (tmp_path / "new.img").exists()
    with pytest.raises(BackingError, match="goes through .*/link, which is a symbolic link"):
        os.symlink(tmp_path, tmp_path / "link")
        check_backing(str(tmp_path / "link" / "x.img"), 16 * PAGE)


@pytest.mark.parametrize("cipher", ["aes-256-gcm", "chacha20-poly1305"])
def test_encrypted_round_trip_unique_nonces_and_no_replay(tmp_path, cipher):
    path = tmp_path / "b.img"
    b = BackingFile(str(path), 8 * PAGE, cipher)
    blk = b.alloc()
    b.write(blk, page(b"first"))
    with open(path, "rb") as f:
        old = f.read(PAGE)
    ctr1 = b._ctrs[blk]
    b.write(blk, page(b"second"))  # the same block again: a new counter, a new nonce
    assert b._ctrs[blk] == ctr1 + 1
    assert b.read(blk) == page(b"second")
    with open(path, "r+b") as f:
        assert f.read(PAGE) != old
        f.seek(0)
        f.write(old)  # replay the older ciphertext
    with pytest.raises(OSError) as err:
        b.read(blk)
    assert err.value.errno == errno.EIO and b.auth_errors == 1
    # a block copied elsewhere does not authenticate there (block number is AD)
    other = b.alloc()
    b.write(other, page(b"third"))
    b.write(blk, page(b"fourth"))
    with open(path, "r+b") as f:
        f.seek(blk * PAGE)
        mine = f.read(PAGE)
        f.seek(other * PAGE)
        f.write(mine)
    with pytest.raises(OSError):
        b.read(other)
    assert b.auth_errors == 2 and b.read(blk) == page(b"fourth")
    b.close()


def test_a_read_racing_a_free_is_not_an_auth_error(tmp_path):
    b = BackingFile(str(tmp_path / "b.img"), 4 * PAGE, "aes-256-gcm")
    blk = b.alloc()
    b.write(blk, page(b"x"))
    b.free(blk)  # the store freed it between loading the slot and reading
    assert b.read(blk) == bytes(PAGE)  # the store sees the slot changed and reloads
    assert b.auth_errors == 0
    b.close()


def test_a_plain_block_changed_outside_is_an_eio_never_data(tmp_path):
    path = tmp_path / "b.img"
    b = BackingFile(str(path), 8 * PAGE)
    blocks = [b.alloc() for _ in range(3)]
    for blk in blocks:
        b.write(blk, page(b"plain%d" % blk))
    with open(path, "r+b") as f:
        f.seek(1 * PAGE + 77)
        f.write(b"X")
    with pytest.raises(OSError) as err:
        b.read(1)
    assert err.value.errno == errno.EIO and b.checksum_errors == 1
    assert b.read(0) == page(b"plain0") and b.read(2) == page(b"plain2")
    os.truncate(path, 2 * PAGE)  # cut, then grown back by a write: block 2 is a hole
    b.write(b.alloc(), page(b"plain3"))
    with pytest.raises(OSError, match="does not match its check"):
        b.read(2)
    assert b.checksum_errors == 2 and b.read(3) == page(b"plain3")
    b.free(1)  # freed between the store's load and our read: zeros, no error
    assert b.read(1) == bytes(PAGE) and b.checksum_errors == 2
    b.close()


def test_a_block_given_back_by_writeback_is_not_space_freed(tmp_path):
    """Only the block of a written-back page counts in freed_total (the
    writeback stall watches it); one a run took and gave back does not."""
    b = BackingFile(str(tmp_path / "b.img"), 4 * PAGE)
    first, second = b.alloc(), b.alloc()
    b.give_back(first)  # e.g. its write failed
    assert b.freed_total == 0 and b.used_blocks() == 1 and b.has_freed()
    b.free(second)  # a trimmed written-back page
    assert b.freed_total == 1 and b.used_blocks() == 0
    b.close()


def test_stall_engine_level(tmp_path):
    """The policy marks writeback stalled when the file is full; throttle
    then returns at once; a freed block ends the stall."""
    backing = BackingFile(str(tmp_path / "b.img"), 4 * PAGE)
    store = PageStore(64 * PAGE, make_codec("lz4"), backing=backing)
    wb = Writeback(store, backing, high_watermark=8 * PAGE, low_watermark=4 * PAGE)
    for i in range(16):
        store.write(os.urandom(PAGE), i * PAGE)
    wb._policy()
    assert wb.stall_reason is not None and "full" in wb.stall_reason and wb.stalls == 1
    wb.throttle()  # no thread runs the policy here: it must not wait
    assert wb.throttle_skipped == 1 and wb.throttled_writes == 0
    store.discard(0, 16 * PAGE)  # frees every block
    assert backing.freed_total > 0
    wb.set_watermarks(8 * PAGE, 4 * PAGE)
    assert wb.stall_reason is None
    backing.close()


@pytest.mark.parametrize("cipher", [None, "aes-256-gcm"])
def test_a_read_racing_a_reuse_is_not_an_auth_or_check_error(tmp_path, monkeypatch, cipher):
    """The block is freed, punched, reused and rewritten between the
    reader's sidecar snapshot and its pread: the data does not authenticate
    under the old counter, or match the old check, but that is a race (the
    store reloads the slot), not tampering."""
    b = BackingFile(str(tmp_path / "b.img"), 1 * PAGE, cipher)
    blk = b.alloc()
    b.write(blk, page(b"old"))
    real_pread = os.pread
    raced = []

    def pread_after_reuse(fd, n, offset):
        if not raced:
            raced.append(True)
            b.free(blk)
            assert b.alloc() == blk  # the only block: discarded, then reused
            b.write(blk, page(b"new"))
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", pread_after_reuse)
    assert b.read(blk) == bytes(PAGE) and raced
    assert b.auth_errors == b.checksum_errors == 0
    monkeypatch.setattr(os, "pread", real_pread)
    assert b.read(blk) == page(b"new")
    b.close()

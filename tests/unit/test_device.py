"""The device front end without nbdkit: async staging, generations,
flush, back-pressure and checksums, with real worker threads."""

import errno
import os
import threading

import pytest

from zramd.engine.arena import BLOCK_SHIFT, OFF_MASK, OFF_SHIFT
from zramd.engine.checksums import CHECKSUMS, make_checksum
from zramd.engine.codecs import make_codec
from zramd.engine.device import Device
from zramd.engine.store import ChecksumError, PageStore, Pending, StoreError
from zramd.units import PAGE_SIZE

TEXT = (b"stable pages must hold still while compressed. " * 100)[:PAGE_SIZE]


def make_device(mode="async", pages=256, checksum=None, start=True, **kwargs):
    store = PageStore(pages * PAGE_SIZE, make_codec("lz4"), checksum=make_checksum(checksum))
    device = Device(store, mode, **kwargs)
    if start:
        device.start()
    return device


def read(device, offset, length):
    buf = bytearray(length)
    device.read(memoryview(buf), offset)
    return bytes(buf)


def test_stage_installs_pending_then_worker_compresses():
    store = PageStore(64 * PAGE_SIZE, make_codec("lz4"))
    staged = store.stage(memoryview(TEXT * 2 + bytes(PAGE_SIZE)), 0)
    assert [index for index, _ in staged] == [0, 1]      # the zero page was kept inline
    assert [store.block_state(i) for i in (0, 1, 2)] == ["pending", "pending", "same"]
    s = store.stats()
    assert s["pending_pages"] == 2 and s["same_pages"] == 1
    assert s["compr_data_size"] == 2 * PAGE_SIZE            # pending pages are raw for now
    assert read(store, 0, 2 * PAGE_SIZE) == TEXT * 2        # served from the snapshot
    for index, pending in staged:
        assert store.complete(index, pending)
    s = store.stats()
    assert s["pending_pages"] == 0 and s["compr_data_size"] < PAGE_SIZE
    assert s["pages_compressed_async"] == 2
    assert read(store, 0, 2 * PAGE_SIZE) == TEXT * 2


def test_a_batch_installs_under_one_lock_and_skips_what_changed():
    store = PageStore(64 * PAGE_SIZE, make_codec("lz4"))
    staged = store.stage(memoryview(TEXT * 6), 0)
    store.write(b"\x07" * PAGE_SIZE, 1 * PAGE_SIZE)          # rewritten before the worker
    store.discard(3 * PAGE_SIZE, PAGE_SIZE)                 # trimmed
    newer = TEXT[::-1]
    store.stage(memoryview(newer), 4 * PAGE_SIZE)            # staged again (its own batch)
    lock = store._lock
    taken = []

    class CountingLock:  # how often the batch takes the store lock
        def __enter__(self):
            taken.append(1)
            return lock.__enter__()

        def __exit__(self, *exc):
            return lock.__exit__(*exc)

    store._lock = CountingLock()
    try:
        assert store.complete_all(staged) == 3                # pages 0, 2 and 5
    finally:
        store._lock = lock
    assert len(taken) == 1
    s = store.stats()
    assert s["pages_superseded"] == 3 and s["pending_pages"] == 1  # page 4's newer stage
    assert s["pages_compressed_async"] == 3
    assert [store.block_state(i) for i in range(6)] == [
        "compressed", "same", "compressed", "empty", "pending", "compressed"]
    assert read(store, 0, 6 * PAGE_SIZE) == (
        TEXT + b"\x07" * PAGE_SIZE + TEXT + bytes(PAGE_SIZE) + newer + TEXT)
    store.audit()


def test_stale_result_never_overwrites_newer_data():
    store = PageStore(64 * PAGE_SIZE, make_codec("lz4"))
    (index, old_pending), = store.stage(memoryview(TEXT), 0)
    store.write(b"\x07" * PAGE_SIZE, 0)                     # a later write wins
    assert not store.complete(index, old_pending)
    (index, p2), = store.stage(memoryview(TEXT), 0)
    store.discard(0, PAGE_SIZE)                             # and so does a trim
    assert not store.complete(index, p2)
    (index, p3), = store.stage(memoryview(TEXT), 0)
    newer = TEXT[::-1]
    (index, p4), = store.stage(memoryview(newer), 0)        # and a later stage
    assert not store.complete(index, p3) and store.complete(index, p4)
    assert read(store, 0, PAGE_SIZE) == newer
    s = store.stats()
    assert s["pages_superseded"] == 3 and s["pending_pages"] == 0


def test_mem_limit_is_reserved_before_the_reply():
    """Pending pages count as raw pages, so ENOSPC comes at stage time."""
    store = PageStore(64 * PAGE_SIZE, make_codec("lz4"), mem_limit_bytes=3 * PAGE_SIZE + 200)
    store.stage(memoryview(TEXT * 2), 0)
    with pytest.raises(StoreError) as info:
        store.stage(memoryview(TEXT * 2), 2 * PAGE_SIZE)
    assert info.value.errno == errno.ENOSPC
    assert store.stats()["pending_pages"] == 2


@pytest.mark.parametrize("mode", ["async", "hybrid"])
def test_flush_waits_for_everything_acknowledged(mode):
    device = make_device(mode, pages=1024, workers=2)
    try:
        data = os.urandom(PAGE_SIZE) * 4 + TEXT * 60
        for i in range(16):
            device.write(memoryview(data), i * len(data))
        device.drain()
        s = device.stats()
        assert s["pending_pages"] == 0 and s["worker_backlog"] == 0
        assert s["pages_staged"] == s["pages_compressed_async"] + s["pages_superseded"] > 0
        assert read(device, 5 * len(data), len(data)) == data
    finally:
        device.stop()


def test_hybrid_keeps_small_writes_inline():
    device = make_device("hybrid")
    try:
        device.write(memoryview(TEXT), 0)
        assert device.stats()["pages_staged"] == 0
        device.write(memoryview(TEXT * 16), PAGE_SIZE)
        device.drain()
        assert device.stats()["pages_staged"] == 16
    finally:
        device.stop()


def test_fua_writes_are_installed_before_returning():
    device = make_device("async")
    try:
        device.write(memoryview(TEXT * 4), 0, fua=True)
        s = device.stats()
        assert s["pages_staged"] == 0 and s["fua_inline"] == 1 and s["pending_pages"] == 0
    finally:
        device.stop()


def test_backpressure_compresses_inline_past_the_pending_limit():
    device = make_device("async", pages=2048, pending_limit_bytes=8 * PAGE_SIZE, start=False)
    blocker = threading.Lock()
    blocker.acquire()
    original = device.store.complete_all

    def slow_complete_all(batch):  # hold the worker so the queue fills
        with blocker:
            pass
        return original(batch)

    device.store.complete_all = slow_complete_all
    device.start()
    try:
        for i in range(64):
            device.write(memoryview(TEXT * 4), i * 4 * PAGE_SIZE)
        s = device.stats()
        assert s["pending_pages"] == 8
        assert s["backpressure_inline"] == 62
    finally:
        blocker.release()
        device.stop()
    assert read(device, 0, 256 * PAGE_SIZE) == TEXT * 256


@pytest.mark.parametrize("name", sorted(CHECKSUMS))
def test_checksums_catch_corruption(name):
    store = PageStore(16 * PAGE_SIZE, make_codec("lz4"), checksum=make_checksum(name))
    store.write(TEXT, 0)
    store.write(os.urandom(PAGE_SIZE), PAGE_SIZE)
    assert read(store, 0, 2 * PAGE_SIZE)[:PAGE_SIZE] == TEXT
    # flip one byte of the huge (raw) page behind the store's back
    h = store._handles[1]
    block = store._arena.maps[h >> BLOCK_SHIFT]
    off = (h >> OFF_SHIFT) & OFF_MASK
    block[off + 100] ^= 0xFF
    with pytest.raises(ChecksumError) as info:
        read(store, PAGE_SIZE, 10)
    assert info.value.errno == errno.EIO
    s = store.stats()
    assert s["checksum_errors"] == 1 and s["failed_reads"] == 1
    # a partial write on top of a corrupt page fails too rather than bless it
    with pytest.raises(StoreError):
        store.write(b"x", PAGE_SIZE + 5)

"""The page store against its bytearray model (test_store_model.py) with
packed compressed writeback sweeping all the time: a real backing file,
the real writeback thread writing every page in RAM back (by page range,
the public request) over and over while the rules write, trim and read,
and repacking of blocks that trims and rewrites leave half empty.

The sweeps race the rules on purpose (pages rewritten while under
writeback, blocks freed during a read, repacks moving pages a reader
holds); the model says what every read must return whatever the timing.
Rules also write back and repack in step, so every run covers packed
reads even when the thread is slow.
"""

from __future__ import annotations

import shutil
import tempfile
import threading

from hypothesis import settings
from hypothesis.stateful import invariant, rule

from test_store_model import SIZE_BYTES, StoreModel  # noqa: E402  (tests/unit on sys.path)
from zramd.engine.backing import BackingFile
from zramd.engine.checksums import make_checksum
from zramd.engine.codecs import make_codec
from zramd.engine.packlog import PackLog
from zramd.engine.store import PageStore
from zramd.engine.writeback import Writeback
from zramd.units import PAGE_SIZE

PAGES = SIZE_BYTES // PAGE_SIZE


class PackedModel(StoreModel):
    CIPHER: str | None = None

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="zramd-packed-model-")
        codec, recomp = make_codec(self.CODEC), make_codec("zstd")
        self.backing = BackingFile(f"{self.dir}/b.img", 4 * SIZE_BYTES, self.CIPHER)
        self.pack = PackLog(self.backing, codec, recomp)
        self.store = PageStore(
            SIZE_BYTES,
            codec,
            checksum=make_checksum(self.CHECKSUM),
            recomp_codec=recomp,
            backing=self.pack,
        )
        self.wb = Writeback(self.store, self.backing, pack=self.pack, batch_pages=3)
        self.wb.start()
        self.sweeping = True
        self.sweeps = 0
        self.sweeper = threading.Thread(target=self._sweep, daemon=True)
        self.sweeper.start()

    def _sweep(self) -> None:
        while self.sweeping:
            result = self.wb.request(None, pages=[(0, PAGES - 1)], timeout=30)
            assert not result.get("error"), result
            self.sweeps += 1

    def teardown(self):
        self.sweeping = False
        self.sweeper.join(30)
        try:
            # no block leaks: once every page is trimmed, none is in use
            self.store.discard(0, SIZE_BYTES)
            self.wb.discard_freed()
            self.wb.request(None, pages=[(0, 0)], timeout=30)  # the thread is idle now
            assert self.backing.used_blocks() == 0, self.wb.stats()
            assert self.pack.blocks_in_use() == 0
        finally:
            self.wb.stop()  # closes the backing file too
            shutil.rmtree(self.dir, ignore_errors=True)

    @invariant()
    def freed_blocks_are_discarded(self):
        """The device's part after every request: discard emptied blocks,
        queue a repack of blocks holding dead objects."""
        self.wb.discard_freed()

    @rule()
    def writeback_now(self):
        result = self.wb.request(None, pages=[(0, PAGES - 1)], timeout=30)
        assert not result.get("error"), result

    @rule()
    def recompress(self):
        self.store.recompress("all")

    @rule()
    def repack_now(self):
        self.wb.discard_freed()  # queues a repack if blocks hold dead objects

    @invariant()
    def written_back_pages_are_counted(self):
        s = self.wb.stats()
        assert 0 <= s["bd_blocks"] <= s["backing_blocks"]
        assert 0 <= self.store.stats()["bd_count"] <= PAGES
        assert s["writeback_compressed"] is True


class PackedEncryptedModel(PackedModel):
    CIPHER = "aes-256-gcm"


class PackedChecksumModel(PackedModel):
    CHECKSUM = "xxh3"


for model in (PackedModel, PackedEncryptedModel, PackedChecksumModel):
    model.TestCase.settings = settings(max_examples=20, stateful_step_count=25, deadline=None)
test_packed_store_matches_a_bytearray = PackedModel.TestCase
test_packed_encrypted_store_matches_a_bytearray = PackedEncryptedModel.TestCase
test_packed_checksummed_store_matches_a_bytearray = PackedChecksumModel.TestCase

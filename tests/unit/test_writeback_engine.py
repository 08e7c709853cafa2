"""The writeback engine without nbdkit: the races that NBD cannot time."""

from zramd.engine.backing import BackingFile
from zramd.engine.codecs import make_codec
from zramd.engine.store import Backed, PageStore
from zramd.engine.writeback import Writeback

PAGE = 4096
TEXT = (b"cold pages flow to disk on their own. " * 120)[:PAGE]


def text_page(i: int) -> bytes:
    return (b"%08d " % i + TEXT)[:PAGE]


def test_rewrite_under_writeback_engine_level(tmp_path):
    """The commit is a compare-and-swap: a page rewritten between being
    read for writeback and being installed keeps the new data, and its
    file block goes back to the free list."""
    store = PageStore(16 * PAGE, make_codec("lz4"), backing=None)
    backing = BackingFile(str(tmp_path / "b.img"), 16 * PAGE)
    store.backing = backing
    wb = Writeback(store, backing)
    store.write(TEXT, 0)
    store.write(TEXT, PAGE)
    candidates = store.candidates("all")
    store.write(text_page(7), 0)  # rewritten after selection, before writeback
    result = wb._writeback(candidates, None)
    assert result["written"] == 1 and result["superseded"] == 1
    assert store.block_state(0) == "compressed" and store.block_state(1) == "backed"
    store.audit()
    assert backing.used_blocks() == 1
    buf = bytearray(2 * PAGE)
    store.read(memoryview(buf), 0)
    assert bytes(buf) == text_page(7) + TEXT
    backing.close()

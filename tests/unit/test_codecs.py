"""Every registered codec: round trips, 'not worth compressing', threads."""

import os
import random

import pytest

from helpers import run_threads
from zramd.engine.codecs import CODECS, ZstdCodec, make_codec
from zramd.units import PAGE_SIZE

CODEC_NAMES = sorted(CODECS)


def pages():
    rng = random.Random(7)
    text = (b"the quick brown fox jumps over the lazy dog " * 100)[:PAGE_SIZE]
    half = bytes(rng.getrandbits(8) for _ in range(PAGE_SIZE // 2)) + bytes(PAGE_SIZE // 2)
    return {"text": text, "half-random": half, "random": os.urandom(PAGE_SIZE),
            "zeros": bytes(PAGE_SIZE)}


@pytest.mark.parametrize("name", CODEC_NAMES)
@pytest.mark.parametrize("kind", ["text", "half-random", "random", "zeros"])
def test_round_trip(name, kind):
    codec = make_codec(name)
    page = pages()[kind]
    out = codec.compress(memoryview(page), PAGE_SIZE)
    if out is None:  # not worth compressing: the store keeps it raw
        assert name == "none" or kind == "random"
        return
    assert isinstance(out, bytes) and len(out) < PAGE_SIZE
    assert codec.decompress(out) == page


@pytest.mark.parametrize("name", ["lz4", "zstd"])
def test_compressible_pages_shrink(name):
    codec = make_codec(name)
    assert len(codec.compress(pages()["text"], PAGE_SIZE)) < 200


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_incompressible_is_not_worth_compressing(name):
    assert make_codec(name).compress(os.urandom(PAGE_SIZE), 3264) is None


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_threaded_round_trip(name):
    codec = make_codec(name)

    def worker(seed):
        rng = random.Random(seed)
        for _ in range(300):
            n = rng.randrange(PAGE_SIZE)
            page = bytes([seed]) * n + rng.randbytes(64) + bytes(PAGE_SIZE - n - 64 if n < PAGE_SIZE - 64 else 0)
            page = page[:PAGE_SIZE].ljust(PAGE_SIZE, b"\0")
            out = codec.compress(page, PAGE_SIZE)
            assert out is None or codec.decompress(out) == page, f"thread {seed}"

    run_threads(worker, range(1, 9))


def test_zstd_levels():
    assert make_codec("zstd").level == ZstdCodec.DEFAULT_LEVEL
    assert make_codec("zstd", 19).describe() == "zstd:19"
    for bad in (0, 23, -1):
        with pytest.raises(ValueError, match="zstd level must be 1..22"):
            make_codec("zstd", bad)


def test_unknown_codec_and_stray_level():
    with pytest.raises(ValueError, match="unknown compression algorithm 'lzo'"):
        make_codec("lzo")
    with pytest.raises(ValueError, match="applies only to zstd"):
        make_codec("lz4", 3)


def test_zstd_result_is_a_compact_copy():
    out = make_codec("zstd").compress(pages()["text"], PAGE_SIZE)
    import sys
    assert sys.getsizeof(out) < len(out) + 64

"""Multi-page requests through a real nbdkit, as a swapping kernel sends
them: every request size from 8 KiB to 512 KiB, aligned and across page
and request boundaries with sub-page edges, in every compression mode.

Each case writes a mix of page shapes (noise, text, zeros, one repeated
word) and reads it back both as the whole request and as 4 KiB pieces
(the other read path), then the whole device against a model.
"""

import os
import random

import pytest

from helpers import connect

PAGE = 4096
SIZE = 8 << 20
TEXT = (b"swapped-out heap page with pointers 0x7f3a5c0e1000 and counters " * 80)[:PAGE]
REQUEST_KIB = (8, 16, 32, 64, 128, 256, 512)
MODES = {
    "lz4": dict(algorithm="lz4"),
    "zstd": dict(algorithm="zstd"),
    "none": dict(algorithm="none"),
    "xxh3": dict(algorithm="lz4", checksum="xxh3"),
    "async": dict(algorithm="lz4", compress_mode="async", workers=1),
    "hybrid": dict(algorithm="lz4", compress_mode="hybrid", workers=1),
}


def pages(rng: random.Random, count: int) -> bytes:
    shapes = (
        lambda: os.urandom(PAGE),
        lambda: TEXT,
        lambda: bytes(PAGE),
        lambda: rng.randbytes(8) * (PAGE // 8),
        lambda: os.urandom(PAGE // 2) + bytes(PAGE // 2),
    )
    return b"".join(rng.choice(shapes)() for _ in range(count))


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_swap_request_size_round_trips(make_server, mode):
    rng = random.Random(mode)
    with make_server(size="8M", **MODES[mode]) as server:
        h = connect(server)
        model = bytearray(SIZE)
        for kib in REQUEST_KIB:
            length = kib << 10
            slots = SIZE // length
            cases = [
                rng.randrange(slots) * length,  # aligned to its own size
                rng.randrange(1, SIZE // PAGE - kib // 4) * PAGE,  # page-aligned, across requests
                rng.randrange(1, SIZE - length - PAGE),  # sub-page edges both sides
                SIZE - length,  # the last pages of the device
            ]
            for offset in cases:
                data = pages(rng, length // PAGE)
                h.pwrite(data, offset)
                model[offset : offset + length] = data
                assert h.pread(length, offset) == data, (kib, offset)
            # overwrite a request with itself shifted: old objects freed as new come
            offset = cases[0]
            data = pages(rng, length // PAGE)
            h.pwrite(data, offset)
            model[offset : offset + length] = data
            assert h.pread(length, offset) == model[offset : offset + length]
            start = offset & ~(PAGE - 1)
            for pos in range(start, start + length, PAGE):
                assert h.pread(PAGE, pos) == model[pos : pos + PAGE], (kib, pos)
        for pos in range(0, SIZE, 512 << 10):
            assert h.pread(512 << 10, pos) == model[pos : pos + (512 << 10)]
        h.shutdown()

"""The request-mix proxy (vm/mix.py) for real: nbdkit's nbd plugin under its
stats filter in front of a real zramd server, libnbd sending known requests
through it, and the mix file `vm/run.py --request-mix` writes from what the
filter wrote when the proxy stopped."""

import json
import os
import sys
from pathlib import Path

import pytest
from helpers import nbd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from vm import mix  # noqa: E402

KIB = 1024


@pytest.fixture
def proxy(server, sockdir):
    ok, why = mix.nbdkit_has_nbd_plugin()
    if not ok:
        pytest.skip(f"nbdkit's nbd plugin or stats filter missing: {why}")
    p = mix.StatsProxy([Path(server.socket_path)], Path(sockdir), Path(sockdir) / "proxy.log")
    p.start()
    yield p
    p.stop()


def client(proxy):
    if nbd is None:
        pytest.skip("libnbd Python bindings missing (apt-get install python3-libnbd)")
    h = nbd.NBD()
    h.connect_unix(str(proxy.sockets[0]))
    return h


def test_known_requests_make_their_mix(proxy, sockdir):
    h = client(proxy)
    data = os.urandom(128 * KIB)
    h.pwrite(data, 1 << 20)
    for i in range(3):
        h.pread(32 * KIB, i * 64 * KIB)
    assert h.pread(128 * KIB, 1 << 20) == data  # the proxy passes data through unchanged
    h.shutdown()
    stats = proxy.stop()
    assert stats["read"].requests == 4 and stats["write"].requests == 1
    out = Path(sockdir) / "swap_mix.json"
    mix.write_mix(out, mix.measured_sentence(128, 160, 2), {"qemu": mix.path_mix(stats)})
    doc = json.loads(out.read_text())
    assert doc["paths"]["qemu"] == {
        "read": {"32768": 0.75, "131072": 0.25},
        "write": {"131072": 1.0},
        "requests": {"read": 4, "write": 1},
    }


def test_three_reads_one_write(proxy):
    h = client(proxy)
    for i in range(3):
        h.pread(32 * KIB, i * 32 * KIB)
    h.pwrite(b"\1" * (128 * KIB), 0)
    h.shutdown()
    assert mix.path_mix(proxy.stop()) == {
        "read": {"32768": 1.0},
        "write": {"131072": 1.0},
        "requests": {"read": 3, "write": 1},
    }


def test_buckets_with_equal_counts_both_come_back(proxy):
    """Two writes of 4 KiB and two of 64 KiB: the filter prints one of the
    two buckets (same count); the mix still has both, at their sizes."""
    h = client(proxy)
    for i in range(2):
        h.pwrite(b"\2" * (4 * KIB), i * 4 * KIB)
        h.pwrite(b"\3" * (64 * KIB), (1 << 20) + i * 64 * KIB)
    for i in range(7):
        h.pread(4 * KIB, i * 4 * KIB)
    h.pread(8 * KIB, 0)
    h.trim(64 * KIB, 1 << 20)
    h.shutdown()
    stats = proxy.stop()
    printed = mix.parse_stats(proxy.texts[0])["write"]
    assert printed.requests == 4 and len(printed.buckets) == 1 and printed.unlisted == 2
    assert stats["trim"].requests == 1
    m = mix.path_mix(stats)
    assert m["write"] == {"4096": 0.5, "65536": 0.5}
    assert m["read"] == {"4096": 0.875, "8192": 0.125}
    assert m["requests"] == {"read": 8, "write": 4}


def _export(h):
    return {
        "size": h.get_size(),
        "flags": [
            f()
            for f in (h.can_trim, h.can_zero, h.can_fast_zero, h.can_flush, h.can_fua)
            + (h.can_multi_conn, h.is_read_only, h.can_cache, h.can_df)
        ],
        "block_sizes": [
            h.get_block_size(k) for k in (nbd.SIZE_MINIMUM, nbd.SIZE_PREFERRED, nbd.SIZE_MAXIMUM)
        ],
    }


def test_the_guest_sees_the_same_export_through_the_proxy(proxy, server):
    """What the client negotiates (size, flags, block sizes) is the server's
    own, so the guest sizes its requests as it would without the proxy."""
    through = client(proxy)
    direct = nbd.NBD()
    direct.connect_unix(server.socket_path)
    assert _export(through) == _export(direct)
    assert _export(direct)["block_sizes"][1] == 4096
    through.shutdown()
    direct.shutdown()

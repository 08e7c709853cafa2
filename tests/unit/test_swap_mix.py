"""The request-mix parser and file (vm/mix.py) on nbdkit stats-filter output.

The fixtures in tests/unit/data/ are real statsfiles: the VM test's guest
swapping onto zramd through the stats proxy, once per NBD path (qemu's NBD
client, the guest's nbd driver), with the default guest settings. The one
inline below came from libnbd sending known requests through the same proxy.
"""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from vm import mix  # noqa: E402
from vm import run as vm_run  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
QEMU = (DATA / "stats_filter_qemu_swap.txt").read_text()
NBD = (DATA / "stats_filter_nbd_swap.txt").read_text()

# libnbd through `nbdkit --filter=stats nbd ... statsthreshold=100` in front
# of nbdkit memory: 3 reads of 32 KiB; writes of 128 KiB, 4 KiB, 12 KiB and
# 40 KiB (one each: four buckets with one request, of which the filter
# prints one); a trim of 64 KiB, a zero of 4 KiB, a flush.
KNOWN = """\
total: 10 ops, 1.034871 s, 348.00 KiB, 336.27 KiB/s
read: 3 ops, 0.000265 s, 96.00 KiB, 353.77 MiB/s op, 92.76 KiB/s total
  Request size and alignment breakdown:
    15 bits: 100.0% (3 reqs, 96.00 KiB total)
         16 bit aligned: 100.0% (3)
         17 bit aligned:  66.7% (2)

write: 4 ops, 0.000570 s, 184.00 KiB, 315.24 MiB/s op, 177.80 KiB/s total
  Request size and alignment breakdown:
    17 bits: 25.0% (1 reqs, 128.00 KiB total)
         20 bit aligned: 100.0% (1)

trim: 1 ops, 0.000046 s, 64.00 KiB, 1.33 GiB/s op, 61.84 KiB/s total
  Request size and alignment breakdown:
    16 bits: 100.0% (1 reqs, 64.00 KiB total)

zero: 1 ops, 0.000045 s, 4.00 KiB, 86.81 MiB/s op, 3.86 KiB/s total
  Request size and alignment breakdown:
    12 bits: 100.0% (1 reqs, 4.00 KiB total)
         22 bit aligned: 100.0% (1)

flush: 1 ops, 0.000042 s, 0 bytes, 0 bytes/s op, 0 bytes/s total
"""


def test_known_requests_parse_to_their_counts_and_sizes():
    ops = mix.parse_stats(KNOWN)
    assert set(ops) == {"read", "write", "trim", "zero", "flush"}
    assert ops["read"].requests == 3 and ops["read"].total_bytes == 96 * 1024
    assert [(b.bits, b.requests, b.size_bytes()) for b in ops["read"].buckets] == [(15, 3, 32768)]
    assert ops["trim"].buckets[0].size_bytes() == 65536
    assert ops["zero"].buckets[0].size_bytes() == 4096
    assert ops["flush"].requests == 1 and ops["flush"].buckets == []
    assert mix.op_mix(ops["read"]) == {"32768": 1.0}


def test_collided_buckets_come_back_from_the_bytes_left():
    write = mix.parse_stats(KNOWN)["write"]
    assert write.requests == 4 and write.unlisted == 3
    # 4 + 12 + 40 KiB over 3 requests: a mean of 18.7 KiB, one bucket.
    extra = write.unlisted_bucket()
    assert extra is not None and extra.bits == 14 and extra.requests == 3
    assert extra.size_bytes() == 20480
    assert mix.op_mix(write) == {"20480": 0.75, "131072": 0.25}


def test_qemu_swap_fixture():
    ops = mix.parse_stats(QEMU)
    read, write = ops["read"], ops["write"]
    assert read.requests == 11429 and write.requests == 1215
    assert [(b.bits, b.requests) for b in read.buckets] == [
        (15, 9728),
        (14, 895),
        (13, 506),
        (12, 298),
        (9, 2),
    ]
    assert read.unlisted == 0
    # The 32-64 KiB bucket had as many writes as the 8-16 KiB one (118): the
    # filter printed only one of them.
    assert [b.bits for b in write.buckets] == [19, 18, 17, 16, 14, 13, 12, 20]
    assert write.unlisted == 118
    extra = write.unlisted_bucket()
    assert extra is not None and extra.bits == 15
    assert ops["trim"].requests == 81 and ops["trim"].unlisted == 1
    assert ops["flush"].requests == 3
    shares = mix.op_mix(read)
    # 512-byte reads (2 of 11429: the partition scan) are under 0.5% and dropped.
    assert list(shares) == ["32768", "20480", "12288", "4096"]
    assert shares["32768"] == round(9728 / (11429 - 2), 4)


def test_nbd_swap_fixture():
    ops = mix.parse_stats(NBD)
    assert ops["read"].requests == 14090 and ops["write"].requests == 5650
    assert ops["read"].unlisted == 0 and ops["write"].unlisted == 0
    shares = mix.op_mix(ops["write"])
    # The largest share absorbs the rounding: within a unit of the 4th place.
    assert shares["131072"] == pytest.approx(1674 / 5650, abs=1.5e-4)
    assert shares["4096"] == round(1155 / 5650, 4)


@pytest.mark.parametrize("text", [QEMU, NBD, KNOWN], ids=["qemu", "nbd", "known"])
def test_every_mix_sums_to_one_and_keeps_sizes_of_its_buckets(text):
    ops = mix.parse_stats(text)
    for name in ("read", "write"):
        op = ops[name]
        shares = mix.op_mix(op)
        assert sum(shares.values()) == pytest.approx(1.0, abs=1e-9)
        assert all(v >= mix.MIN_SHARE for v in shares.values())
        assert all(round(v, 4) == v for v in shares.values())
        assert list(shares.values()) == sorted(shares.values(), reverse=True)
        for key in shares:
            size = int(key)
            assert size % mix.PAGE_BYTES == 0
            assert any(1 << b.bits <= size < 2 << b.bits for b in op.all_buckets())
        # Bytes are conserved: the sizes times the requests come back to the
        # operation's bytes (the dropped shares and the page rounding aside).
        kept = sum(b.requests for b in op.all_buckets() if b.requests / op.requests >= 0.005)
        mean = sum(int(k) * v for k, v in shares.items()) * kept
        assert mean == pytest.approx(op.total_bytes * kept / op.requests, rel=0.05)


def test_small_shares_are_dropped_and_the_rest_renormalised():
    op = mix.OpStats(1000, 0.0)
    op.buckets = [
        mix.Bucket(12, 600, 600 * 4096.0),
        mix.Bucket(13, 396, 396 * 8192.0),
        mix.Bucket(15, 4, 4 * 32768.0),  # 0.4%: dropped
    ]
    op.total_bytes = sum(b.total_bytes for b in op.buckets)
    assert mix.op_mix(op) == {"4096": round(600 / 996, 4), "8192": round(396 / 996, 4)}
    assert mix.op_mix(mix.OpStats(0, 0.0)) == {} and mix.op_mix(None) == {}


def test_a_bucket_line_outside_an_operation_is_an_error():
    with pytest.raises(ValueError):
        mix.parse_stats("    15 bits: 100.0% (3 reqs, 96.00 KiB total)\n")


def test_merge_sums_instances():
    a, b = mix.parse_stats(KNOWN), mix.parse_stats(KNOWN)
    merged = mix.merge_stats([a, b])
    assert merged["read"].requests == 6
    assert [(x.bits, x.requests) for x in merged["read"].buckets] == [(15, 6)]
    assert mix.op_mix(merged["read"]) == {"32768": 1.0}


def test_mix_file_format(tmp_path):
    paths = {
        "qemu": mix.path_mix(mix.parse_stats(QEMU)),
        "nbd": mix.path_mix(mix.parse_stats(NBD)),
    }
    out = tmp_path / "swap_mix.json"
    mix.write_mix(out, mix.measured_sentence(128, 160, 2), paths)
    doc = json.loads(out.read_text())
    assert set(doc) == {"measured", "paths"} and set(doc["paths"]) == {"qemu", "nbd"}
    assert "128 MiB" in doc["measured"] and "stats filter" in doc["measured"]
    for entry in doc["paths"].values():
        assert set(entry) == {"read", "write", "requests"}
        assert set(entry["requests"]) == {"read", "write"}
    assert doc["paths"]["qemu"]["requests"] == {"read": 11429, "write": 1215}
    assert doc["paths"]["nbd"]["requests"] == {"read": 14090, "write": 5650}


def test_run_accepts_one_target_per_path():
    assert vm_run.mix_targets_unfit(["zramd-virtio", "zramd-nbd"]) is None
    assert vm_run.mix_targets_unfit(vm_run.MIX_TARGETS) is None
    assert "one target per path" in (
        vm_run.mix_targets_unfit(["zramd-virtio", "memory-virtio"]) or ""
    )
    assert "no NBD path" in (vm_run.mix_targets_unfit(["guest-zram"]) or "")
    assert {mix.PATH_NAMES[vm_run.TARGETS[t][1]] for t in vm_run.MIX_TARGETS} == {"qemu", "nbd"}


def _result(target, text):
    server, dev = vm_run.TARGETS[target]
    r = vm_run.Result(target=target, server=server, dev=dev, mem_mib=128, hog_mib=160, passes=2)
    r.ok = True
    r.request_stats = mix.parse_stats(text)
    r.request_mix = mix.path_mix(r.request_stats)
    r.request_coverage = mix.coverage(r.request_stats)
    r.pages_out, r.pages_in, r.elapsed_s = 84144, 82000, 26.0
    return r


def test_rounds_are_summed_per_path_and_the_page_shows_them(tmp_path):
    results = [
        _result("zramd-virtio", QEMU),
        _result("zramd-nbd", NBD),
        _result("zramd-virtio", QEMU),
        _result("zramd-nbd", KNOWN),
    ]
    out, page = tmp_path / "swap_mix.json", tmp_path / "swap-mix.md"
    assert vm_run.write_request_mix(out, results, page, "vm/run.py --rounds 2")
    doc = json.loads(out.read_text())
    assert "2 times per path" in doc["measured"]
    qemu, nbd_path = doc["paths"]["qemu"], doc["paths"]["nbd"]
    # Two equal rounds: the same shares, twice the requests.
    assert qemu["read"] == mix.op_mix(mix.parse_stats(QEMU)["read"])
    assert qemu["requests"] == {"read": 2 * 11429, "write": 2 * 1215}
    # Unequal rounds: pooled by requests, not averaged per round.
    assert nbd_path["requests"] == {"read": 14090 + 3, "write": 5650 + 4}
    assert nbd_path["read"]["32768"] == pytest.approx((8108 + 3) / (14090 + 3), abs=1.5e-4)
    text = page.read_text()
    assert "## Path `qemu`: zramd-virtio" in text and "## Path `nbd`: zramd-nbd" in text
    assert "## How it was measured" in text and "vm/run.py --rounds 2" in text
    # 32 KiB reads on the nbd path: 57.5% in one round, 100% in the other.
    assert "| 32768 | 32 | 57.55% (57.55-100.00) |" in text
    assert text.count("- round ") == 4
    assert "Mean request size: reads 29.5 KiB (22858 requests), writes 277.0 KiB" in text


def test_a_failed_round_writes_no_mix(tmp_path):
    bad = _result("zramd-nbd", NBD)
    bad.ok = False
    out = tmp_path / "swap_mix.json"
    assert not vm_run.write_request_mix(out, [_result("zramd-virtio", QEMU), bad])
    assert not out.exists()


def test_command_line_has_no_machine_paths():
    line = vm_run.command_line(["--request-mix", str(ROOT / "bench" / "swap_mix.json"), "x"])
    assert line == "vm/run.py --request-mix bench/swap_mix.json x"

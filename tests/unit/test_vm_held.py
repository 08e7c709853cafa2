"""Stored pages against the guest's swap in use, and peak memory against the
guest's zram (vm/held.py, vm/report.py, the ZRAMD-SWAP console line): pure
code, fed the samples a run collects."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from vm import console, held  # noqa: E402
from vm.guest import kernel_append, size_mib  # noqa: E402
from vm.report import memory_vs_guest_zram, report  # noqa: E402
from vm.result import Result, check, measure  # noqa: E402

PAGE = held.PAGE_BYTES


def swap(t_s, used_pages, cached_pages=0, **extra):
    return dict(t_s=t_s, used_kib=used_pages * 4, cached_kib=cached_pages * 4, **extra)


def stats(t_s, stored_pages, label="periodic", **extra):
    return dict(t_s=t_s, orig_data_size=stored_pages * PAGE, label=label, **extra)


def test_swap_line_parses():
    e = console.parse_line("ZRAMD-SWAP t=12.5 used_kib=4096 cached_kib=40\r")
    assert e == console.SwapSample({"t": 12.5, "used_kib": 4096, "cached_kib": 40})
    z = console.parse_line(
        "ZRAMD-SWAP t=3 used_kib=8 cached_kib=0 zram_orig_bytes=8192 zram_mem_bytes=100"
    )
    assert z.values["zram_orig_bytes"] == 8192 and z.values["zram_mem_bytes"] == 100
    # a truncated line (no used_kib) is no sample
    assert console.parse_line("ZRAMD-SWAP t=3 used_") is None


def test_pair_takes_the_nearest_swap_sample_within_the_window():
    swaps = [swap(1.0, 100), swap(2.0, 200), swap(3.0, 300)]
    rows = held.pair([stats(2.2, 220), stats(9.0, 999)], swaps)
    assert rows == [
        {
            "t_s": 2.2,
            "stored_pages": 220,
            "swap_used_pages": 200,
            "swap_cached_pages": 0,
            "held_ratio": 1.1,
        }
    ]
    assert held.pair([stats(1.0, 5)], [swap(1.0, 0)])[0]["held_ratio"] is None
    assert held.pair([stats(1.0, 5)], []) == []


def test_summary_reads_the_peak_and_the_largest_ratio_with_enough_swap_in_use():
    swaps = [swap(1, 10), swap(2, 1000, 50), swap(3, 800), swap(4, 100)]
    server = [stats(1, 100), stats(2, 1100), stats(3, 1000), stats(4, 400)]
    s = held.held_summary(server, swaps)
    assert s["peak_stored_pages"] == 1100 and s["peak_swap_used_pages"] == 1000
    assert s["peak_held_ratio"] == 1.1 and s["peak_held_pages"] == 100
    assert s["peak_swap_cached_pages"] == 50
    # 100/10 and 400/100 have too little swap in use (< 25% of 1000) to count
    assert s["max_held_ratio"] == 1.25
    assert s["max_swap_used_pages"] == 1000 and s["pairs"] == 4
    assert held.held_summary([], swaps) is None


def test_held_failure_can_fail():
    ok = held.held_summary([stats(1, 950)], [swap(1, 1000)])
    assert held.held_failure(ok) is None
    short = held.held_summary([stats(1, 800)], [swap(1, 1000)])
    assert "800 pages" in held.held_failure(short)
    assert held.held_failure(None) is not None


def test_zram_samples_are_their_own_server():
    swaps = [swap(1, 100, zram_orig_bytes=100 * PAGE, zram_mem_bytes=30 * PAGE), swap(2, 5)]
    assert held.zram_server_samples(swaps) == [
        {"t_s": 1, "orig_data_size": 100 * PAGE, "mem_used_total": 30 * PAGE}
    ]


def test_peak_memory():
    samples = [stats(1, 1, mem_used_total=10, rss_bytes=7), stats(2, 1, mem_used_total=30)]
    assert held.zramd_peak_memory(samples, {"mem_used_max": 40}) == {
        "mem_used_max_bytes": 40,
        "rss_max_bytes": 7,
        "rss_growth_max_bytes": 0,
    }
    # the growth is the largest RSS less the first sample's (before the guest booted)
    grown = [*samples, stats(3, 1, mem_used_total=5, rss_bytes=19), stats(4, 1, rss_bytes=11)]
    assert held.zramd_peak_memory(grown, None)["rss_growth_max_bytes"] == 12
    assert held.zramd_peak_memory(samples, None)["mem_used_max_bytes"] == 30
    guest = {"zram_mm_stat_after_swapoff": "0,0,4096,0,27295744,0,0,0,0"}
    assert held.guest_zram_mem_used_max(guest) == 27295744
    assert held.guest_zram_mem_used_max({}) is None
    assert held.ratio(3, 2) == 1.5 and held.ratio(None, 2) is None and held.ratio(1, 0) is None


def _result(target, server, dev, **kw):
    return Result(target=target, server=server, dev=dev, mem_mib=128, hog_mib=160, passes=2, **kw)


def test_measure_and_check_judge_the_held_pages():
    r = _result("zramd-virtio", "zramd", "vda")
    r.swap_samples = [swap(1, 1000)]
    r.samples = [stats(1, 500, mem_used_total=99), stats(9, 0, label="after-swapoff")]
    measure(r)
    assert r.held["peak_stored_pages"] == 500
    assert r.peak_memory["mem_used_max_bytes"] == 99
    assert r.peak_memory["bytes_per_swap_page"] == 0.099  # 99 bytes over 1000 pages
    check(r)
    assert any("less than 90%" in f for f in r.failures), r.failures

    z = _result("guest-zram", None, "zram")
    z.swap_samples = [swap(1, 100, zram_orig_bytes=100 * PAGE, zram_mem_bytes=9)]
    z.guest = {"zram_mm_stat_after_swapoff": "0,0,0,0,50,0,0,0,0"}
    measure(z)
    assert z.held["peak_held_ratio"] == 1.0 and z.peak_memory["mem_used_max_bytes"] == 50


def test_memory_vs_guest_zram_takes_the_nearest_passing_zram_run():
    a = _result("zramd-virtio", "zramd", "vda", peak_memory={"mem_used_max_bytes": 60})
    z1 = _result("guest-zram", None, "zram", ok=True, peak_memory={"mem_used_max_bytes": 30})
    b = _result("zramd-virtio", "zramd", "vda", peak_memory={"mem_used_max_bytes": 80})
    z2 = _result("guest-zram", None, "zram", ok=True, peak_memory={"mem_used_max_bytes": 40})
    results = [a, z1, b, z2]
    assert memory_vs_guest_zram(results, 0) == 2.0
    assert memory_vs_guest_zram(results, 2) == 2.667  # z1 and z2 equally near: the first
    assert memory_vs_guest_zram(results, 1) is None  # not zramd
    assert memory_vs_guest_zram([a], 0) is None
    table = report(results)
    assert "mem vs guest zram" in table.splitlines()[0] and "2.0" in table


def test_kernel_append_discard_and_zram_size():
    line = kernel_append("vda", 160, 2, -1, 1, "pages", 256)
    assert "zramd.discard=pages" in line and "zramd.zram_mib=256" in line
    assert "zram_mib" not in kernel_append("vda", 160, 2, -1)
    assert "zramd.page_cluster=0" in kernel_append("vda", 160, 2, -1, page_cluster=0)
    assert "page_cluster" not in kernel_append("vda", 160, 2, -1)
    with pytest.raises(ValueError):
        kernel_append("vda", 160, 2, -1, 1, "sometimes")
    assert size_mib("1G") == 1024 and size_mib("256M") == 256 and size_mib("1048576") == 1

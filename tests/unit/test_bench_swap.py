"""The swap section's bookkeeping without running fio: a measured request
mix becomes fio bssplit strings (integer percentages summing to 100, sizes
in KiB), the mix file is checked, targets are per-round MB/s ratios, and a
missing mix file is one skip line. The mixes here are made-up fixtures."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench import swap  # noqa: E402
from bench.run import SECTIONS, build_parser  # noqa: E402
from bench.systems import by_name  # noqa: E402

FIXTURE_MIX = {
    "measured": "made-up fixture, not a measurement",
    "paths": {
        "qemu": {
            "read": {"32768": 0.93, "16384": 0.06, "4096": 0.01},
            "write": {"65536": 0.23, "131072": 0.70, "4096": 0.07},
            "requests": {"read": 100, "write": 200},
        },
        "nbd": {"write": {"4096": 0.002, "131072": 0.998}},
    },
}


def _parse(split: str) -> list[tuple[int, int]]:
    out = []
    for entry in split.split(":"):
        size, pct = entry.split("/")
        assert size.endswith("k")
        out.append((int(size[:-1]) * 1024, int(pct)))
    return out


@pytest.mark.parametrize(
    "fractions",
    [
        {"32768": 0.93, "16384": 0.06, "4096": 0.01},
        {"4096": 1 / 3, "8192": 1 / 3, "12288": 1 / 3},
        {"4096": 0.125, "8192": 0.125, "65536": 0.125, "131072": 0.625},
        {"4096": 0.004, "131072": 0.996},
        {"4096": 2, "8192": 1},  # not normalised: shares of the sum
        {str(4096 * k): 1 / 7 for k in range(1, 8)},
    ],
)
def test_bssplit_percentages_are_integers_summing_to_100(fractions):
    split = swap.bssplit(fractions)
    pairs = _parse(split)
    assert sum(p for _, p in pairs) == 100
    assert all(p > 0 for _, p in pairs)
    assert [s for s, _ in pairs] == sorted(s for s, _ in pairs)
    total = sum(fractions.values())
    for size, pct in pairs:
        assert abs(pct - 100 * fractions[str(size)] / total) < 1.0, (size, pct)


def test_bssplit_examples():
    assert swap.bssplit({"32768": 0.93, "16384": 0.06, "4096": 0.01}) == "4k/1:16k/6:32k/93"
    # 33.3 each: the point left over goes to one of them, the total stays 100
    assert sorted(p for _, p in swap.percentages({"4096": 1, "8192": 1, "12288": 1})) == [
        33,
        33,
        34,
    ]
    # a share that rounds to 0% is left out, the rest still sums to 100
    assert swap.bssplit({"4096": 0.004, "131072": 0.996}) == "128k/100"


@pytest.mark.parametrize(
    "fractions", [{}, {"4096": 0.0}, {"4000": 1.0}, {"0": 1.0}, {"4096": -0.5, "8192": 1.0}]
)
def test_bssplit_refuses_what_fio_cannot_run(fractions):
    with pytest.raises(ValueError):
        swap.bssplit(fractions)


def test_mix_plan_names_left_out_sizes_and_largest_size(tmp_path):
    path = tmp_path / "mix.json"
    path.write_text(json.dumps(FIXTURE_MIX))
    plan = swap.mix_plan(swap.load_mix(path))
    assert plan["qemu"]["bssplit"] == {
        "swap-out": "4k/7:64k/23:128k/70",
        "swap-in": "4k/1:16k/6:32k/93",
    }
    assert plan["qemu"]["max_bytes"] == {"swap-out": 131072, "swap-in": 32768}
    assert plan["qemu"]["requests"] == {"read": 100, "write": 200}
    # a path with only writes measured runs only swap-out
    assert plan["nbd"]["bssplit"] == {"swap-out": "128k/100"}
    assert plan["nbd"]["left_out"] == {"swap-out": [4096]}


@pytest.mark.parametrize("text", ["not json", "{}", '{"paths": {}}', '{"paths": {"qemu": {}}}'])
def test_load_mix_refuses_a_malformed_file(tmp_path, text):
    path = tmp_path / "mix.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="mix.json"):
        swap.load_mix(path)


def _job(system, op, rnd, mb_per_s, path="qemu"):
    return {
        "system": system,
        "path": path,
        "operation": op,
        "round": rnd,
        "mb_per_s": mb_per_s,
        "iops": mb_per_s * 10,
        "server_us_per_request": 50.0,
        "client_us_per_request": 20.0,
    }


def _data(jobs):
    return {
        "systems": ["zramd-lz4", "python-lz4-list", "zramd-lz4-async"],
        "paths": {"qemu": {}},
        "jobs": jobs,
        "rounds": 3,
    }


def test_targets_take_the_mb_per_s_ratio_within_each_round():
    jobs = [
        _job("zramd-lz4", "swap-out", 0, 100.0),
        _job("python-lz4-list", "swap-out", 0, 50.0),  # 2.0x
        _job("zramd-lz4", "swap-out", 1, 300.0),
        _job("python-lz4-list", "swap-out", 1, 400.0),  # 0.75x
        _job("zramd-lz4", "swap-out", 2, 120.0),
        _job("python-lz4-list", "swap-out", 2, 100.0),  # 1.2x
        _job("python-lz4-list", "swap-out", 3, 100.0),  # no zramd-lz4 job in round 3
        _job("zramd-lz4", "swap-in", 0, 90.0),
        _job("python-lz4-list", "swap-in", 0, 100.0),  # 0.9x
    ]
    rows = {r["target"]: r for r in swap.ratio_rows(_data(jobs), swap.TARGETS)}
    out = rows["zramd-lz4 vs python-lz4-list, swap-out"]
    # medians of the pooled MB/s would say 120/100 = 1.2 too; the spread tells them apart
    assert out["ratio"] == {"median": 1.2, "min": 0.75, "max": 2.0, "n": 3}
    assert out["met"] is True and out["want"] == 1.0 and out["path"] == "qemu"
    back = rows["zramd-lz4 vs python-lz4-list, swap-in"]
    assert back["ratio"]["median"] == pytest.approx(0.9) and back["met"] is False
    # CPU per request, per round: 50/50 in every round
    assert out["server_us_ratio"] == {"median": 1.0, "min": 1.0, "max": 1.0, "n": 3}
    # not measured: no verdict either way
    assert rows["zramd-zstd-async vs zramd-zstd, swap-out"]["met"] is None
    # kernel zram has no server CPU: its MB/s ratio stands, the CPU ratio is empty
    zram = [_job("kernel-zram-lz4", "swap-out", rnd, 200.0) for rnd in range(3)]
    for j in zram:
        j["server_us_per_request"] = None
    info = swap.ratio_rows(_data(jobs + zram), tuple((*r, None) for r in swap.INFORMATIONAL))
    assert {r["met"] for r in info} == {None}
    vs_zram = next(r for r in info if r["target"] == "zramd-lz4 vs kernel-zram-lz4, swap-out")
    assert vs_zram["ratio"]["median"] == pytest.approx(0.6) and vs_zram["server_us_ratio"]["n"] == 0


def test_summary_and_markdown_show_every_row():
    jobs = [
        _job(s, op, rnd, 100.0 + rnd)
        for s in ("zramd-lz4", "python-lz4-list")
        for op in ("swap-out", "swap-in")
        for rnd in range(3)
    ]
    data = _data(jobs) | {
        "mix_file": "mix.json",
        "measured": "fixture",
        "iodepth": swap.IODEPTH,
        "align_bytes": swap.ALIGN_BYTES,
        "runtime_s": 1.0,
        "region_bytes": 16 << 20,
        "skipped": {"kernel-zram-lz4": "kernel has no zram"},
        "paths": {
            "qemu": {
                "bssplit": {"swap-out": "4k/10:64k/90", "swap-in": "32k/100"},
                "max_bytes": {"swap-out": 65536, "swap-in": 32768},
                "left_out": {},
                "requests": {"write": 10},
            }
        },
    }
    section = swap.SwapMix()
    section.derive(data)
    assert len(data["summary"]) == 4
    assert data["summary"][0]["mb_per_s"] == {"median": 101.0, "min": 100.0, "max": 102.0, "n": 3}
    md = "\n".join(section.markdown(data))
    assert "| zramd-lz4 | qemu | swap-out | 101.0 (100.0-102.0) |" in md
    assert "`4k/10:64k/90`" in md
    assert "| zramd-lz4 vs python-lz4-list, swap-in | qemu | >= 1.00x | 1.00x | yes | 1.00x |" in md
    assert "- kernel-zram-lz4: skipped: kernel has no zram" in md
    assert section.summary(data)


def test_a_missing_mix_file_is_one_skip_line():
    data = {"skipped": {"all": "no request mix: bench/swap_mix.json is missing"}}
    data |= {"jobs": [], "systems": ["zramd-lz4"]}
    section = swap.SwapMix()
    section.derive(data)
    lines = section.markdown(data)
    assert lines[0] == "## Swap request mix"
    body = [line for line in lines[1:] if line]
    assert body == ["- all: skipped: no request mix: bench/swap_mix.json is missing"]
    assert section.summary(data) == [] and section.plots(data, Path("/nonexistent"), "") == []


def test_the_section_is_registered_with_its_systems():
    assert "swap" in [s.name for s in SECTIONS]
    for name in swap.SYSTEM_NAMES:
        by_name(name)  # KeyError if a system is missing
    assert "--workers" not in by_name("zramd-zstd-async").args  # the default worker count
    a = build_parser().parse_args(["--swap-mix", "x.json"])
    assert a.swap_mix == "x.json"

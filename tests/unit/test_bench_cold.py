"""The cold section's arithmetic, on plain data: the summary and the
targets from slices and samples (no servers)."""

from bench import cold


def _data(policy_iops, plain_iops, rates, memory_end, zram_bytes, wb=None):
    slices = []
    for rnd, (p, q) in enumerate(zip(policy_iops, plain_iops, strict=True)):
        slices += [{"system": "policy", "round": rnd, "iops": p},
                   {"system": "plain", "round": rnd, "iops": q}]
    samples = [{"t_s": 10.0 * i, "memory_bytes": memory_end, "promotion_rate_pct_min": r,
                "cold_age_s": 30, "recompressed_bytes": 1 << 20} for i, r in enumerate(rates)]
    settings = {"target_pct_min": 2.0, "policy_args": " ".join(cold.POLICY_ARGS), "zipf": cold.ZIPF,
                "phase_s": 60.0, "slice_s": 10.0, "region_bytes": 256 << 20}
    data = {"settings": settings, "slices": slices, "samples": samples,
            "zram": {"mem_used_total": zram_bytes}, "plain_end": {"memory_bytes": 100 << 20},
            "writeback": wb or {}}
    cold.ColdPages().derive(data)
    return data


def test_targets_met_when_memory_rate_and_iops_are_in_bounds():
    wb = {"raw": {"allocated_bytes": 1000}, "packed": {"allocated_bytes": 500}}
    data = _data([100, 98, 99], [100, 100, 100], [9.0, 4.0, 3.0, 2.2, 1.9, 2.1],
                 memory_end=60 << 20, zram_bytes=100 << 20, wb=wb)
    rows = {t["target"].split(" vs")[0].split(" (")[0]: t for t in data["targets"]}
    assert rows["memory at the end"]["measured"] == "0.60x" and rows["memory at the end"]["met"]
    # only the last third of the samples counts: the controller's settled part
    assert data["summary"]["promotion_rate"] == {"median": 2.0, "min": 1.9, "max": 2.1, "n": 2}
    assert rows["promotion rate"]["met"] is True
    assert rows["hot-path IOPS"]["met"] is True  # median of 1.00, 0.98, 0.99
    assert rows["packed writeback's backing bytes"]["measured"] == "0.50x"


def test_targets_missed():
    data = _data([90, 80, 85], [100, 100, 100], [0.0, 0.0, 0.5, 1.0, 1.2, 1.3],
                 memory_end=80 << 20, zram_bytes=100 << 20)
    met = {t["target"].split(" vs")[0].split(" (")[0]: t["met"] for t in data["targets"]}
    assert met == {"memory at the end": False, "promotion rate": False, "hot-path IOPS": False}
    text = "\n".join(cold.ColdPages().markdown(data))
    assert "| memory at the end vs kernel zram lz4 | <= 0.72x | 0.80x | **no** |" in text


def test_no_zram_leaves_the_memory_target_unmeasured():
    data = _data([100], [100], [2.0], memory_end=1, zram_bytes=None)
    row = next(t for t in data["targets"] if t["target"].startswith("memory"))
    assert row["measured"] is None and row["met"] is None


def test_writeback_speed_is_a_per_round_ratio_with_its_goal():
    runs = [{"format": f, "round": r, "pages_per_s": v, "allocated_bytes": 1}
            for r, (raw, packed) in enumerate([(100, 160), (120, 150), (90, 170)])
            for f, v in (("raw", raw), ("packed", packed))]
    wb = {"runs": runs, "raw": {"allocated_bytes": 1000, "pages_per_s": 100, "bd_count": 9},
          "packed": {"allocated_bytes": 480, "pages_per_s": 160, "bd_count": 9}}
    data = _data([100], [100], [2.0], memory_end=1, zram_bytes=None, wb=wb)
    row = next(t for t in data["targets"] if t["target"].startswith("packed writeback's pages"))
    assert row["want"] == ">= 1.50x"
    assert row["measured"] == "1.60x (1.25x-1.89x)" and row["met"] is True
    runs[1]["pages_per_s"] = 100  # round 0 at 1.00x: the median falls to 1.25x
    data = _data([100], [100], [2.0], memory_end=1, zram_bytes=None, wb=wb)
    row = next(t for t in data["targets"] if t["target"].startswith("packed writeback's pages"))
    assert row["measured"].startswith("1.25x") and row["met"] is False
    text = "\n".join(cold.ColdPages().markdown(data))
    assert "| packed writeback's pages per second vs raw writeback's, per round | >= 1.50x" in text

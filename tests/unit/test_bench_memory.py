"""The bench's memory section without running it: targets judged met or
missed from phase records, and the tables that show them."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench import memory, memory_report  # noqa: E402
from bench.stats import spread  # noqa: E402

MIB = 1 << 20


def _rec(phase, compr, used, memory_bytes, rss_above_idle=None, **extra):
    return {
        "phase": phase,
        "orig_data_size": 2 * compr,
        "compr_data_size": compr,
        "mem_used_total": used,
        "pages_compacted": 0,
        "huge_pages": 0,
        "same_pages": 0,
        "rss": None,
        "rss_above_idle": rss_above_idle,
        "memory": memory_bytes,
        "memory_per_compr": memory_bytes / compr if compr else None,
        "extra_stats": {},
        **extra,
    }


def _churn(kind_recs):
    summary = {}
    for kind, recs in kind_recs.items():
        summary[kind] = [
            {
                "phase": r["phase"],
                "compact_error": r.get("compact_error"),
                **{k: spread([r.get(k)]) for k in memory.CHURN_KEYS},
            }
            for r in recs
        ]
    return {"rounds": {k: [v] for k, v in kind_recs.items()}, "summary": summary}


def _data(compacted_rss, end_rss, peak_per_limit, idle_rss, sweep_zramd_ratio):
    c = 100 * MIB
    zramd = [
        _rec("idle", 0, 0, 0, 0),
        _rec("filled", 2 * c, 2 * c, 2 * c, 2 * c),
        _rec("rewritten", 3 * c, 3 * c, 3 * c, 3 * c),
        _rec("half trimmed", c, c, 3 * c, 3 * c),
        _rec(
            "compacted", c, c + MIB // 2, compacted_rss, compacted_rss,
            extra_stats={"arena_block_bytes": c},
        ),
        _rec("fully trimmed", 0, 0, end_rss, end_rss),
        _rec("trimmed + compacted", 0, 0, end_rss, end_rss),
    ]
    zram = [
        _rec(r["phase"], r["compr_data_size"], r["mem_used_total"], r["mem_used_total"])
        for r in zramd
    ]
    limit = 300 * MIB
    return {
        "settings": {
            "disksize_bytes": 1 << 30,
            "fill_bytes": 512 * MIB,
            "mem_limit_bytes": limit,
            "sweep_bytes": 256 * MIB,
            "compressibilities": [0, 50],
            "rounds": 1,
            "footprint_rounds": 1,
        },
        "skipped": {},
        "errors": {},
        "churn": _churn({"zramd": zramd, "zram": zram}),
        "mem_limit": {
            "mem_limit_bytes": limit,
            "idle_rss": 20 * MIB,
            "hwm_above_idle": peak_per_limit * limit,
            "hwm_per_limit": peak_per_limit,
            "phases": [
                {
                    **_rec("compacted", 0, 0, end_rss, end_rss),
                    "peak_per_limit": peak_per_limit,
                    "peak_rss_above_idle": peak_per_limit * limit,
                }
            ],
            "samples": [],
        },
        "footprint": {
            "rss": {
                "plain idle": spread([idle_rss]),
                "swap idle": spread([idle_rss]),
                "swap 2 clients": spread([idle_rss]),
            },
            "table_bytes_per_device_page": 8.0,
            "swap_skipped": None,
        },
        "sweep": {
            "size_bytes": 256 * MIB,
            "points": ["50%"],
            "corpus": None,
            "rows": {
                "50%": {
                    "zramd": {"ratio_compr": sweep_zramd_ratio, "ratio_mem": sweep_zramd_ratio},
                    "zram": {"ratio_compr": 2.0, "ratio_mem": 2.0},
                    "ratio_compr_vs_zram": sweep_zramd_ratio / 2.0,
                    "ratio_mem_vs_zram": sweep_zramd_ratio / 2.0,
                }
            },
        },
    }


def _met(data):
    return {t["target"].split(",")[0].split(":")[0]: t["met"] for t in memory.evaluate(data)}


def test_targets_met():
    data = _data(
        compacted_rss=105 * MIB,
        end_rss=2 * MIB,
        peak_per_limit=1.01,
        idle_rss=23 * MIB,
        sweep_zramd_ratio=1.98,
    )
    met = _met(data)
    assert all(met.values()), met


def test_targets_missed():
    data = _data(
        compacted_rss=300 * MIB,
        end_rss=100 * MIB,
        peak_per_limit=2.2,
        idle_rss=235 * MIB,
        sweep_zramd_ratio=1.6,
    )
    data["churn"]["rounds"]["zramd"][0][4]["extra_stats"]["arena_block_bytes"] = 0
    met = _met(data)
    assert not any(met.values()), met


def test_no_compaction_is_a_miss_that_says_why():
    data = _data(
        compacted_rss=105 * MIB,
        end_rss=2 * MIB,
        peak_per_limit=1.0,
        idle_rss=23 * MIB,
        sweep_zramd_ratio=2.0,
    )
    data["churn"]["summary"]["zramd"][4]["compact_error"] = "invalid choice: 'compact'"
    target = next(t for t in memory.evaluate(data) if t["target"].startswith("after compaction"))
    assert target["met"] is False and "invalid choice" in target["measured"]


def test_metadata_is_what_mem_used_counts_beyond_the_arena_blocks():
    data = _data(
        compacted_rss=105 * MIB,
        end_rss=0,
        peak_per_limit=1.0,
        idle_rss=23 * MIB,
        sweep_zramd_ratio=2.0,
    )
    rec = data["churn"]["rounds"]["zramd"][0][4]
    pages = rec["orig_data_size"] // 4096
    assert memory.metadata_bytes_per_page(data)[0] == (MIB // 2) / pages
    rec["extra_stats"] = {}
    assert memory.metadata_bytes_per_page(data) == (None, "not measured")  # no arena counters
    # everything but the blocks
    rec["extra_stats"] = {"arena_block_bytes": rec["mem_used_total"] - 13 * pages}
    assert memory.metadata_bytes_per_page(data)[0] == 13.0


def test_markdown_shows_both_systems_per_phase():
    data = _data(
        compacted_rss=105 * MIB,
        end_rss=2 * MIB,
        peak_per_limit=1.01,
        idle_rss=23 * MIB,
        sweep_zramd_ratio=1.98,
    )
    data["targets"] = memory.evaluate(data)
    text = "\n".join(memory_report.markdown(data))
    row = next(line for line in text.splitlines() if line.startswith("| compacted |"))
    assert row.split("|")[4].strip() == "105.0" and row.split("|")[5].strip() == "1.05x"
    assert "| 50% | 1.980 | 2.000 | -1.0% |" in text
    assert "### Memory targets" in text and "**no**" not in text
    assert any("1.05x its compressed payload" in line for line in memory_report.summary(data))


def test_publishing_one_section_keeps_the_others(tmp_path):
    """--sections memory --publish: memory's part replaces its old part, the
    matrix stays as it was published, in results.json, results.md and the
    README block; memory's old chart goes, the matrix's stays."""
    import json

    from bench import report
    from bench.run import SECTIONS, by_names

    out, docs = tmp_path / "out", tmp_path / "docs"
    out.mkdir()
    docs.mkdir()
    meta = {
        "started": "2026-01-01T00:00:00",
        "duration_s": 1.0,
        "cpu": "CPU",
        "cores": 2,
        "mem_bytes": 2**30,
        "os": "OS",
        "kernel": "k",
        "loadavg_at_start": [0.0, 0.0, 0.0],
        "fio": "fio-3",
        "nbdkit": "nbdkit 1",
        "nbdkit_python": "3.11",
        "region_bytes": 16 << 20,
        "runtime_s": 1.0,
        "ramp_s": 0.0,
        "quick": False,
    }
    published = {
        "meta": meta,
        "sections": {"memory": {"old": True}, "other": {"x": 1}},
        "charts": {"memory": ["memory_old.png"], "other": ["iops.png"]},
        "errors": {},
    }
    (docs / "results.json").write_text(json.dumps(published))
    (docs / "memory_old.png").write_bytes(b"old")
    (docs / "iops.png").write_bytes(b"matrix")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{report.README_BEGIN}\nold\n{report.README_END}\n")
    data = _data(
        compacted_rss=105 * MIB,
        end_rss=2 * MIB,
        peak_per_limit=1.01,
        idle_rss=23 * MIB,
        sweep_zramd_ratio=1.98,
    )
    data["targets"] = memory.evaluate(data)
    (out / "memory.png").write_bytes(b"png")
    rep = {
        "meta": {**meta, "started": "2026-02-02T00:00:00"},
        "sections": {"memory": data},
        "charts": {"memory": ["memory.png"]},
        "errors": {},
    }
    assert by_names(["memory"])[0].name == "memory"
    report.publish(rep, out, SECTIONS, docs_dir=docs, readme=readme)
    merged = json.loads((docs / "results.json").read_text())
    assert merged["sections"]["other"] == {"x": 1} and merged["sections"]["memory"]["settings"]
    assert merged["meta"]["started"] == "2026-01-01T00:00:00"
    assert merged["section_meta"]["memory"]["started"] == "2026-02-02T00:00:00"
    assert sorted(p.name for p in docs.iterdir()) == [
        "iops.png",
        "memory.png",
        "results.json",
        "results.md",
    ]
    md = (docs / "results.md").read_text()
    assert (
        "## Memory: zramd against kernel zram" in md
        and "From a run of this section alone: 2026-02-02" in md
    )
    assert "1.05x its compressed payload" in readme.read_text()

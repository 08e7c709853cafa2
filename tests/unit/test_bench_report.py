"""The bench's bookkeeping without running a benchmark: spreads over rounds,
the per-round ratios of the scaling section, the projection, and publishing
(docs/bench replaced, README's generated block rewritten and nothing else)."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench import cpu, formats, report, scaling, stats  # noqa: E402
from bench.run import SECTIONS, by_names  # noqa: E402


def test_spread_ignores_missing_values():
    assert stats.spread([3.0, None, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert stats.spread([None]) == {"median": None, "min": None, "max": None, "n": 0}
    assert formats.with_spread(stats.spread([59_000, 61_000, 70_000])) == "61k (59k-70k)"
    assert formats.with_spread(stats.spread([7_500])) == "7.5k"
    assert formats.with_spread(stats.spread([])) == "-"


def _job(system, workload, conns, rnd, iops):
    return {
        "system": system,
        "workload": workload,
        "connections": conns,
        "round": rnd,
        "iops": iops,
        "server_us_per_request": 10.0,
    }


def test_scaling_ratio_is_taken_within_each_round():
    jobs = [
        _job("s", "randread-4k", 1, 0, 100.0),
        _job("s", "randread-4k", 2, 0, 50.0),
        _job("s", "randread-4k", 1, 1, 200.0),
        _job("s", "randread-4k", 2, 1, 150.0),
    ]
    rows = scaling.summarize({"systems": ["s"], "connections": [1, 2], "jobs": jobs})
    assert len(rows) == 1
    assert rows[0]["vs_one"]["2"] == {"median": 0.625, "min": 0.5, "max": 0.75, "n": 2}
    assert rows[0]["iops"]["1"]["median"] == 150.0


def test_store_targets_take_the_ratio_within_each_round():
    def job(system, workload, rnd, iops, us, conns=1):
        return {**_job(system, workload, conns, rnd, iops), "server_us_per_request": us}

    jobs = [
        job("zramd-lz4", "randwrite-4k", 0, 70.0, 14.0),
        job("python-lz4-list", "randwrite-4k", 0, 80.0, 9.0),
        job("zramd-lz4", "randwrite-4k", 1, 40.0, 12.0),
        job("python-lz4-list", "randwrite-4k", 1, 40.0, 9.0),
        job("zramd-lz4", "randwrite-4k", 2, 90.0, 11.0),  # no least store in round 2: left out
        job("zramd-lz4", "randwrite-4k", 0, 10.0, 1.0, conns=2),  # not one connection
        job("zramd-lz4", "randread-4k", 0, 90.0, 10.0),
        job("python-lz4-list", "randread-4k", 0, 100.0, 7.0),
        job("python-null-pinned", "randwrite-4k", 0, 100.0, 6.0),
        job("python-null-pinned", "randwrite-4k", 1, 50.0, 7.0),
    ]
    rows = {r["workload"]: r for r in scaling.store_targets({"jobs": jobs})}
    write, read = rows["randwrite-4k"], rows["randread-4k"]
    assert write["target"] == "zramd-lz4 4 KiB randwrite QD16 vs python-lz4-list"
    assert write["ratio"] == {"median": 0.9375, "min": 0.875, "max": 1.0, "n": 2}
    assert write["server_us_beyond"]["median"] == 4.0
    assert write["met"] is True and write["want"] == 0.9
    # informational: zramd and the least store over the null plugin, per round
    assert write["vs_null_plugin"] == {"median": 0.75, "min": 0.7, "max": 0.8, "n": 2}
    assert write["least_store_ratio"] == {"median": 0.8, "min": 0.8, "max": 0.8, "n": 2}
    assert read["ratio"]["median"] == 0.9 and read["met"] is False  # reads want 1.0x
    assert read["vs_null_plugin"]["n"] == 0  # no null-plugin job for reads: "-"
    text = "\n".join(scaling.targets_markdown({"jobs": jobs, "total_iodepth": 16}))
    assert "| zramd-lz4 4 KiB randread QD16 vs python-lz4-list | >= 1.00x | 0.90x | **no** | - | - |" in text
    assert "| >= 0.90x | 0.94x (0.88x-1.00x) | yes | 0.75x (0.70x-0.80x) | 0.80x | 4.0 (3.0-5.0) |" in text
    jobs[0]["iops"] = 30.0  # round 0 now 0.375x: median 0.69x, below 0.9x
    assert scaling.store_targets({"jobs": jobs})[0]["met"] is False


def test_projection_scales_one_instance_cost():
    summary = [
        {
            "instances": 1,
            "workload": "randwrite-4k",
            "iops": stats.spread([1.0]),
            "server_us": stats.spread([20.0]),
            "client_us": stats.spread([5.0]),
        }
    ]
    proj = {p["cores"]: p for p in cpu.project(summary)}
    assert proj[1]["client_elsewhere_iops"] == pytest.approx(50_000)
    assert proj[4]["client_elsewhere_iops"] == pytest.approx(200_000)
    assert proj[4]["client_sharing_iops"] == pytest.approx(160_000)


def test_replace_block_keeps_the_rest():
    text = f"intro\n{report.README_BEGIN}\nold numbers\n{report.README_END}\noutro\n"
    assert report.replace_block(text, "NEW") == "intro\nNEW\noutro\n"
    with pytest.raises(ValueError):
        report.replace_block("no markers here", "NEW")


def _scaling_run(out):
    """A rendered one-section run in ``out``: (report, sections)."""
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
    jobs = [
        _job("zramd-lz4", w.name, c, 0, 1000.0 * c)
        for w in scaling.WORKLOADS
        for c in scaling.CONNECTIONS
    ]
    data = {
        "systems": ["zramd-lz4"],
        "connections": list(scaling.CONNECTIONS),
        "jobs": jobs,
        "rounds": 1,
        "runtime_s": 1.0,
        "total_iodepth": 16,
        "descriptions": {"zramd-lz4": "zramd"},
        "skipped": {},
    }
    data["summary"] = scaling.summarize(data)
    (out / "scaling.png").write_bytes(b"png")
    rep = {
        "meta": meta,
        "sections": {"scaling": data},
        "charts": {"scaling": ["scaling.png"]},
        "errors": {},
    }
    sections = by_names(["scaling"])
    report.write(rep, sections, out)
    return rep, sections


def _readme(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{report.README_BEGIN}\nold\n{report.README_END}\n## After\n")
    return readme


def test_publish_replaces_docs_and_readme_block(tmp_path):
    out, docs = tmp_path / "out", tmp_path / "docs"
    out.mkdir()
    docs.mkdir()
    (docs / "stale.png").write_bytes(b"old")
    (docs / "keep.txt").write_text("not ours")
    readme = _readme(tmp_path)
    rep, sections = _scaling_run(out)
    report.publish(rep, out, sections, docs_dir=docs, readme=readme)
    assert sorted(p.name for p in docs.iterdir()) == [
        "keep.txt",
        "results.json",
        "results.md",
        "scaling.png",
    ]
    text = readme.read_text()
    assert text.startswith("# x\n<!-- bench:begin") and text.endswith(
        f"{report.README_END}\n## After\n"
    )
    assert "| zramd | randread-4k | 1.0k | 2.0k | 4.0k |" in text
    assert "old" not in text


def test_publishing_a_run_rendered_in_place_keeps_its_files(tmp_path):
    """`--render docs/bench --publish`: the run's directory is the published
    one; publishing must not clear it (it did: every file was deleted)."""
    docs = tmp_path / "docs"
    docs.mkdir()
    readme = _readme(tmp_path)
    rep, sections = _scaling_run(docs)
    before = {p.name: p.read_bytes() for p in docs.iterdir()}
    report.publish(rep, docs, sections, docs_dir=docs, readme=readme)
    assert {p.name: p.read_bytes() for p in docs.iterdir()} == before
    assert "| zramd | randread-4k | 1.0k | 2.0k | 4.0k |" in readme.read_text()
    # a one-section run merged in place keeps its chart, and changes nothing
    report.publish(rep, docs, SECTIONS, docs_dir=docs, readme=readme)
    assert {p.name: p.read_bytes() for p in docs.iterdir()} == before
    assert "| zramd-lz4 | randread-4k | 1.0k | 2.0k | 4.0k |" in (docs / "results.md").read_text()


def test_sections_have_unique_names_and_unknown_ones_are_refused():
    names = [s.name for s in SECTIONS]
    assert len(names) == len(set(names))
    with pytest.raises(SystemExit, match="unknown section"):
        by_names(["nope"])


def test_readme_block_leads_with_the_swap_traffic(tmp_path):
    class Section:
        def __init__(self, name):
            self.name = name

        def summary(self, data):
            return [f"{self.name} summary"]

    rep, _ = _scaling_run(tmp_path)
    rep["sections"] = {"matrix": {}, "swap": {}, "vm": {}}
    rep["charts"] = {"matrix": ["iops.png"], "swap": ["swap.png"]}
    block = report.readme_block(rep, [Section("matrix"), Section("vm"), Section("swap")])
    order = [block.index(f"{name} summary") for name in ("vm", "swap", "matrix")]
    assert order == sorted(order)  # the leading sections in their own order, then the rest
    assert block.index("swap.png") < block.index("iops.png")


def test_async_targets_judge_async_against_its_inline_twin():
    from bench import targets

    def result(system, workload, mb_per_s, p50_us):
        return {"system": system, "dataset": "fio", "workload": workload,
                "mb_per_s": mb_per_s, "p50_us": p50_us}

    def stored(system, overhead):
        return {"system": system, "dataset": "fio", "overhead_bytes_per_page": overhead,
                "ratio_vs_kernel_zram": 1.0}

    data = {
        "systems": [{"name": n, "kind": "zramd", "skipped": None}
                    for n in ("zramd-lz4", "zramd-lz4-async")],
        "results": [
            result("zramd-lz4", "randwrite-4k-qd16", 100.0, 50.0),
            result("zramd-lz4-async", "randwrite-4k-qd16", 92.0, 60.0),
            result("zramd-lz4", "randwrite-4k-qd1", 20.0, 40.0),
            result("zramd-lz4-async", "randwrite-4k-qd1", 19.0, 44.0),
        ],
        "storage": [stored("zramd-lz4", 50.0), stored("zramd-lz4-async", 57.0)],
    }
    rows = {t["target"]: t for t in targets.evaluate(data) if t["system"] == "zramd-lz4-async"}
    iops = rows["4 KiB randwrite qd16 IOPS vs zramd-lz4"]
    assert (iops["measured"], iops["met"]) == ("0.92x", True)
    p50 = rows["4 KiB randwrite qd1 p50 latency vs zramd-lz4"]
    assert (p50["measured"], p50["met"]) == ("1.10x", False)  # async's p50 is 10% worse
    rss = rows["memory beyond payload vs zramd-lz4, fio data (RSS, queue drained)"]
    assert (rss["measured"], rss["met"]) == ("+7 B/page", True)
    data["storage"][1]["overhead_bytes_per_page"] = 59.0
    rows = {t["target"]: t for t in targets.evaluate(data) if t["system"] == "zramd-lz4-async"}
    assert rows["memory beyond payload vs zramd-lz4, fio data (RSS, queue drained)"]["met"] is False
    # without its inline twin in the run, no async rows
    data["systems"] = data["systems"][1:]
    assert not [t for t in targets.evaluate(data) if "vs zramd-lz4" in t["target"]]

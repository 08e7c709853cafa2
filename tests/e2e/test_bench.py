"""The benchmark pipeline end to end in quick mode: every system and workload
runs and lands in results.json, results.md and the PNG charts with sane
numbers. No timing assertions: only that numbers exist and are positive."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import run as bench_run  # noqa: E402

# Only systems the machine may lack are allowed to be skipped.
MAY_SKIP = {"kernel-zram-lz4"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    pytest.importorskip("matplotlib")
    for tool in ("fio", "nbdkit"):
        if not shutil.which(tool):
            pytest.skip("%s not installed" % tool)
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(out),
         "--corpus-dir", str(tmp / "corpus")],
        capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    return out, report, proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_quick_run_covers_every_system(quick_run):
    out, report, _ = quick_run
    names = [s["name"] for s in report["systems"]]
    assert names == [s.name for s in bench_run.SYSTEMS]
    for s in report["systems"]:
        assert s["error"] is None, s
        if s["skipped"]:
            assert s["name"] in MAY_SKIP, s
    ran = [s for s in bench_run.SYSTEMS if not next(x for x in report["systems"] if x["name"] == s.name)["skipped"]]
    assert any(s.kind == "zramd" for s in ran)
    for system in ran:
        for w in bench_run.WORKLOADS:
            if w.dataset == "corpus" and not system.stores:
                continue
            r = bench_run._lookup(report["results"], system.name, w.dataset, w.name)
            assert r is not None, (system.name, w.dataset, w.name)
            assert r["iops"] > 0 and r["mb_per_s"] > 0, r
            if w.rw != "corpus-fill":
                assert r["p50_us"] > 0 and r["p99_us"] >= r["p50_us"], r
                for direction in ("read", "write"):
                    if direction in r:
                        assert r[direction]["iops"] > 0, r


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_quick_run_storage_stats(quick_run):
    out, report, _ = quick_run
    region = report["meta"]["region_bytes"]
    skipped = {s["name"] for s in report["systems"] if s["skipped"]}
    for system in bench_run.SYSTEMS:
        if not system.stores or system.name in skipped:
            continue
        for dataset in ("fio", "corpus"):
            rec = next((x for x in report["storage"] if x["system"] == system.name and x["dataset"] == dataset), None)
            assert rec is not None, (system.name, dataset)
            assert rec["orig_bytes"] == region, rec
            assert rec["memory_bytes"] and rec["memory_bytes"] > 0, rec
            assert rec["bytes_per_page"] > 0, rec
            if system.kind in ("zramd", "zram"):
                assert rec["compr_bytes"] > 0 and rec["ratio"] > 0, rec
                if "--algorithm" not in system.args or "none" not in system.args:
                    assert rec["ratio"] > 1.0, rec  # both datasets compress
    assert report["corpus"]["pages"] * 4096 == region


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_quick_run_markdown_and_charts(quick_run):
    out, report, stdout = quick_run
    md = (out / "results.md").read_text()
    assert "| system | data | workload | IOPS | MB/s | p50 µs | p99 µs | vs kernel zram | vs nbdkit zstd |" in md
    assert "## Compression and memory" in md
    for s in report["systems"]:
        assert s["name"] in md
    for w in bench_run.WORKLOADS:
        assert "| %s |" % w.name in md
    for chart in ("iops.png", "throughput.png", "storage.png"):
        data = (out / chart).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, chart
        assert chart in report["charts"]
    # progress lines: [elapsed] system dataset workload
    assert any(line.startswith("[") and "zramd-lz4" in line and "randwrite-4k-qd16" in line
               for line in stdout.splitlines())

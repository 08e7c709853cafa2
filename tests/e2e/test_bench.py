"""The benchmark pipeline end to end in quick mode: every section, system and
workload runs and lands in results.json, results.md and the PNG charts with
sane numbers. No timing assertions: only that numbers exist and are positive."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench import backing, baseline, cpu, memory, scaling, servers, swap, systems  # noqa: E402
from bench.targets import lookup  # noqa: E402

# Only systems the machine may lack are allowed to be skipped.
MAY_SKIP = {"kernel-zram-lz4"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    pytest.importorskip("matplotlib")
    for tool in ("fio", "nbdkit"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed")
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "out"
    readme_before = (ROOT / "README.md").read_text()
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--out",
            str(out),
            "--corpus-dir",
            str(tmp / "corpus"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(ROOT),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (ROOT / "README.md").read_text() == readme_before, "a quick run must not publish"
    report = json.loads((out / "results.json").read_text())
    assert report["errors"] == {}
    return out, report, proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(720)
def test_quick_run_covers_every_system(quick_run):
    out, report, _ = quick_run
    matrix = report["sections"]["matrix"]
    names = [s["name"] for s in matrix["systems"]]
    assert names == [s.name for s in systems.SYSTEMS]
    for s in matrix["systems"]:
        assert s["error"] is None, s
        if s["skipped"]:
            assert s["name"] in MAY_SKIP, s
    ran = [
        s
        for s in systems.SYSTEMS
        if not next(x for x in matrix["systems"] if x["name"] == s.name)["skipped"]
    ]
    assert any(s.kind == "zramd" for s in ran)
    for system in ran:
        for w in systems.WORKLOADS:
            if w.dataset == "corpus" and not system.stores:
                continue
            r = lookup(matrix["results"], system.name, w.dataset, w.name)
            assert r is not None, (system.name, w.dataset, w.name)
            assert r["iops"] > 0 and r["mb_per_s"] > 0, r
            if w.rw != "corpus-fill":
                assert r["p50_us"] > 0 and r["p99_us"] >= r["p50_us"], r
                for direction in ("read", "write"):
                    if direction in r:
                        assert r[direction]["iops"] > 0, r


@pytest.mark.slow
@pytest.mark.timeout(720)
def test_quick_run_storage_stats(quick_run):
    out, report, _ = quick_run
    matrix = report["sections"]["matrix"]
    region = report["meta"]["region_bytes"]
    skipped = {s["name"] for s in matrix["systems"] if s["skipped"]}
    for system in systems.SYSTEMS:
        if not system.stores or system.name in skipped:
            continue
        for dataset in ("fio", "corpus"):
            rec = next(
                (
                    x
                    for x in matrix["storage"]
                    if x["system"] == system.name and x["dataset"] == dataset
                ),
                None,
            )
            assert rec is not None, (system.name, dataset)
            assert rec["orig_bytes"] == region, rec
            assert rec["memory_bytes"] and rec["memory_bytes"] > 0, rec
            assert rec["bytes_per_page"] > 0, rec
            if system.kind in ("zramd", "zram"):
                assert rec["compr_bytes"] > 0 and rec["ratio"] > 0, rec
                if "--algorithm" not in system.args or "none" not in system.args:
                    assert rec["ratio"] > 1.0, rec  # both datasets compress
    assert matrix["corpus"]["pages"] * 4096 == region


@pytest.mark.slow
@pytest.mark.timeout(720)
def test_quick_run_connection_scaling(quick_run):
    out, report, _ = quick_run
    data = report["sections"]["scaling"]
    assert (
        data["systems"] == scaling.SYSTEM_NAMES and not data["skipped"] and not data.get("errors")
    )
    for name in scaling.SYSTEM_NAMES:
        for w in scaling.WORKLOADS:
            for conns in scaling.CONNECTIONS:
                jobs = [
                    j
                    for j in data["jobs"]
                    if (j["system"], j["workload"], j["connections"]) == (name, w.name, conns)
                ]
                assert len(jobs) == data["rounds"], (name, w.name, conns)
                for j in jobs:
                    assert j["iops"] > 0 and j["ios"] > 0, j
                    assert j["iodepth_per_connection"] * conns == scaling.TOTAL_IODEPTH
                    # nbdkit did work for these requests, and /proc saw it
                    assert j["server_cpu_s"] > 0 and j["server_us_per_request"] > 0, j
    assert len(data["summary"]) == len(scaling.SYSTEM_NAMES) * len(scaling.WORKLOADS)


@pytest.mark.slow
@pytest.mark.timeout(720)
def test_quick_run_backing_encryption(quick_run):
    out, report, _ = quick_run
    data = report["sections"]["backing"]
    assert not data["skipped"] and not data.get("errors")
    assert [r["system"] for r in data["summary"]] == list(backing.SYSTEMS)
    for run in data["runs"]:
        assert run["pages_written"] * 4096 == data["region_bytes"], run
        assert run["writeback_mb_s"] > 0 and run["read_iops"] > 0 and run["read_p50_us"] > 0
    assert "## Backing file encryption" in (out / "results.md").read_text()


@pytest.mark.slow
@pytest.mark.timeout(720)
def test_quick_run_server_cpu_and_projection(quick_run):
    out, report, _ = quick_run
    data = report["sections"]["cpu"]
    assert 1 in data["instances"] and not data.get("errors")
    for n in cpu.INSTANCES:
        assert n in data["instances"] or str(n) in data["left_out"]
    for row in data["summary"]:
        assert row["server_us"]["median"] > 0 and row["client_us"]["median"] > 0, row
    one = {r["workload"]: r for r in data["summary"] if r["instances"] == 1}
    for p in data["projection"]:
        assert p["client_elsewhere_iops"] == pytest.approx(
            p["cores"] * 1e6 / one[p["workload"]]["server_us"]["median"]
        )
        assert p["client_sharing_iops"] < p["client_elsewhere_iops"]
    md = (out / "results.md").read_text()
    assert "Projection, not a measurement" in md and "shared by client and server" in md


@pytest.mark.slow
@pytest.mark.timeout(720)
def test_quick_run_against_the_baseline_commit(quick_run):
    """Both trees served in every round (the baseline's own package, not
    this one), or, where the checkout lacks the commit, one line saying so."""
    out, report, _ = quick_run
    data = report["sections"]["baseline"]
    md = (out / "results.md").read_text()
    has_rev = (
        subprocess.run(
            ["git", "-C", str(ROOT), "cat-file", "-e", f"{baseline.BASELINE_REV}^{{commit}}"],
            capture_output=True,
        ).returncode
        == 0
    )
    if not has_rev:
        assert "not in this checkout's git history" in data["left_out"]
        assert "Not measured:" in md
        return
    assert data["left_out"] is None and not data.get("errors"), data
    for tree in baseline.TREES:
        for w in baseline.WORKLOADS:
            jobs = [j for j in data["jobs"] if (j["tree"], j["workload"]) == (tree, w.name)]
            assert len(jobs) == data["rounds"] and all(j["iops"] > 0 for j in jobs), jobs
    mix = [w.name for w, _ in baseline.mix_workloads(data_paths())]
    assert "swap-out-qemu" in mix and "swap-in-nbd" in mix, mix
    for tree in baseline.TREES:
        for name in mix:  # the swap mix, replayed on both trees
            jobs = [j for j in data["jobs"] if (j["tree"], j["workload"]) == (tree, name)]
            assert len(jobs) == data["rounds"] and all(j["mb_per_s"] > 0 for j in jobs), jobs
    assert [row["workload"] for row in data["summary"]] == [w.name for w in baseline.WORKLOADS] + mix
    for row in data["summary"]:
        assert row["ratio"]["median"] > 0, row
    log = (out / "logs" / "baseline-baseline.server.log").read_text()
    assert "PYTHONPATH=" in log and "baseline-tree" in log
    assert "| randwrite-4k (IOPS) |" in md and "| swap-in-qemu (MB/s) |" in md
    assert (out / "baseline.png").read_bytes()[:4] == b"\x89PNG"


def data_paths() -> dict:
    return swap.mix_plan(swap.load_mix(swap.DEFAULT_MIX))


@pytest.mark.slow
@pytest.mark.timeout(720)
def test_quick_run_markdown_and_charts(quick_run):
    out, report, stdout = quick_run
    md = (out / "results.md").read_text()
    assert (
        "| system | data | workload | IOPS | MB/s | p50 µs | p99 µs | vs kernel zram | vs nbdkit "
        "zstd |" in md
    )
    assert "## Compression and memory" in md and "## Connection scaling" in md
    assert "issue" not in md.lower() and str(ROOT) not in md
    for s in report["sections"]["matrix"]["systems"]:
        assert s["name"] in md
    for w in systems.WORKLOADS:
        assert f"| {w.name} |" in md
    charts = [c for cs in report["charts"].values() for c in cs]
    for chart in ("iops.png", "throughput.png", "storage.png", "scaling.png", "cpu.png"):
        data = (out / chart).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, chart
        assert chart in charts
        assert f"![{chart}]({chart})" in md
    # progress lines: [elapsed] system dataset workload
    lines = stdout.splitlines()
    assert any(
        line.startswith("[") and "zramd-lz4" in line and "randwrite-4k-qd16" in line
        for line in lines
    )
    assert any(line.startswith("[") and "scaling round" in line for line in lines)


@pytest.mark.slow
@pytest.mark.timeout(720)
def test_quick_run_measures_memory(quick_run):
    """The memory section: every churn phase has zramd's payload and RSS,
    the footprint and the ratio sweep ran, and its charts exist."""
    out, report, _ = quick_run
    mem = report["sections"]["memory"]
    assert mem["errors"] == {}, mem["errors"]
    phases = mem["churn"]["summary"]["zramd"]
    assert [p["phase"] for p in phases] == memory.CHURN_PHASES
    filled = phases[memory.CHURN_PHASES.index("filled")]
    assert filled["compr_data_size"]["median"] > 0 and filled["rss_above_idle"]["median"] > 0
    assert mem["footprint"]["rss"]["plain idle"]["median"] > 0
    assert mem["sweep"]["rows"]["50%"]["zramd"]["ratio_compr"] > 1.5
    assert {t["target"] for t in mem["targets"]} and all("want" in t for t in mem["targets"])
    for chart in ("memory.png", "memory_ratio.png"):
        assert (out / chart).stat().st_size > 1000


def test_least_lz4_store_reads_back_what_was_written(tmp_path):
    """The bench's least lz4 store is a reference only if it really stores:
    every page written (4 KiB and larger requests, zeroes) reads back."""
    from helpers import nbd

    if nbd is None or not shutil.which("nbdkit"):
        pytest.skip("nbdkit or libnbd's Python bindings missing")
    sock = str(tmp_path / "least.sock")
    system = systems.by_name(systems.LZ4_STORE_CEILING)
    server = servers.server_process(
        servers.server_command(system, sock, 1 << 20, None), [sock], tmp_path / "server.log"
    )
    server.start()
    try:
        h = nbd.NBD()
        h.connect_unix(sock)
        half = os.urandom(2048) + bytes(2048)  # compresses to about half
        run = os.urandom(4096) * 16  # 64 KiB: one request, 16 pages
        h.pwrite(half, 8192)
        h.pwrite(run, 65536)
        h.zero(4096, 65536 + 4096)
        assert h.pread(4096, 8192) == half
        assert h.pread(4096, 0) == bytes(4096)  # never written
        assert h.pread(65536, 65536) == run[:4096] + bytes(4096) + run[8192:]
        h.shutdown()
    finally:
        server.stop()


# A made-up request mix for the swap section's pipeline (not a measurement).
SWAP_FIXTURE_MIX = {
    "measured": "test fixture, made-up sizes",
    "paths": {
        "qemu": {
            "read": {"4096": 0.5, "131072": 0.5},
            "write": {"65536": 1.0},
            "requests": {"read": 10, "write": 10},
        }
    },
}


def _swap_run(tmp_path, mix_path, systems_arg):
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--sections",
            "swap",
            "--rounds",
            "1",
            "--runtime",
            "0.5",
            "--size-mib",
            "16",
            "--systems",
            systems_arg,
            "--swap-mix",
            str(mix_path),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(ROOT),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text())["sections"]["swap"]


@pytest.mark.timeout(600)
def test_swap_section_replays_the_mix(tmp_path):
    """Both systems run swap-out then swap-in with the mix's sizes; the
    tables, targets and chart land in the report."""
    pytest.importorskip("matplotlib")
    for tool in ("fio", "nbdkit"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed")
    mix_path = tmp_path / "mix.json"
    mix_path.write_text(json.dumps(SWAP_FIXTURE_MIX))
    out, data = _swap_run(tmp_path, mix_path, "zramd-lz4,python-lz4-list")
    assert not data.get("errors") and not data["skipped"], data
    assert data["paths"]["qemu"]["bssplit"] == {"swap-out": "64k/100", "swap-in": "4k/50:128k/50"}
    # mean request size from fio's own counts: the sizes asked for went out
    expected_bytes = {"swap-out": 65536, "swap-in": (4096 + 131072) / 2}
    for system in ("zramd-lz4", "python-lz4-list"):
        for op, mean in expected_bytes.items():
            (j,) = [x for x in data["jobs"] if (x["system"], x["operation"]) == (system, op)]
            assert j["iops"] > 0 and j["server_us_per_request"] > 0, j
            per_request = j["mb_per_s"] * 1e6 / j["iops"]
            assert 0.7 * mean < per_request < 1.3 * mean, (system, op, per_request)
    md = (out / "results.md").read_text()
    assert "## Swap request mix" in md
    assert "| system | path | operation | MB/s | IOPS | server µs/request |" in md
    assert "| zramd-lz4 vs python-lz4-list, swap-in | qemu | >= 1.00x |" in md
    assert str(tmp_path) not in md  # the mix file is named, not its machine path
    assert (out / "swap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_swap_section_without_a_mix_says_so(tmp_path):
    out, data = _swap_run(tmp_path, tmp_path / "absent.json", "zramd-lz4")
    assert data["jobs"] == [] and "is missing" in data["skipped"]["all"]
    md = (out / "results.md").read_text()
    section = md[md.index("## Swap request mix") :].strip().splitlines()
    assert [line for line in section[1:] if line] == [
        "- all: skipped: no request mix: absent.json is missing (it comes from a VM measurement)"
    ]

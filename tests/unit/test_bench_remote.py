"""The remote section's arithmetic and text on plain data (no servers): the
spreads per target, the ratios to the encrypted file within each round, the
swap mix's ratios to no tier, the remotes' command lines, and that the
section is listed. The numbers here are made-up fixtures."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench import remote  # noqa: E402
from bench.run import SECTIONS  # noqa: E402


def _run(target, rnd, wb, rd, p50, p99):
    return {"target": target, "round": rnd, "writeback_mb_s": wb, "read_mb_s": rd,
            "read_p50_ms": p50, "read_p99_ms": p99}


def _data():
    runs = []
    for rnd, scale in enumerate((1.0, 0.5, 2.0)):  # the machine's speed moves between rounds
        runs.append(_run("file-aes", rnd, 100 * scale, 80 * scale, 0.05 / scale, 0.1 / scale))
        runs.append(_run("unix", rnd, 25 * scale, 20 * scale, 0.2 / scale, 0.4 / scale))
    runs.append(_run("tcp", 0, 30, 16, 0.25, 1.0))
    jobs = []
    for rnd in range(2):
        for kind, mb in (("none", 400.0), ("unix", 40.0 + rnd * 40)):
            jobs.append({"kind": kind, "path": "nbd", "operation": "swap-in", "round": rnd,
                         "mb_per_s": mb * (1 + rnd)})
    settings = {"pages": 64, "page_random_bytes": 1024, "delay_ms": 1,
                "delay_by": "nbdkit --filter=delay", "netem_reason": "no sch_netem",
                "swap_region_bytes": 8 << 20, "runtime_s": 0.5, "rounds": 3}
    data = {"settings": settings, "runs": runs, "swap_jobs": jobs, "skipped": {}, "errors": []}
    remote.RemoteTier().derive(data)
    return data


def test_ratios_are_taken_within_each_round():
    data = _data()
    unix = next(r for r in data["ratios"] if r["target"] == "unix")
    # the rounds' speeds differ 4x, the ratio within each is the same
    assert unix["writeback_mb_s"] == {"median": 0.25, "min": 0.25, "max": 0.25, "n": 3}
    assert unix["read_p50_ms"]["median"] == 4.0
    tcp = next(r for r in data["ratios"] if r["target"] == "tcp")
    assert tcp["writeback_mb_s"]["n"] == 1 and tcp["writeback_mb_s"]["median"] == 0.3
    assert [r["target"] for r in data["ratios"]] == ["unix", "tcp"]  # no ratio of the base to itself
    assert data["summary"][0]["target"] == "file-aes"
    assert data["summary"][0]["writeback_mb_s"] == {"median": 100.0, "min": 50.0, "max": 200.0,
                                                    "n": 3}


def test_swap_ratios_against_no_tier_in_the_same_round():
    rows = _data()["swap_ratios"]
    assert [(r["kind"], r["operation"]) for r in rows] == [("unix", "swap-in")]
    assert rows[0]["ratio"] == {"median": 0.15000000000000002, "min": 0.1, "max": 0.2, "n": 2}


def test_markdown_names_the_delay_and_prints_spreads():
    data = _data()
    text = "\n".join(remote.RemoteTier().markdown(data))
    assert "nbdkit --filter=delay (netem unavailable here: no sch_netem)" in text
    assert "| unix | 0.25x | 0.25x | 4.00x | 4.00x |" in text
    assert "| file-aes | 100.0 (50.0-200.0) |" in text
    assert "| unix | nbd | swap-in | 100.0 (40.0-160.0) | 0.15x (0.10x-0.20x) |" in text
    assert remote.RemoteTier().summary(data)[0].startswith("- Remote cold tier")


def test_nothing_measured_is_one_line():
    data = {"settings": {}, "runs": [], "swap_jobs": [], "skipped": {"all": "zramd CLI not found"}}
    remote.RemoteTier().derive(data)
    assert data["ratios"] == [] and data["swap_ratios"] == []
    assert remote.RemoteTier().markdown(data)[-1] == "Not measured: zramd CLI not found."
    assert remote.RemoteTier().summary(data) == []


def test_quantile_nearest_rank():
    values = sorted(float(i) for i in range(1, 101))
    assert remote.quantile(values, 0.5) == 50.0
    assert remote.quantile(values, 0.99) == 99.0
    assert remote.quantile([3.0], 0.99) == 3.0
    assert remote.quantile([], 0.5) is None


def test_remote_command_lines(tmp_path):
    cmd, uri = remote.remote_command("unix", tmp_path, 1 << 20)
    assert cmd[-2:] == ["memory", str(1 << 20)] and uri.startswith("nbd+unix:///?socket=")
    cmd, uri = remote.remote_command("tls", tmp_path, 1 << 20)
    assert "--tls=require" in cmd and uri.startswith("nbds://bench@127.0.0.1:")
    assert (tmp_path / "remote.psk").stat().st_mode & 0o077 == 0
    cmd, uri = remote.remote_command("delayed", tmp_path, 1 << 20)
    assert "--filter=delay" in cmd and f"delay-read={remote.DELAY_MS}ms" in cmd
    assert uri.startswith("nbd://127.0.0.1:")


def test_page_data_is_a_quarter_random():
    page = remote.page_data()
    assert len(page) == 4096 and page[remote.PAGE_RANDOM_BYTES:] == bytes(3072)
    assert page[: remote.PAGE_RANDOM_BYTES] != remote.page_data()[: remote.PAGE_RANDOM_BYTES]


def test_listed_as_a_section():
    assert "remote" in [s.name for s in SECTIONS]


def test_threads_kind_is_the_same_tier_with_more_request_threads(tmp_path):
    class Ctx:
        tmp = tmp_path

    args = remote.tier_args("delayed" + remote.THREADS_SUFFIX, Ctx, "nbd://127.0.0.1:1/")
    assert args == ["--threads", str(remote.THREADS), "--backing-uri", "nbd://127.0.0.1:1/"]
    assert remote.tier_args("none", Ctx, None) == []
    assert "--backing-encrypt" in remote.tier_args("file-aes", Ctx, None)

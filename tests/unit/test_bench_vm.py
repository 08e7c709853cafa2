"""The bench's vm section without booting a guest: the per-target spreads,
the per-round hog-time ratios, the tables, the skip line; and the async VM
targets' `zramd serve` arguments, parsed by zramd's own command line."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench import vm_section  # noqa: E402
from bench.run import SECTIONS, by_names  # noqa: E402
from vm import run as vm_run  # noqa: E402
from vm.servers import TargetServer  # noqa: E402
from zramd.cli import build_parser  # noqa: E402


def _run(target, rnd, hog_s, ok=True):
    return {
        "target": target,
        "round": rnd,
        "ok": ok,
        "failures": [] if ok else ["boom"],
        "hog_s": hog_s,
        "elapsed_s": hog_s + 14.0,
        "pages_out": 84000,
        "pages_in": 82000,
        "loadavg_1m": 2.5,
    }


def _data(runs, targets=None):
    targets = targets or vm_section.TARGETS
    return {
        "rounds": 2,
        "targets": list(targets),
        "mem_mib": 128,
        "hog_mib": 160,
        "passes": 2,
        "servers": {t: vm_section.server_label(t) for t in targets},
        "paths": {t: vm_section.PATHS[vm_run.TARGETS[t][1]] for t in targets},
        "runs": runs,
        "skipped": {},
        "versions": "guest kernel 6.1",
    }


RUNS = [
    _run("zramd-virtio", 0, 14.0),
    _run("memory-virtio", 0, 10.0),
    _run("zramd-async-virtio", 0, 21.0),
    _run("guest-zram", 0, 7.0),
    _run("zramd-virtio", 1, 24.0),  # a slow minute: both halves slow
    _run("memory-virtio", 1, 20.0),
    _run("zramd-async-virtio", 1, 30.0, ok=False),  # failed: not a measurement
    _run("guest-zram", 1, 12.0),
]


def test_every_section_target_is_a_vm_target():
    assert set(vm_section.TARGETS) <= set(vm_run.TARGETS)
    assert set(vm_section.QUICK_TARGETS) <= set(vm_section.TARGETS)
    for num, den in vm_section.RATIOS:
        assert num in vm_section.TARGETS and den in vm_section.TARGETS
    assert [vm_section.server_label(t) for t in vm_section.TARGETS] == [
        "zramd inline",
        "zramd inline",
        "zramd async",
        "zramd async",
        "zramd inline, cold policy",
        "zramd inline, cold policy",
        "nbdkit memory",
        "nbdkit memory",
        "guest zram",
    ]
    assert by_names(["vm"]) == [s for s in SECTIONS if s.name == "vm"]


def test_summary_spreads_only_passing_runs():
    rows = {r["target"]: r for r in vm_section.summarize(_data(RUNS))}
    assert set(rows) == {"zramd-virtio", "memory-virtio", "zramd-async-virtio", "guest-zram"}
    z = rows["zramd-virtio"]
    assert z["hog_s"] == {"median": 19.0, "min": 14.0, "max": 24.0, "n": 2}
    assert z["elapsed_s"]["median"] == 33.0 and z["path"] == "virtio"
    a = rows["zramd-async-virtio"]
    assert (a["runs"], a["ok_runs"]) == (2, 1) and a["hog_s"]["n"] == 1
    assert a["hog_s"]["median"] == 21.0


def test_ratios_are_taken_within_each_round():
    rows = {(r["numerator"], r["denominator"]): r["ratio"] for r in vm_section.ratio_rows(_data(RUNS))}
    # rounds 0 and 1: 14/10 and 24/20, not the ratio of the medians (19/15)
    assert rows[("zramd-virtio", "memory-virtio")] == {
        "median": pytest.approx(1.3),
        "min": pytest.approx(1.2),
        "max": pytest.approx(1.4),
        "n": 2,
    }
    assert rows[("zramd-virtio", "guest-zram")]["median"] == pytest.approx((2.0 + 2.0) / 2)
    # async failed in round 1: only round 0 counts
    async_inline = rows[("zramd-async-virtio", "zramd-virtio")]
    assert async_inline["n"] == 1 and async_inline["median"] == pytest.approx(1.5)
    # the nbd targets never ran: their ratios are there, unmeasured
    assert rows[("zramd-nbd", "memory-nbd")]["n"] == 0


def test_ratios_skip_pairs_whose_targets_were_not_selected():
    data = _data(RUNS[:2], targets=vm_section.QUICK_TARGETS)
    rows = vm_section.ratio_rows(data)
    assert [(r["numerator"], r["denominator"]) for r in rows] == [
        ("zramd-virtio", "memory-virtio")
    ]


def test_tables_render_medians_spreads_and_ratios():
    section = vm_section.VmSwap()
    data = _data(RUNS)
    section.derive(data)
    data["errors"] = ["zramd-async-virtio round 2: boom"]
    md = "\n".join(section.markdown(data))
    assert md.startswith("## Swap in a VM guest")
    assert "| target | path | server | hog s | total s | pages out | pages in | ok |" in md
    assert "| zramd-virtio | virtio | zramd inline | 19.0 (14.0-24.0) | 33.0 (28.0-38.0) |" in md
    assert "| zramd-async-virtio | virtio | zramd async | 21.0 | 35.0 | 84k | 82k | 1/2 |" in md
    assert (
        "| zramd-virtio (zramd inline) | memory-virtio (nbdkit memory) | 1.30x (1.20x-1.40x) | 2 |"
        in md
    )
    assert "| zramd-nbd (zramd inline) | memory-nbd (nbdkit memory) | - | 0 |" in md
    assert "failed: zramd-async-virtio round 2: boom" in md
    assert "not qemu's boot" in md
    summary = "\n".join(section.summary(data))
    assert "1.30x (1.20x-1.40x)" in summary


def _with_memory(run, mem_mib, held_ratio):
    return dict(
        run,
        mem_used_max_bytes=mem_mib << 20,
        rss_max_bytes=(mem_mib + 40) << 20,
        peak_held_ratio=held_ratio,
        max_held_ratio=held_ratio + 0.1,
        peak_swap_cached_pages=9000,
        bytes_per_swap_page=1300.0,
    )


def test_peak_memory_vs_guest_zram_is_a_per_round_ratio_row():
    runs = [
        _with_memory(RUNS[0], 50, 1.0),
        _with_memory(RUNS[3], 25, 1.0),  # guest-zram, round 0: 2x
        _with_memory(RUNS[4], 60, 1.2),
        _with_memory(RUNS[7], 20, 1.0),  # round 1: 3x
        _with_memory(RUNS[6], 90, 1.0),  # async, failed: no ratio
    ]
    section = vm_section.VmSwap()
    data = _data(runs)
    section.derive(data)
    rows = {r["numerator"]: r["ratio"] for r in data["memory_ratios"]}
    assert rows["zramd-virtio"] == {"median": 2.5, "min": 2.0, "max": 3.0, "n": 2}
    assert rows["zramd-async-virtio"]["n"] == 0
    assert "guest-zram" not in rows and "memory-virtio" not in rows
    md = "\n".join(section.markdown(data))
    assert "peak memory vs guest zram" in md
    assert (
        "| zramd-virtio (zramd inline) | 2.50x (2.00x-3.00x) | - | 2 | 55.0 (50.0-60.0) | "
        "95.0 (90.0-100.0) | - | 1.100 (1.000-1.200) | 1.200 (1.100-1.300) | 9.0k | 1300 |"
    ) in md
    assert "| guest-zram (guest zram) | 1x | - | - | 22.5 (20.0-25.0) |" in md
    # runs without the memory fields (older results) render no memory table
    plain = _data(RUNS)
    section.derive(plain)
    assert "peak memory vs guest zram" not in "\n".join(section.markdown(plain))


def test_a_skipped_section_renders_one_line():
    section = vm_section.VmSwap()
    data = _data([])
    data["skipped"] = {"all": "no guest image in vm/cache/"}
    section.derive(data)
    md = section.markdown(data)
    assert md[:2] == ["## Swap in a VM guest", ""]
    assert [line for line in md[2:] if line.strip()] == [
        "\n- all: skipped: no guest image in vm/cache/"
    ]
    assert section.summary(data) == []
    assert section.plots(data, Path("/nonexistent"), "t") == []


def test_chart_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    section = vm_section.VmSwap()
    data = _data(RUNS)
    section.derive(data)
    assert section.plots(data, tmp_path, "test machine") == ["vm.png"]
    assert (tmp_path / "vm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("target", sorted(t for t in vm_run.SERVE_ARGS if "-async-" in t))
def test_async_targets_serve_zramd_with_async_compression(tmp_path, target):
    kind, dev = vm_run.TARGETS[target]
    assert kind == "zramd" and dev in ("vda", "nbd")
    server = TargetServer(
        kind, tmp_path / "s.sock", tmp_path / "log", serve_args=vm_run.SERVE_ARGS[target]
    )
    cmd = server.command()
    assert cmd[-2:] == ["--compress", "async"]
    # zramd's own parser takes the line and reads async compression from it
    args = build_parser().parse_args(cmd[cmd.index("serve") :])
    assert args.compress_mode == "async" and args.socket_path == str(tmp_path / "s.sock")


def test_default_targets_keep_their_command_line(tmp_path):
    plain = TargetServer("zramd", tmp_path / "s.sock", tmp_path / "log").command()
    assert "--compress" not in plain and plain[-2:] == ["--size", "1G"]
    with pytest.raises(ValueError):
        TargetServer("nbdkit-memory", tmp_path / "s", tmp_path / "l", serve_args=("--compress",))


@pytest.mark.parametrize("target", ["zramd-cold-virtio", "zramd-cold-nbd"])
def test_cold_targets_serve_zramd_with_the_cold_policy_in_the_runs_directory(tmp_path, target):
    kind, _ = vm_run.TARGETS[target]
    args = vm_run.SERVE_ARGS[target]
    assert kind == "zramd" and "{tmp}/backing" in args
    run_dir = tmp_path / "run"
    serve = [a.replace("{tmp}", str(run_dir)) for a in args]
    cmd = TargetServer(kind, tmp_path / "s.sock", tmp_path / "log", serve_args=serve).command()
    parsed = build_parser().parse_args(cmd[cmd.index("serve") :])
    assert parsed.backing_file == str(run_dir / "backing")
    assert parsed.high_watermark_bytes > 0 and parsed.recompress_after_s > 0
    assert vm_section.server_label(target) == "zramd inline, cold policy"
    assert vm_section.mode_mismatch({**_run(target, 0, 1.0), "compress_mode": "inline"}) is None
    assert vm_section.mode_mismatch({**_run(target, 0, 1.0), "compress_mode": "async"})


def test_a_zramd_run_in_the_wrong_mode_is_not_a_measurement():
    run = _run("zramd-async-nbd", 0, 30.0)
    assert vm_section.mode_mismatch({**run, "compress_mode": "async"}) is None
    why = vm_section.mode_mismatch({**run, "compress_mode": "inline"})
    assert why and "inline" in why and "async" in why
    assert vm_section.mode_mismatch({**_run("zramd-nbd", 0, 1.0), "compress_mode": "async"})
    # servers without zramd's stats have no mode to check
    assert vm_section.mode_mismatch({**_run("memory-nbd", 0, 1.0), "compress_mode": None}) is None


def test_without_a_guest_image_the_section_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setattr(vm_section.vm_guest, "CACHE", tmp_path)
    why = vm_section.unavailable()
    assert why is not None
    if not why.startswith("qemu"):  # else: qemu (or its TCG) is what is missing
        assert "make vm-guest" in why and "vmlinuz" in why

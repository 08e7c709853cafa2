"""The VM swap section: how long a real Linux guest takes to swap through the
VM test's workload on zramd (inline and async compression), on nbdkit's
memory plugin (C, uncompressed) and on the guest's own zram.

Each run is one vm/run.py target (vm/run.py run_target: a fresh server, a
qemu TCG guest, its hog pushing about 84k pages out through swap and about
as many back in, every byte verified, the server's side checked). The time
is the hog's, on the guest's clock (Result.hog_s: the hog's start to its
end, fill, rewrite and verify passes; not qemu's boot, not the teardown).
Every round runs every target once, the order rotated (measure.rounds), so a
ratio taken within a round has both halves from the same few minutes.

Targets (``TARGETS``, all on both NBD paths where they apply): zramd's
default (inline lz4) and `--compress async`, each on the virtio path (qemu's
NBD client) and the nbd path (the guest's nbd driver); nbdkit memory on both;
the guest's zram. ``RATIOS``: per-round hog-time ratios, zramd over nbdkit
memory on the same path, async over inline, zramd over the guest's zram.
--quick runs ``QUICK_TARGETS`` only (the pipeline, not the comparison).

Skips the whole section, one line, when qemu or its TCG accelerator is
missing or vm/cache/ holds no guest image (`make vm-guest` builds it);
zramd's targets alone when there is no zramd CLI.

Data (results.json "sections"/"vm"): runs (one per round and target),
summary (spreads per target), ratios, the workload's settings.
Pure functions (summarize, ratio_rows, tables) below the class; one thread.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from bench import measure, plots
from bench.context import Context
from bench.formats import outcome_lines, tenths, times, with_spread
from bench.formats import row as md_row
from bench.stats import per_round_ratio, spread
from vm import guest as vm_guest
from vm import run as vm_run

TARGETS = [
    "zramd-virtio",
    "zramd-nbd",
    "zramd-async-virtio",
    "zramd-async-nbd",
    "zramd-cold-virtio",
    "zramd-cold-nbd",
    "memory-virtio",
    "memory-nbd",
    "guest-zram",
]
QUICK_TARGETS = ["zramd-virtio", "memory-virtio"]
PATHS = {"vda": "virtio", "nbd": "nbd", "zram": "guest zram"}
# (numerator, denominator): hog time of one over the other's, same round.
RATIOS = [
    ("zramd-virtio", "memory-virtio"),
    ("zramd-nbd", "memory-nbd"),
    ("zramd-async-virtio", "memory-virtio"),
    ("zramd-async-nbd", "memory-nbd"),
    ("zramd-async-virtio", "zramd-virtio"),
    ("zramd-async-nbd", "zramd-nbd"),
    ("zramd-cold-virtio", "zramd-virtio"),
    ("zramd-cold-nbd", "zramd-nbd"),
    ("zramd-virtio", "guest-zram"),
    ("zramd-nbd", "guest-zram"),
]
# (numerator, denominator): peak memory (mem_used_max) of one over the other's, same round.
MEMORY_RATIOS = [(t, "guest-zram") for t in TARGETS if vm_run.TARGETS[t][0] == "zramd"]
GUEST_FILES = ("vmlinuz", "initramfs.cpio.gz")


def server_label(target: str) -> str:
    """Who stores the pages: "zramd inline", "zramd async", "zramd inline,
    cold policy", "nbdkit memory", "guest zram"."""
    kind = vm_run.TARGETS[target][0]
    if kind == "zramd":
        args = vm_run.SERVE_ARGS.get(target, ())
        mode = args[args.index("--compress") + 1] if "--compress" in args else "inline"
        return f"zramd {mode}" + (", cold policy" if "--backing-file" in args else "")
    return "nbdkit memory" if kind == "nbdkit-memory" else "guest zram"


def mode_mismatch(run: dict) -> str | None:
    """Why a zramd run did not measure its target: its stats name another
    compression mode than the target's arguments ask for; else None."""
    label = server_label(run["target"])
    if not label.startswith("zramd ") or run.get("compress_mode") is None:
        return None
    want = label.split(" ")[1].rstrip(",")
    if run["compress_mode"] == want:
        return None
    return f"zramd served with compress_mode {run['compress_mode']}, the target wants {want}"


def unavailable() -> str | None:
    """Why no guest can run here (qemu, TCG, the guest image), or None."""
    qemu = vm_guest.qemu_binary()
    if qemu is None:
        return "qemu-system-x86_64 is not installed"
    try:
        p = subprocess.run([qemu, "-accel", "help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"qemu-system-x86_64 does not run: {e}"
    if p.returncode != 0 or "tcg" not in p.stdout:
        return "qemu-system-x86_64 has no TCG accelerator"
    missing = [f for f in GUEST_FILES if not (vm_guest.CACHE / f).exists()]
    if missing:
        return f"no guest image in vm/cache/ ({', '.join(missing)}; `make vm-guest` builds it)"
    return None


@contextlib.contextmanager
def zramd_cli(zramd: str | None) -> Iterator[None]:
    """vm/servers.py runs $ZRAMD_CLI: the bench's zramd, for the section's length."""
    before = os.environ.get("ZRAMD_CLI")
    if zramd:
        os.environ["ZRAMD_CLI"] = zramd
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("ZRAMD_CLI", None)
        else:
            os.environ["ZRAMD_CLI"] = before


def run_record(res: vm_run.Result, rnd: int, loadavg_1m: float) -> dict:
    """What results.json keeps of one guest run."""
    stats = res.final or res.peak or {}
    return {
        "target": res.target,
        "round": rnd,
        "ok": res.ok,
        "failures": list(res.failures),
        "hog_s": res.hog_s,
        "hog_own_s": res.hog.get("seconds"),
        "elapsed_s": res.elapsed_s,
        "pages_out": res.pages_out,
        "pages_in": res.pages_in,
        "swap_out_rate": res.swap_out_rate,
        "swap_in_rate": res.swap_in_rate,
        "ratio": res.ratio,
        "compress_mode": stats.get("compress_mode"),
        "loadavg_1m": loadavg_1m,
        "mem_used_max_bytes": res.peak_memory.get("mem_used_max_bytes"),
        "rss_max_bytes": res.peak_memory.get("rss_max_bytes"),
        "rss_growth_max_bytes": res.peak_memory.get("rss_growth_max_bytes"),
        "bytes_per_swap_page": res.peak_memory.get("bytes_per_swap_page"),
        "peak_held_ratio": (res.held or {}).get("peak_held_ratio"),
        "max_held_ratio": (res.held or {}).get("max_held_ratio"),
        "peak_swap_used_pages": (res.held or {}).get("peak_swap_used_pages"),
        "peak_swap_cached_pages": (res.held or {}).get("peak_swap_cached_pages"),
    }


class VmSwap:
    name = "vm"
    title = "Swap in a VM guest"

    def run(self, ctx: Context) -> dict:
        a = ctx.args
        pool = QUICK_TARGETS if a.quick else TARGETS
        targets = [
            t for t in pool if not a.systems or any(fnmatch.fnmatch(t, p) for p in a.systems)
        ]
        data: dict = {
            "rounds": a.rounds,
            "targets": targets,
            "mem_mib": vm_run.DEFAULT_MEM_MIB,
            "hog_mib": vm_run.DEFAULT_HOG_MIB,
            "passes": vm_run.DEFAULT_PASSES,
            "servers": {t: server_label(t) for t in targets},
            "paths": {t: PATHS[vm_run.TARGETS[t][1]] for t in targets},
            "serve_args": {t: list(vm_run.SERVE_ARGS.get(t, ())) for t in targets},
            "runs": [],
            "skipped": {},
        }
        why = unavailable() or (None if targets else "no VM target matches --systems")
        if why:
            data["skipped"]["all"] = why
            ctx.progress(f"vm: SKIPPED: {why}")
            return data
        data["versions"] = vm_run.versions()
        if not ctx.zramd:
            for t in [t for t in targets if vm_run.TARGETS[t][0] == "zramd"]:
                data["skipped"][t] = "no zramd CLI"
                targets.remove(t)
        ctx.progress(
            f"vm: {len(targets)} targets x {a.rounds} rounds (a {data['mem_mib']} MiB TCG "
            f"guest, hog {data['hog_mib']} MiB x {data['passes']} passes)"
        )

        def one(target: str, rnd: int) -> None:
            load = os.getloadavg()[0]
            res = vm_run.run_target(target, quiet=True)
            run = run_record(res, rnd, load)
            wrong = mode_mismatch(run)
            if wrong:
                res.failures.append(wrong)
                run.update(ok=False, failures=list(res.failures))
            data["runs"].append(run)
            for src in (res.console_log, res.server_log):
                if src and Path(src).exists():
                    shutil.copy(src, ctx.logs / f"vm-r{rnd}.{Path(src).name}")
            ctx.progress(
                f"vm round {rnd + 1}/{a.rounds} {target:<19} hog {run['hog_s']} s, "
                f"{run['pages_out']} pages out, {run['pages_in']} in, total {run['elapsed_s']} s"
                + ("" if run["ok"] else f": FAILED: {'; '.join(res.failures)[:300]}")
            )
            if not run["ok"]:
                failed = "; ".join(res.failures)[:500]
                data.setdefault("errors", []).append(f"{target} round {rnd + 1}: {failed}")

        with zramd_cli(ctx.zramd):
            measure.rounds(ctx, data, "vm", targets, one)
        return data

    def derive(self, data: dict) -> None:
        data["summary"] = summarize(data)
        data["ratios"] = ratio_rows(data)
        data["memory_ratios"] = memory_ratio_rows(data)

    def markdown(self, data: dict) -> list[str]:
        lines = [f"## {self.title}", ""]
        if data.get("summary"):
            lines += [describe(data), "", *times_table(data), "", *ratios_table(data)]
            if any(r["ratio"]["n"] for r in data.get("memory_ratios", [])):
                lines += ["", *memory_table(data)]
        return lines + outcome_lines(data)

    def plots(self, data: dict, out: Path, title: str) -> list[str]:
        if not data.get("summary"):
            return []
        plots.vm_swap(out / "vm.png", data["summary"], data["ratios"], title)
        return ["vm.png"]

    def summary(self, data: dict) -> list[str]:
        if not any(r["ratio"]["n"] for r in data.get("ratios", [])):
            return []
        return [
            f"Swap in a VM guest: a {data['mem_mib']} MiB qemu TCG guest swaps about 84k pages "
            f"out and back; the hog's time, ratio within each round, median (min-max) over "
            f"{data['rounds']} interleaved rounds (below 1x: the first is faster).",
            "",
            *ratios_table(data),
        ]


def summarize(data: dict) -> list[dict]:
    """Per target, the spreads over its passing runs (a failed run's time
    is not a measurement of the workload)."""
    rows = []
    for target in data["targets"]:
        mine = [r for r in data["runs"] if r["target"] == target]
        good = [r for r in mine if r["ok"]]
        if not mine:
            continue
        rows.append(
            {
                "target": target,
                "path": data["paths"][target],
                "server": data["servers"][target],
                "runs": len(mine),
                "ok_runs": len(good),
                **{k: spread([r[k] for r in good]) for k in ("hog_s", "elapsed_s")},
                **{k: spread([r[k] for r in good]) for k in ("pages_out", "pages_in")},
                **{k: spread([r.get(k) for r in good]) for k in HELD_KEYS},
            }
        )
    return rows


HELD_KEYS = (
    "peak_held_ratio",
    "max_held_ratio",
    "peak_swap_cached_pages",
    "mem_used_max_bytes",
    "rss_max_bytes",
    "rss_growth_max_bytes",
    "bytes_per_swap_page",
)


def memory_ratio_rows(data: dict) -> list[dict]:
    """Per ``MEMORY_RATIOS`` pair whose targets both ran: "peak memory vs
    guest zram", the per-round ratio of their mem_used_max, and
    ``rss_ratio``: zramd's RSS growth (its largest RSS less its idle RSS)
    over the same guest zram mem_used_max (the guest's store has no RSS of
    its own to read)."""
    good = [r for r in data["runs"] if r["ok"] and r.get("mem_used_max_bytes")]
    rows = []
    for num, den in MEMORY_RATIOS:
        if num not in data["targets"] or den not in data["targets"]:
            continue
        a = [r for r in good if r["target"] == num]
        b = [r for r in good if r["target"] == den]
        rows.append(
            {
                "numerator": num,
                "denominator": den,
                "ratio": per_round_ratio(a, b, key="mem_used_max_bytes"),
                "rss_ratio": per_round_ratio(
                    [
                        {**r, "peak_bytes": r["rss_growth_max_bytes"]}
                        for r in a
                        if r.get("rss_growth_max_bytes")
                    ],
                    [{**r, "peak_bytes": r["mem_used_max_bytes"]} for r in b],
                    key="peak_bytes",
                ),
            }
        )
    return rows


def ratio_rows(data: dict) -> list[dict]:
    """Per ``RATIOS`` pair whose targets both ran: the per-round ratio of
    their hog times over the rounds where both passed."""
    good = [r for r in data["runs"] if r["ok"]]
    rows = []
    for num, den in RATIOS:
        if num not in data["targets"] or den not in data["targets"]:
            continue
        a = [r for r in good if r["target"] == num]
        b = [r for r in good if r["target"] == den]
        rows.append(
            {"numerator": num, "denominator": den, "ratio": per_round_ratio(a, b, key="hog_s")}
        )
    return rows


def describe(data: dict) -> str:
    pages = spread([r["pages_out"] for r in data["runs"] if r["ok"]])
    load = spread([r.get("loadavg_1m") for r in data["runs"]])
    return (
        f"A qemu TCG guest ({data['mem_mib']} MiB, one vCPU; {data.get('versions', '')}) swaps "
        f"onto each target while its hog fills {data['hog_mib']} MiB, rewrites it and verifies "
        f"every byte ({data['passes']} passes; {with_spread(pages)} pages out per run), as in "
        "`make vm-test`. Paths: virtio = qemu's own NBD client, nbd = the guest kernel's nbd "
        "driver, guest zram = no NBD (the guest's own zram, lz4, with extra RAM for its store). "
        "Hog s: the hog's start to its end on the guest's clock (not qemu's boot); total s: "
        f"qemu's start to its exit. {data['rounds']} round(s), every target once per round, the "
        "order rotated; median (min-max) over the rounds a target passed"
        + (f"; 1-minute load average {with_spread(load, tenths)}" if load["n"] else "")
        + "."
    )


def times_table(data: dict) -> list[str]:
    lines = [
        md_row(["target", "path", "server", "hog s", "total s", "pages out", "pages in", "ok"]),
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in data["summary"]:
        lines.append(
            md_row(
                [
                    r["target"],
                    r["path"],
                    r["server"],
                    with_spread(r["hog_s"], tenths),
                    with_spread(r["elapsed_s"], tenths),
                    with_spread(r["pages_out"]),
                    with_spread(r["pages_in"]),
                    f"{r['ok_runs']}/{r['runs']}",
                ]
            )
        )
    return lines


def ratios_table(data: dict) -> list[str]:
    rows = data.get("ratios", [])
    if not rows:
        return []
    lines = [
        "Hog-time ratios, taken within each round (below 1x: the first target is faster):",
        "",
        md_row(["hog time of", "over", "ratio", "rounds"]),
        "|---|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            md_row(
                [
                    f"{r['numerator']} ({data['servers'][r['numerator']]})",
                    f"{r['denominator']} ({data['servers'][r['denominator']]})",
                    with_spread(r["ratio"], times),
                    str(r["ratio"]["n"]),
                ]
            )
        )
    return lines


def _mib(v: float | None) -> str:
    return "-" if v is None else f"{v / (1 << 20):.1f}"


def _ratio3(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def memory_table(data: dict) -> list[str]:
    """Peak memory vs guest zram (per round), and per target what the
    server held against the guest's swap in use at its peak."""
    by_target = {r["target"]: r for r in data.get("summary", [])}
    lines = [
        "Peak memory vs guest zram: zramd's mem_used_max over the guest zram's (mm_stat "
        "mem_used_max), taken within each round. The guest zram's guest has more RAM (room "
        "for its store), so it swaps fewer pages: compare too the stored pages over the "
        "guest's swap in use (SwapTotal - SwapFree) at the peak (above 1: pages held for "
        "slots the guest freed; vm/held.py), the swap-cached pages then, and the "
        "peak memory per page of the guest's largest swap in use. RSS growth: zramd's "
        "largest RSS (zramd and nbdkit processes) less its RSS before the guest booted, "
        "the real memory its store cost, over the same guest zram mem_used_max.",
        "",
        md_row(
            [
                "target",
                "peak memory vs guest zram",
                "RSS growth vs guest zram",
                "rounds",
                "mem_used_max MiB",
                "RSS max MiB",
                "RSS growth MiB",
                "stored / swap in use at peak",
                "max",
                "swap-cached pages at peak",
                "bytes per page of swap in use",
            ]
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [(r["numerator"], r["ratio"], r.get("rss_ratio")) for r in data.get("memory_ratios", [])]
    rows.append(("guest-zram", None, None))
    for target, ratio, rss_ratio in rows:
        t = by_target.get(target)
        if t is None:
            continue
        lines.append(
            md_row(
                [
                    f"{target} ({data['servers'][target]})",
                    "1x" if ratio is None else with_spread(ratio, times),
                    "-" if not rss_ratio or not rss_ratio["n"] else with_spread(rss_ratio, times),
                    str(ratio["n"]) if ratio else "-",
                    with_spread(t["mem_used_max_bytes"], _mib),
                    with_spread(t["rss_max_bytes"], _mib),
                    with_spread(t.get("rss_growth_max_bytes"), _mib),
                    with_spread(t["peak_held_ratio"], _ratio3),
                    with_spread(t["max_held_ratio"], _ratio3),
                    with_spread(t["peak_swap_cached_pages"]),
                    with_spread(t["bytes_per_swap_page"], lambda v: f"{v:.0f}"),
                ]
            )
        )
    return lines

"""The baseline section: this tree's zramd against an earlier commit's, on
4 KiB random writes and reads at iodepth 16 (one connection) and on the
swap request mix (bench/swap_mix.json, both NBD paths, swap-out and
swap-in as the swap section replays them), in one run.

Why: a change to the store (the page arena, a leaner write path) must not
cost the hot path more than it says; IOPS from another day cannot show
that on a machine that moves 30-50% between minutes. So both trees are
served here, alternately: each round starts the baseline and the current
zramd fresh (region filled first, so reads hit stored pages) and runs both
workloads on each, and the order flips from round to round. Per workload:
median (min-max) of the rate (IOPS for 4 KiB, MB/s for the mix) and of
server CPU µs per request for each tree, and of the per-round ratio
current / baseline, the steadier number.

The baseline is a commit (``--baseline REV``, default ``BASELINE_REV``: the
last tree before the engine package, docs/design.md#module-layout, so the
section shows what the rooms and the table-driven options cost the hot
path). Its tree is taken with
``git archive`` into the run's temporary directory and served by its own
``zramd serve`` under this venv's Python (``PYTHONPATH`` = that tree, so its
package and plugin are the ones that run). Where the checkout has no git
history with that commit (a shallow clone, an unpacked tarball), the
section says why and measures nothing.

Target: current / baseline >= ``MIN_RATIO`` on every workload (medians of
the per-round ratios).

Data (results.json "sections"/"baseline"): rev, jobs (one per round, tree,
workload), summary, left_out (why nothing ran), errors.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench import fio, measure, plots, swap
from bench.context import Context
from bench.formats import outcome_lines, tenths, times, with_spread
from bench.servers import ROOT, server_command
from bench.stats import per_round_ratio, spread
from bench.systems import by_name

BASELINE_REV = "2bde4be1f083321ee08dcb3a1122425684528d40"
SYSTEM_NAME = "zramd-lz4"
TREES = ("baseline", "current")
WORKLOADS = (measure.RANDWRITE_4K, measure.RANDREAD_4K)
MIN_RATIO = 0.97


class Baseline:
    name = "baseline"
    title = "Against an earlier commit"

    def run(self, ctx: Context) -> dict:
        a = ctx.args
        rev = a.baseline or BASELINE_REV
        system = by_name(SYSTEM_NAME)
        data: dict = {
            "rev": rev,
            "system": SYSTEM_NAME,
            "description": system.description,
            "rounds": a.rounds,
            "runtime_s": a.runtime_s,
            "jobs": [],
            "left_out": None,
        }
        if not ctx.zramd:
            data["left_out"] = "zramd CLI not found"
            return data
        tree = ctx.tmp / "baseline-tree"
        why = export_tree(rev, tree)
        if why:
            data["left_out"] = why
            ctx.progress(f"baseline: not measured: {why}")
            return data
        data["rev_subject"] = _git("log", "-1", "--format=%h %s", rev)
        mix_path = Path(getattr(a, "swap_mix", None) or swap.DEFAULT_MIX)
        paths = swap.mix_plan(swap.load_mix(mix_path)) if mix_path.exists() else {}
        data["mix_file"] = swap.shown_path(mix_path) if paths else None
        python = str(Path(ctx.zramd).parent / "python")
        commands = {
            "baseline": ["env", f"PYTHONPATH={tree}", python, "-m", "zramd.cli"],
            "current": [ctx.zramd],
        }
        ctx.progress(
            f"baseline: {SYSTEM_NAME} now and at {rev[:12]}, {len(WORKLOADS)} workloads x "
            f"{a.rounds} rounds of {a.runtime_s:.1f} s"
        )
        with open(ctx.logs / "baseline.fio.log", "a") as log:

            def one(which: str, rnd: int) -> None:
                sock = str(ctx.tmp / f"baseline-{which}.sock")
                # the same serve arguments as any zramd system, under this tree's CLI
                cmd = commands[which] + server_command(system, sock, ctx.region_bytes, "zramd")[1:]
                with measure.serving(ctx, cmd, [sock], f"baseline-{which}") as server:
                    measure.fill(ctx, server, log, f"baseline-{which}-r{rnd}")
                    for w in WORKLOADS:
                        tags = {"tree": which, "workload": w.name, "round": rnd}
                        measure.recorded(ctx, data, "baseline", server, w, log, tags)
                    for w, split in mix_workloads(paths):
                        label = f"baseline-{which}-{w.name}-r{rnd}"
                        opts = fio.nbd_target(server.uris[0])
                        res = swap.job(ctx, opts, server, w, split, label)
                        tags = {"tree": which, "workload": w.name, "round": rnd}
                        data["jobs"].append({**tags, **res})
                        ctx.progress(
                            f"baseline round {rnd + 1}/{a.rounds} {which} {w.name}: "
                            f"{res['mb_per_s']:7.1f} MB/s, server "
                            f"{tenths(res['server_us_per_request'])} µs/request"
                        )

            measure.rounds(ctx, data, "baseline", list(TREES), one)
        return data

    def derive(self, data: dict) -> None:
        data["summary"] = summarize(data)

    def markdown(self, data: dict) -> list[str]:
        rev = data["rev"][:12]
        lines = [f"## {self.title}", ""]
        if data.get("left_out"):
            return lines + [f"Not measured: {data['left_out']}."]
        mix = (
            f" and the swap request mix of {data['mix_file']} (swap-out and swap-in per NBD "
            f"path, iodepth {swap.IODEPTH})"
            if data.get("mix_file")
            else ""
        )
        lines += [
            f"{data['description']}: this tree against commit {rev} "
            f"({data.get('rev_subject', '').split(' ', 1)[-1]}), 4 KiB random I/O at iodepth "
            f"16{mix}, one connection; {data['rounds']} round(s) of {data['runtime_s']:.1f} s "
            "per job, the two trees alternating and the order flipped each round. Median "
            "(min-max) over the rounds; the ratio is the median (min-max) of the per-round "
            "ratios. Server µs/request: utime+stime of nbdkit from /proc over the job / requests.",
            "",
            "| workload | baseline | current | current / baseline | baseline server "
            "µs/request | current server µs/request | target | met |",
            "|---|---:|---:|---:|---:|---:|---|---|",
        ]
        for row in data.get("summary", []):
            r = row["ratio"]["median"]
            met = "-" if r is None else ("yes" if r >= MIN_RATIO else "**no**")
            unit = row.get("unit", "IOPS")
            lines.append(
                f"| {row['workload']} ({unit}) | {with_spread(row['rate']['baseline'])} | "
                f"{with_spread(row['rate']['current'])} | {with_spread(row['ratio'], times)} | "
                f"{with_spread(row['server_us']['baseline'], tenths)} | "
                f"{with_spread(row['server_us']['current'], tenths)} | >= {MIN_RATIO}x | {met} |"
            )
        return lines + outcome_lines(data)

    def plots(self, data: dict, out: Path, title: str) -> list[str]:
        if not data.get("summary"):
            return []
        groups = [row["workload"] for row in data["summary"]]
        series = {
            f"{which} ({data['rev'][:12]})" if which == "baseline" else which: [
                row["ratio"] if which == "current" else _one() for row in data["summary"]
            ]
            for which in TREES
        }
        plots.medians_by_group(
            out / "baseline.png",
            groups,
            series,
            "rate against the baseline (median, bars: min-max)",
            "zramd against an earlier commit",
            title,
        )
        return ["baseline.png"]

    def summary(self, data: dict) -> list[str]:
        rows = data.get("summary") or []
        if not rows:
            return []
        parts = [f"{r['workload']} {with_spread(r['ratio'], times)}" for r in rows]
        return [
            f"- Against commit {data['rev'][:12]} (the tree before the engine package), same run: "
            + ", ".join(parts)
            + f" (target >= {MIN_RATIO}x)."
        ]


def mix_workloads(paths: dict) -> list:
    """``[(Workload, bssplit)]`` of the swap mix, per path and operation, as
    the swap section replays them."""
    out = []
    for path, plan in paths.items():
        for op, rw, _ in swap.OPERATIONS:
            if op in plan["bssplit"]:
                w = swap.workload(path, op, rw, plan["max_bytes"][op])
                out.append((w, plan["bssplit"][op]))
    return out


def _one() -> dict:
    """The baseline's own ratio to itself, drawn beside the current tree's."""
    return {"median": 1.0, "min": 1.0, "max": 1.0, "n": 1}


def summarize(data: dict) -> list[dict]:
    """Per workload (the 4 KiB ones, then the mix's in the order they ran):
    rate spreads per tree (IOPS, or MB/s for the mix), server µs/request,
    and the per-round ratio current / baseline of the rate."""
    rows = []
    jobs = data["jobs"]
    names = [w.name for w in WORKLOADS]
    names += [j["workload"] for j in jobs if j["workload"] not in names]
    for name in dict.fromkeys(names):
        mine = [j for j in jobs if j["workload"] == name]
        if not mine:
            continue
        four_k = name in [w.name for w in WORKLOADS]
        key, unit = ("iops", "IOPS") if four_k else ("mb_per_s", "MB/s")
        row: dict = {"workload": name, "unit": unit, "rate": {}, "server_us": {}}
        at = {which: [j for j in mine if j["tree"] == which] for which in TREES}
        for which in TREES:
            row["rate"][which] = spread([j[key] for j in at[which]])
            row["server_us"][which] = spread([j["server_us_per_request"] for j in at[which]])
        row["ratio"] = per_round_ratio(at["current"], at["baseline"], key)
        rows.append(row)
    return rows


def export_tree(rev: str, dest: Path) -> str | None:
    """``git archive rev`` unpacked into ``dest``; why not, or None."""
    if _git("cat-file", "-e", f"{rev}^{{commit}}") is None:
        return f"commit {rev[:12]} is not in this checkout's git history (a shallow clone?)"
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev], capture_output=True
    )
    if archive.returncode != 0:
        return f"git archive {rev[:12]} failed: {archive.stderr.decode()[-200:].strip()}"
    untar = subprocess.run(
        ["tar", "-x", "-C", str(dest)], input=archive.stdout, capture_output=True
    )
    if untar.returncode != 0:
        return f"unpacking {rev[:12]} failed: {untar.stderr.decode()[-200:].strip()}"
    return None


def _git(*args: str) -> str | None:
    try:
        p = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() if p.returncode == 0 else None

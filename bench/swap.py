"""The swap section: the request-size mix a guest kernel sends while it
swaps, replayed as swap-out (random writes) and swap-in (random reads).

The mix is bench/swap_mix.json (``--swap-mix FILE`` for another), written
from a measurement in a VM, never typed here:

    {"measured": "<how it was measured>",
     "paths": {"qemu": {"read": {"32768": 0.93, ...}, "write": {...},
                        "requests": {"read": N, "write": N}},
               "nbd": {...}}}

Keys are request sizes in bytes, values the fraction of that operation's
requests. Each path's fractions become a fio ``bssplit`` (``bssplit``:
integer percentages summing to 100, sizes in KiB; a size whose share
rounds to 0% is left out and named in the data). Where the file is
missing, the section measures nothing and says so in one line.

Per round (the order of systems rotates, bench/measure.py) every system
starts fresh, its whole region is written once (128 KiB sequential, so
reads hit stored pages), then for each path swap-out and swap-in run at
iodepth 8 for --runtime seconds on the bench's 50%-compressible fio data
(docs/design.md#swap-mix). Per job: MB/s, IOPS, server CPU µs per request
(utime+stime of the nbdkit processes, /proc, over the job / requests; none
for kernel zram, whose work is in fio's own system time: the client
column) and fio's CPU µs per request.

Targets (``TARGETS``): MB/s ratios of two systems, taken within each round
(both halves from the same minutes), median and min-max over the rounds,
for every path; informational ratios (``INFORMATIONAL``) beside them.

Data (results.json "sections"/"swap"): the mix (file, measured, per path
the bssplit strings and the sizes left out), jobs (one per round, system,
path, operation), summary, targets, informational, skipped, errors.
Single-threaded: one run drives it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from bench import fio, measure, plots
from bench.context import Context
from bench.formats import kilo, met_cell, outcome_lines, tenths, times, with_spread
from bench.formats import row as md_row
from bench.kernel_zram import ZramDevice
from bench.servers import SkipSystem, server_command
from bench.stats import per_round_ratio, spread
from bench.systems import FILL_WORKLOAD, PAGE_BYTES, System, Workload, by_name, select
from zramd.process import ServerProcess

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
DEFAULT_MIX = BENCH_DIR / "swap_mix.json"
SYSTEM_NAMES = [
    "zramd-lz4",
    "zramd-zstd",
    "zramd-lz4-async",
    "zramd-lz4-async2",
    "zramd-zstd-async",
    "python-lz4-list",
    "nbdkit-memory",
    "kernel-zram-lz4",
]
# Requests in flight (the mix counts sizes, not depth: a few in flight, the
# same for every system), and the alignment of every offset (swap slots are
# pages): docs/design.md#swap-mix.
IODEPTH = 8
ALIGN_BYTES = PAGE_BYTES
# operation name, fio rw, the mix's key for it
OPERATIONS = (("swap-out", "randwrite", "write"), ("swap-in", "randread", "read"))
# (system, over system, operation, at least): MB/s ratio within each round.
TARGETS = (
    ("zramd-lz4", "python-lz4-list", "swap-out", 1.0),
    ("zramd-lz4", "python-lz4-list", "swap-in", 1.0),
    ("zramd-lz4-async", "zramd-lz4", "swap-out", 1.0),
    ("zramd-zstd-async", "zramd-zstd", "swap-out", 1.4),
)
INFORMATIONAL = tuple(
    ("zramd-lz4", peer, op)
    for peer in ("nbdkit-memory", "kernel-zram-lz4")
    for op in ("swap-out", "swap-in")
)


# ----------------------------------------------------------------------
# The mix


def percentages(fractions: dict[str, float]) -> list[tuple[int, int]]:
    """(size_bytes, percent) by size, the percentages integers summing to
    100 (largest remainder over the fractions normalised to their sum);
    sizes whose share rounds to 0 are left out. ValueError for no requests,
    a negative fraction or a size that is not a positive multiple of 1 KiB."""
    sizes = {}
    for key, frac in fractions.items():
        size = int(key)
        if size <= 0 or size % 1024:
            raise ValueError(f"request size {key!r} is not a positive multiple of 1 KiB")
        if frac < 0:
            raise ValueError(f"negative fraction {frac} for {key}")
        sizes[size] = sizes.get(size, 0.0) + float(frac)
    total = sum(sizes.values())
    if total <= 0:
        raise ValueError("no requests in this mix")
    exact = {s: 100 * f / total for s, f in sizes.items()}
    whole = {s: int(x) for s, x in exact.items()}
    # the remaining points go to the largest remainders (ties: the larger share)
    by_remainder = sorted(exact, key=lambda s: (exact[s] - whole[s], exact[s]), reverse=True)
    for s in by_remainder[: 100 - sum(whole.values())]:
        whole[s] += 1
    return [(s, p) for s, p in sorted(whole.items()) if p > 0]


def bssplit(fractions: dict[str, float]) -> str:
    """fio's bssplit for one operation's mix: "4k/6:32k/94"."""
    return ":".join(f"{s // 1024}k/{p}" for s, p in percentages(fractions))


def load_mix(path: Path) -> dict:
    """The mix file, checked: {"measured": str, "paths": {name: {"read": {...},
    "write": {...}, ...}}}; ValueError naming what is wrong."""
    try:
        mix = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{shown_path(path)}: unreadable ({e})") from e
    paths = mix.get("paths") if isinstance(mix, dict) else None
    if not isinstance(paths, dict) or not paths:
        raise ValueError(f'{shown_path(path)}: no "paths"')
    for name, ops in paths.items():
        if not isinstance(ops, dict) or not any(
            isinstance(ops.get(k), dict) for _, _, k in OPERATIONS
        ):
            raise ValueError(f"{shown_path(path)}: path {name!r} has no read or write mix")
    return mix


def shown_path(path: Path) -> str:
    """The mix file as reports print it: relative to the checkout, else its name."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return path.name


def mix_plan(mix: dict) -> dict:
    """Per path: the bssplit per operation, the largest size (fio's bs), the
    sizes left out (share rounds to 0%) and the request counts measured."""
    plan = {}
    for name, ops in mix["paths"].items():
        entry: dict = {"bssplit": {}, "max_bytes": {}, "left_out": {}}
        entry["requests"] = ops.get("requests", {})
        for op, _, key in OPERATIONS:
            fractions = ops.get(key)
            if not fractions:
                continue
            kept = percentages(fractions)
            entry["bssplit"][op] = bssplit(fractions)
            entry["max_bytes"][op] = max(s for s, _ in kept)
            dropped = sorted({int(k) for k in fractions} - {s for s, _ in kept})
            if dropped:
                entry["left_out"][op] = dropped
        plan[name] = entry
    return plan


# ----------------------------------------------------------------------
# Measuring


def workload(path: str, op: str, rw: str, max_bytes: int) -> Workload:
    return Workload(f"{op}-{path}", "fio", rw, max_bytes, IODEPTH)


@contextlib.contextmanager
def target(
    ctx: Context, system: System, rnd: int
) -> Iterator[tuple[list[str], ServerProcess | None]]:
    """A fresh system for one round: fio's options for it and its server
    (None for kernel zram), its region filled."""
    name = f"swap-{system.name}-r{rnd}"
    with open(ctx.logs / "swap.fio.log", "a") as log:
        if system.kind == "zram":
            dev = ZramDevice(system.args[0], ctx.region_bytes, ctx.args.zram_lock)
            dev.setup()
            try:
                opts = fio.block_target(dev.dev)
                _fill(ctx, opts, log, name)
                yield opts, None
            finally:
                dev.teardown()
            return
        sock = str(ctx.tmp / f"swap-{system.name}.sock")
        cmd = server_command(system, sock, ctx.region_bytes, ctx.zramd)
        with measure.serving(ctx, cmd, [sock], name) as server:
            measure.fill(ctx, server, log, name)
            yield fio.nbd_target(server.uris[0]), server


def _fill(ctx: Context, opts: list[str], log: IO[str], label: str) -> None:
    """measure.fill for a block device: the whole region, 128 KiB sequential."""
    w = dataclasses.replace(FILL_WORKLOAD, name=f"{label}.fill")
    json_path = ctx.logs / f"{label}.fill.json"
    cmd = fio.job_command([opts], w, ctx.region_bytes, 0, 0, json_path)
    fio.run(cmd, log, timeout_s=ctx.fio_timeout_s())


def job(
    ctx: Context, opts: list[str], server: ServerProcess | None, w: Workload, split: str, label: str
) -> dict:
    """One timed fio job with the mix; CPU per request as measure.job counts it."""
    json_path = ctx.logs / f"{label}.json"
    section = [*opts, f"--bssplit={split}", f"--blockalign={ALIGN_BYTES}"]
    cmd = fio.job_command([section], w, ctx.region_bytes, ctx.args.runtime_s, 0, json_path)
    loadavg_1m = os.getloadavg()[0]
    cpu0 = server.cpu_seconds() if server else 0.0
    with open(ctx.logs / "swap.fio.log", "a") as log:
        res = fio.run(cmd, log, timeout_s=ctx.fio_timeout_s())
    ios = res["ios"] or 0
    res["loadavg_1m"] = loadavg_1m
    res["bssplit"] = split
    if server is not None:
        server_cpu_s = server.cpu_seconds() - cpu0
        res["server_cpu_s"] = round(server_cpu_s, 3)
        res["server_us_per_request"] = server_cpu_s * 1e6 / ios if ios else None
    else:
        res["server_us_per_request"] = None  # in the kernel, on fio's time
    res["client_us_per_request"] = res["client_cpu_s"] * 1e6 / ios if ios else None
    return res


class SwapMix:
    name = "swap"
    title = "Swap request mix"

    def run(self, ctx: Context) -> dict:
        a = ctx.args
        mix_path = Path(getattr(a, "swap_mix", None) or DEFAULT_MIX)
        systems = select(a.systems, [by_name(s) for s in SYSTEM_NAMES])
        data: dict = {
            "mix_file": shown_path(mix_path),
            "iodepth": IODEPTH,
            "align_bytes": ALIGN_BYTES,
            "rounds": a.rounds,
            "runtime_s": a.runtime_s,
            "region_bytes": a.region_bytes,
            "systems": [s.name for s in systems],
            "descriptions": {s.name: s.description for s in systems},
            "jobs": [],
            "skipped": {},
        }
        if not mix_path.exists():
            why = (
                f"no request mix: {shown_path(mix_path)} is missing "
                "(it comes from a VM measurement)"
            )
            data["skipped"]["all"] = why
            ctx.progress(f"swap: SKIPPED: {why}")
            return data
        mix = load_mix(mix_path)
        data["measured"] = mix.get("measured", "")
        data["paths"] = mix_plan(mix)
        runnable = _runnable(ctx, systems, data)
        ctx.progress(
            f"swap: {len(runnable)} systems x {len(data['paths'])} paths x swap-out, swap-in x "
            f"{a.rounds} rounds of {a.runtime_s:.1f} s, iodepth {IODEPTH}"
        )
        for path, plan in data["paths"].items():
            ctx.progress(
                f"swap path {path}: " + ", ".join(f"{op} {s}" for op, s in plan["bssplit"].items())
            )

        def one(name: str, rnd: int) -> None:
            if name in data["skipped"]:
                return
            try:
                self._round(ctx, data, by_name(name), rnd)
            except SkipSystem as e:
                data["skipped"][name] = str(e)
                ctx.progress(f"swap {name}: SKIPPED: {e}")

        measure.rounds(ctx, data, "swap", runnable, one)
        return data

    @staticmethod
    def _round(ctx: Context, data: dict, system: System, rnd: int) -> None:
        with target(ctx, system, rnd) as (opts, server):
            for path, plan in data["paths"].items():
                for op, rw, _ in OPERATIONS:
                    if op not in plan["bssplit"]:
                        continue
                    w = workload(path, op, rw, plan["max_bytes"][op])
                    label = f"swap-{system.name}-{path}-{op}-r{rnd}"
                    res = job(ctx, opts, server, w, plan["bssplit"][op], label)
                    tags = {"system": system.name, "path": path, "operation": op, "round": rnd}
                    data["jobs"].append({**tags, **res})
                    ctx.progress(
                        f"swap round {rnd + 1}/{ctx.args.rounds} {system.name} {path} {op}: "
                        f"{res['mb_per_s']:7.1f} MB/s, {res['iops']:8.0f} IOPS, server "
                        f"{tenths(res['server_us_per_request'])} µs/request"
                    )

    def derive(self, data: dict) -> None:
        data["summary"] = summarize(data)
        data["targets"] = ratio_rows(data, TARGETS)
        data["informational"] = ratio_rows(data, tuple((*r, None) for r in INFORMATIONAL))

    def markdown(self, data: dict) -> list[str]:
        lines = [f"## {self.title}", ""]
        if "paths" not in data:
            return lines + [line.strip() for line in outcome_lines(data)]
        return lines + _description(data) + _tables(data) + outcome_lines(data)

    def plots(self, data: dict, out: Path, title: str) -> list[str]:
        rows = data.get("summary") or []
        if not rows:
            return []
        groups = list(dict.fromkeys((r["path"], r["operation"]) for r in rows))
        series = {}
        for system in data["systems"]:
            mine = {
                (r["path"], r["operation"]): r["mb_per_s"] for r in rows if r["system"] == system
            }
            if mine:
                series[system] = [mine.get(g) for g in groups]
        plots.medians_by_group(
            out / "swap.png",
            [f"{path}\n{op}" for path, op in groups],
            series,
            "MB/s (median, bars: min-max)",
            f"Swap request mix, iodepth {data['iodepth']}",
            title,
        )
        return ["swap.png"]

    def summary(self, data: dict) -> list[str]:
        if not data.get("targets") or not any(r["ratio"]["n"] for r in data["targets"]):
            return []
        return [
            f"Swap request mix (the sizes a guest kernel swaps with, iodepth {data['iodepth']}; "
            f"MB/s ratios within each round, median (min-max) over {data['rounds']} rounds):",
            "",
            *_ratio_table(data["targets"], with_want=True),
        ]


def _runnable(ctx: Context, systems: list[System], data: dict) -> list[str]:
    """The systems that can run here; the others in data["skipped"] with why."""
    names = []
    for system in systems:
        try:
            if system.kind == "zram":
                reason = ZramDevice.unavailable()
                if reason:
                    raise SkipSystem(reason)
            else:
                server_command(system, "SOCK", ctx.region_bytes, ctx.zramd)
        except SkipSystem as e:
            data["skipped"][system.name] = str(e)
            ctx.progress(f"swap {system.name}: SKIPPED: {e}")
            continue
        names.append(system.name)
    return names


# ----------------------------------------------------------------------
# Deriving and rendering


def jobs_of(data: dict, system: str, path: str, op: str) -> list[dict]:
    """The jobs of one system, path and operation (one per round it ran)."""
    return [
        j for j in data["jobs"] if (j["system"], j["path"], j["operation"]) == (system, path, op)
    ]


def summarize(data: dict) -> list[dict]:
    """Per system, path and operation: spreads of MB/s, IOPS and CPU per request."""
    rows = []
    for system in data["systems"]:
        for path in data.get("paths", {}):
            for op, _, _ in OPERATIONS:
                mine = jobs_of(data, system, path, op)
                if not mine:
                    continue
                row = {"system": system, "path": path, "operation": op}
                for key, field in (
                    ("mb_per_s", "mb_per_s"),
                    ("iops", "iops"),
                    ("server_us", "server_us_per_request"),
                    ("client_us", "client_us_per_request"),
                ):
                    row[key] = spread([j.get(field) for j in mine])
                rows.append(row)
    return rows


def ratio_rows(data: dict, specs: tuple) -> list[dict]:
    """One row per (system, peer, operation, at least) and path: the per-round
    MB/s ratio (median, min-max) and server CPU µs per request ratio; met
    is None without a target or a measurement."""
    rows = []
    for path in data.get("paths", {}):
        for system, peer, op, want in specs:
            mine, peers = jobs_of(data, system, path, op), jobs_of(data, peer, path, op)
            ratio = per_round_ratio(mine, peers, key="mb_per_s")
            # server CPU per request, the steadier number on a loaded machine
            # (none for kernel zram, whose work is on fio's time)
            cpu = per_round_ratio(
                [j for j in mine if j.get("server_us_per_request") is not None],
                [p for p in peers if p.get("server_us_per_request") is not None],
                key="server_us_per_request",
            )
            met = None if want is None or ratio["median"] is None else ratio["median"] >= want
            rows.append(
                {
                    "target": f"{system} vs {peer}, {op}",
                    "system": system,
                    "peer": peer,
                    "path": path,
                    "operation": op,
                    "want": want,
                    "ratio": ratio,
                    "server_us_ratio": cpu,
                    "met": met,
                }
            )
    return rows


def _description(data: dict) -> list[str]:
    load = spread([j.get("loadavg_1m") for j in data["jobs"]])
    lines = [
        f"The request sizes a guest kernel sends while swapping ({data['mix_file']}: "
        f"{data.get('measured') or 'no description'}), replayed with fio `bssplit` as swap-out "
        f"(random writes) and swap-in (random reads) at iodepth {data['iodepth']}, offsets "
        f"aligned to {data['align_bytes']} bytes, on fio data 50% compressible, after the whole "
        f"{data['region_bytes'] >> 20} MiB region was written once. {data['rounds']} round(s) of "
        f"{data['runtime_s']:.1f} s per job, systems interleaved; median (min-max) over the "
        "rounds. Server µs/request: utime+stime of the server's nbdkit processes over the job / "
        "requests (kernel zram's work is in fio's own system time: the client column)"
        + (
            f"; 1-minute load average during the jobs {with_spread(load, tenths)}"
            if load["n"]
            else ""
        )
        + ".",
        "",
        "| path | operation | fio bssplit | requests measured | sizes left out (rounded to 0%) |",
        "|---|---|---|---:|---|",
    ]
    for path, plan in data["paths"].items():
        for op, _, key in OPERATIONS:
            if op in plan["bssplit"]:
                dropped = plan["left_out"].get(op, [])
                lines.append(
                    md_row(
                        [
                            path,
                            op,
                            f"`{plan['bssplit'][op]}`",
                            str(plan["requests"].get(key, "-")),
                            ", ".join(f"{s // 1024}k" for s in dropped) or "-",
                        ]
                    )
                )
    return lines + [""]


def _tables(data: dict) -> list[str]:
    lines = [
        "| system | path | operation | MB/s | IOPS | server µs/request | client µs/request |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in data.get("summary", []):
        lines.append(
            md_row(
                [
                    r["system"],
                    r["path"],
                    r["operation"],
                    with_spread(r["mb_per_s"], tenths),
                    with_spread(r["iops"], kilo),
                    with_spread(r["server_us"], tenths),
                    with_spread(r["client_us"], tenths),
                ]
            )
        )
    lines += [
        "",
        "Targets: MB/s of one system over another's, the ratio taken within each round, "
        "median (min-max) over the rounds; beside it, in the same rounds, the ratio of their "
        "server CPU µs per request (below 1: the first spends less per request), the steadier "
        "number where other work loads the machine.",
        "",
        *_ratio_table(data.get("targets", []), with_want=True),
        "",
        "For information, in the same rounds:",
        "",
        *_ratio_table(data.get("informational", []), with_want=False),
    ]
    return lines


def _ratio_table(rows: list[dict], with_want: bool) -> list[str]:
    cpu = "server µs/request, ratio"
    if with_want:
        lines = [
            f"| target | path | want | measured | met | {cpu} |",
            "|---|---|---|---:|---|---:|",
        ]
    else:
        lines = [f"| ratio | path | measured | {cpu} |", "|---|---|---:|---:|"]
    for r in rows:
        cells = [r["target"], r["path"]]
        if with_want:
            cells += [f">= {r['want']:.2f}x", with_spread(r["ratio"], times), met_cell(r["met"])]
        else:
            cells += [with_spread(r["ratio"], times)]
        lines.append(md_row([*cells, with_spread(r.get("server_us_ratio", spread([])), times)]))
    return lines

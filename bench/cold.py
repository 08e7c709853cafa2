"""The cold section: zramd's automatic cold-page policy on real program
memory, against kernel zram lz4 holding the same data and against the same
zramd with no policy.

What runs (docs/design.md#cold-pages):

1. Kernel zram lz4 is filled with the swap-like corpus (bench/corpus.py)
   and its ``mem_used_total`` read: the memory to beat.
2. Two zramd-lz4 servers are filled with the same corpus: one with the
   policy on (``POLICY_ARGS``: zstd as the secondary algorithm, a cold age
   floor of ``FLOOR_S`` and a promotion-rate target of ``TARGET_PCT_MIN``
   percent of the stored pages per minute), one without.
3. An access trace is replayed on both, in ``SLICE_S`` slices that
   alternate between them (the order flips every slice), as two fio jobs
   at once on one connection each: the *hot set*, the first
   ``HOT_FRACTION`` of the device, read at random as fast as it goes (its
   IOPS are the hot-path number), and the *cold tail*, the rest, read at
   ``TAIL_IOPS`` with a Zipf distribution (``ZIPF``): a few tail pages come
   back often, most seldom, so the tail goes cold and its reads are the
   promotions. After each slice the policy server's memory (RSS
   above its idle RSS), promotion rate, cold age and recompressed bytes
   are sampled: the time series of the chart.
4. Writeback: two more servers with a backing file, one writing pages back
   raw and one packed (``--writeback-compressed``), filled with the corpus,
   every page marked idle and written back, in ``--rounds`` interleaved
   rounds; the backing files' allocated bytes (``st_blocks``)
   and the pages written back per second (the writeback request's own
   ``elapsed_s``) are compared.

Targets (reported, never asserted): memory at the end against kernel zram
(<= ``MEMORY_GOAL``); the promotion rate of the last third of the samples
against the target (within ``PROMOTION_WITHIN``); hot-path IOPS, per slice,
against the no-policy server's slice next to it (>= ``HOT_IOPS_MIN``);
packed writeback's allocated bytes against raw writeback's (<=
``WRITEBACK_GOAL``) and its pages per second, per round (>=
``WRITEBACK_SPEED_GOAL``).

Data (results.json "sections"/"cold"): settings, zram, slices (one per
slice and system), samples (the policy server's), writeback, skipped,
errors; ``derive`` adds the summary and the targets.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

from bench import corpus, fill, fio, measure, plots
from bench.context import Context
from bench.formats import met_cell, outcome_lines, tenths, times, with_spread
from bench.kernel_zram import ZramDevice
from bench.servers import SkipSystem, server_command, zramd_stats
from bench.stats import per_round_ratio, spread
from bench.systems import System, Workload

# The policy under test. A floor half the 120 s default and a target
# well above Google's 0.2%/min, so that a run of minutes sees the
# controller settle (docs/design.md#cold-pages: it steps every 10 s).
FLOOR_S = 60
TARGET_PCT_MIN = 2.0
POLICY_ARGS = (
    "--algorithm",
    "lz4",
    "--recomp-algorithm",
    "zstd",
    "--recompress-after",
    str(FLOOR_S),
    "--cold-target",
    str(TARGET_PCT_MIN),
)
SYSTEMS = {
    "policy": System("zramd-lz4-cold", "zramd", POLICY_ARGS, "zramd, lz4, cold policy (zstd)"),
    "plain": System("zramd-lz4", "zramd", ("--algorithm", "lz4"), "zramd, lz4, no policy"),
}
# The trace's shape: a hot fifth at full speed, the rest a trickle with
# Zipf-like reuse (a swap device's pages are mostly a cold tail).
HOT_FRACTION = 0.2
TAIL_IOPS = 200
ZIPF = "zipf:1.2"
TRACE = Workload("hot-randread-4k", "fio", "randread", 4096, 16)
SLICE_S = 10.0
PHASE_S = 300.0
QUICK_SLICE_S, QUICK_PHASE_S = 1.0, 4.0  # --quick: the pipeline only
MEMORY_GOAL = 0.72
PROMOTION_WITHIN = 0.25
HOT_IOPS_MIN = 0.95
WRITEBACK_GOAL = 0.55
WRITEBACK_SPEED_GOAL = 1.5  # packed pages/s against raw's, per round
WRITEBACK_FORMATS = (("raw", ()), ("packed", ("--writeback-compressed",)))


class ColdPages:
    name = "cold"
    title = "Cold pages"

    def run(self, ctx: Context) -> dict:
        a = ctx.args
        quick = getattr(a, "quick", False)
        phase_s, slice_s = (QUICK_PHASE_S, QUICK_SLICE_S) if quick else (PHASE_S, SLICE_S)
        data: dict = {
            "settings": {
                "floor_s": FLOOR_S,
                "target_pct_min": TARGET_PCT_MIN,
                "zipf": ZIPF,
                "hot_fraction": HOT_FRACTION,
                "tail_iops": TAIL_IOPS,
                "slice_s": slice_s,
                "phase_s": phase_s,
                "region_bytes": ctx.region_bytes,
                "policy_args": " ".join(POLICY_ARGS),
            },
            "zram": None,
            "slices": [],
            "samples": [],
            "writeback": {},
            "skipped": {},
            "errors": [],
        }
        if not ctx.zramd:
            data["skipped"]["all"] = "zramd CLI not found"
            return data
        path, info = corpus.ensure(a.corpus_dir, ctx.region_bytes, a.regenerate_corpus)
        data["corpus"] = {k: info.get(k) for k in ("unique_pages", "zero_pages", "sources")}
        ctx.progress(f"cold: kernel zram lz4 with the {ctx.region_bytes >> 20} MiB corpus")
        try:
            data["zram"] = _zram_memory(ctx, path)
        except SkipSystem as e:
            data["skipped"]["kernel-zram-lz4"] = str(e)
        ctx.progress(
            f"cold: policy and no policy, {phase_s:.0f} s of hot-set and {ZIPF} tail reads "
            f"in {slice_s:.0f} s slices"
        )
        self._trace(ctx, data, path, phase_s)
        ctx.progress("cold: writeback of the corpus, raw and packed")
        data["writeback"] = _writeback(ctx, path)
        return data

    def _trace(self, ctx: Context, data: dict, path: str, phase_s: float) -> None:
        with contextlib.ExitStack() as stack:
            servers = {}
            for which, system in SYSTEMS.items():
                sock = str(ctx.tmp / f"cold-{which}.sock")
                cmd = server_command(system, sock, ctx.region_bytes, ctx.zramd)
                server = stack.enter_context(measure.serving(ctx, cmd, [sock], f"cold-{which}"))
                idle = server.rss_bytes()
                fill.corpus_over_nbd(sock, path, 256 << 10)
                servers[which] = (server, sock, idle)
            t0 = time.monotonic()
            log = stack.enter_context(open(ctx.logs / "cold.fio.log", "a"))
            rnd = 0
            while time.monotonic() - t0 < phase_s:
                for which in measure.rotated(list(SYSTEMS), rnd):
                    server, sock, _ = servers[which]
                    res = _slice(
                        ctx, server, log, f"cold-{which}-s{rnd}", data["settings"]["slice_s"]
                    )
                    data["slices"].append({"system": which, "round": rnd, **res})
                server, sock, idle = servers["policy"]
                sample = _sample(ctx, server, sock, idle, time.monotonic() - t0)
                data["samples"].append(sample)
                ctx.progress(
                    f"cold slice {rnd + 1}: policy {data['slices'][-2]['iops']:.0f} / plain "
                    f"{data['slices'][-1]['iops']:.0f} IOPS, memory {sample['memory_bytes'] >> 20} "
                    f"MiB, promotions {sample['promotion_rate_pct_min']:.2f} %/min, cold age "
                    f"{sample['cold_age_s']:.0f} s"
                )
                rnd += 1
            data["plain_end"] = _sample(ctx, *servers["plain"], time.monotonic() - t0)

    def derive(self, data: dict) -> None:
        data["summary"] = summarize(data)
        data["targets"] = targets(data)

    def markdown(self, data: dict) -> list[str]:
        lines = [f"## {self.title}", ""]
        if "all" in data.get("skipped", {}):
            return lines + [f"Not measured: {data['skipped']['all']}."]
        s = data["settings"]
        lines += [
            f"The cold-page policy (`{s['policy_args']}`) on the swap-like corpus of real "
            f"program memory ({s['region_bytes'] >> 20} MiB), against the same zramd with no "
            f"policy and kernel zram lz4 holding the same data. The trace, two fio jobs at once: "
            f"the hot set, the first {s.get('hot_fraction', HOT_FRACTION):.0%} of the device, "
            f"4 KiB random reads at iodepth {TRACE.iodepth} as fast as they go (the hot-path "
            f"IOPS), and the cold tail, the rest, 4 KiB reads at "
            f"{s.get('tail_iops', TAIL_IOPS)} IOPS with `random_distribution={s['zipf']}`; "
            f"{s['phase_s']:.0f} s in {s['slice_s']:.0f} s slices alternating "
            "between the two servers. Memory: RSS above the server's idle RSS (kernel zram: "
            "`mem_used_total`). A promotion is the first read of a page since it went cold "
            "(recompressed or written back); "
            "the rate is in percent of the stored pages per minute (60 s window). Medians "
            "(min-max) over the slices.",
            "",
            "| target | want | measured | met |",
            "|---|---|---:|---|",
        ]
        for t in data.get("targets", []):
            lines.append(
                f"| {t['target']} | {t['want']} | {t['measured'] or '-'} | {met_cell(t['met'])} |"
            )
        summary = data.get("summary", {})
        if summary:
            lines += [
                "",
                "| | policy | no policy |",
                "|---|---:|---:|",
                f"| hot-set 4 KiB read IOPS per slice | {with_spread(summary['iops']['policy'])} "
                f"| {with_spread(summary['iops']['plain'])} |",
                f"| memory at the end, MiB | {_mib(summary['memory_end']['policy'])} "
                f"| {_mib(summary['memory_end']['plain'])} |",
                f"| recompressed at the end, MiB | {_mib(summary.get('recompressed_end'))} | - |",
                f"| cold age at the end, s | {tenths(summary.get('cold_age_end_s'))} | - |",
            ]
        wb = data.get("writeback") or {}
        if wb.get("raw") and wb.get("packed"):
            lines += [
                "",
                f"Writeback of the whole corpus (`zramd idle`, then `zramd writeback idle`): "
                f"raw, {wb['raw']['bd_count']} pages in {_mib(wb['raw']['allocated_bytes'])} MiB "
                f"of backing file; packed (`--writeback-compressed`), {wb['packed']['bd_count']} "
                f"pages in {_mib(wb['packed']['allocated_bytes'])} MiB, "
                f"{wb['packed'].get('bd_blocks', '-')} blocks; pages written back per second "
                f"{_rate(wb['raw'])} raw, {_rate(wb['packed'])} packed"
                + (
                    f" ({_rounds(len(wb['runs']) // 2)}, the writeback request's own time); "
                    f"packed/raw per round {with_spread(writeback_speed(wb), times)}, per CPU "
                    f"second of the writeback thread "
                    f"{with_spread(writeback_speed(wb, 'pages_per_cpu_s'), times)}."
                    if wb.get("runs")
                    else "."
                ),
            ]
        elif wb.get("error"):
            lines += ["", f"Writeback not measured: {wb['error']}."]
        return lines + outcome_lines(data)

    def plots(self, data: dict, out: Path, title: str) -> list[str]:
        if not data.get("samples"):
            return []
        plots.cold_series(out / "cold.png", data, title)
        return ["cold.png"]

    def summary(self, data: dict) -> list[str]:
        rows = [t for t in data.get("targets", []) if t["measured"]]
        if not rows:
            return []
        parts = [f"{t['target']} {t['measured']} (want {t['want']})" for t in rows]
        return ["- Cold pages on real program memory, one run: " + "; ".join(parts) + "."]


def _zram_memory(ctx: Context, path: str) -> dict:
    dev = ZramDevice("lz4", ctx.region_bytes, getattr(ctx.args, "zram_lock", None))
    dev.setup()
    try:
        fill.corpus_onto_device(dev.dev, path, 256 << 10)
        stats = dev.mm_stat()
    finally:
        dev.teardown()
    return {"mem_used_total": stats["mem_used_total"], "orig_data_size": stats["orig_data_size"]}


def _slice(ctx: Context, server, log, label: str, slice_s: float) -> dict:
    """One slice of the trace: the hot job (the first job: its result) and
    the tail job beside it, each on its own connection."""
    json_path = ctx.logs / f"{label}.json"
    hot_bytes = int(ctx.region_bytes * HOT_FRACTION) // 4096 * 4096
    uri = fio.nbd_target(server.uris[0])
    hot = [*uri, "--offset=0", f"--size={hot_bytes}"]
    cmd = fio.job_command([hot], TRACE, ctx.region_bytes, slice_s, 0, json_path)
    cmd += [
        "--name=tail",
        *uri,
        f"--offset={hot_bytes}",
        f"--size={ctx.region_bytes - hot_bytes}",
        f"--random_distribution={ZIPF}",
        f"--rate_iops={TAIL_IOPS}",
        "--iodepth=1",
    ]
    res = fio.run(cmd, log, timeout_s=ctx.fio_timeout_s())
    return {k: res.get(k) for k in ("iops", "p50_us", "p99_us", "ios")}


def _sample(ctx: Context, server, sock: str, idle_rss: int, t_s: float) -> dict:
    stats = zramd_stats(ctx.zramd or "zramd", sock)
    return {
        "t_s": round(t_s, 1),
        "memory_bytes": server.rss_bytes() - idle_rss,
        "mem_used_total": stats.get("mem_used_total"),
        "promotion_rate_pct_min": stats.get("promotion_rate_pct_min") or 0.0,
        "cold_age_s": stats.get("cold_age_s") or 0,
        "recompressed_bytes": stats.get("cold_recompressed_bytes") or 0,
        "cold_state": stats.get("cold_state"),
    }


def _writeback(ctx: Context, path: str) -> dict:
    """Both writeback formats on the whole corpus, ``--rounds`` interleaved
    rounds (the order flips every round); {"error": why} if
    the build has no packed format.  "raw" and "packed" hold the first
    round's figures with the median pages per second; "runs" every round."""
    runs: list[dict] = []
    for rnd in range(ctx.args.rounds):
        order = WRITEBACK_FORMATS if rnd % 2 == 0 else WRITEBACK_FORMATS[::-1]
        for fmt, extra in order:
            try:
                run = _writeback_once(ctx, path, fmt, extra)
            except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as e:
                why = str(e).splitlines()[-1] if str(e) else type(e).__name__
                return {"error": f"{fmt}: {why}"}
            runs.append(run | {"round": rnd})
    out: dict = {"runs": runs}
    for fmt, _ in WRITEBACK_FORMATS:
        mine = [r for r in runs if r["format"] == fmt]
        rates = spread([r["pages_per_s"] for r in mine])
        out[fmt] = mine[0] | {"pages_per_s": rates["median"], "pages_per_s_spread": rates}
    return out


def _writeback_once(ctx: Context, path: str, fmt: str, extra: tuple) -> dict:
    """One server of format ``fmt``: filled, every page marked idle and
    written back.  Pages per second are the writeback request's own
    (``elapsed_s`` of its reply: the writeback thread's time, not the CLI's
    start-up); ``wall_s`` is the command's time around it."""
    backing = ctx.tmp / f"cold-{fmt}.backing"
    sock = str(ctx.tmp / f"cold-wb-{fmt}.sock")
    system = System(f"zramd-lz4-wb-{fmt}", "zramd", ("--algorithm", "lz4"), fmt)
    cmd = server_command(system, sock, ctx.region_bytes, ctx.zramd)
    cmd += ["--backing-file", str(backing), *extra]
    with measure.serving(ctx, cmd, [sock], f"cold-wb-{fmt}"):
        fill.corpus_over_nbd(sock, path, 256 << 10)
        _zramd(ctx, "idle", "--socket", sock)
        t0 = time.monotonic()
        reply = json.loads(_zramd(ctx, "writeback", "idle", "--socket", sock, "--json"))
        wall_s = time.monotonic() - t0
        stats = zramd_stats(ctx.zramd or "zramd", sock)
        allocated = os.stat(backing).st_blocks * 512
    elapsed_s = reply.get("elapsed_s") or 0.0
    return {
        "format": fmt,
        "bd_count": stats.get("bd_count"),
        "bd_blocks": stats.get("bd_blocks"),
        "allocated_bytes": allocated,
        "written": reply.get("written"),
        "seconds": round(elapsed_s, 4),
        "wall_s": round(wall_s, 3),
        "pages_per_s": (reply.get("written") or 0) / elapsed_s if elapsed_s > 0 else 0.0,
        # the writeback thread's CPU time: the steadier figure on a shared machine
        "cpu_s": reply.get("cpu_s"),
        "pages_per_cpu_s": (reply.get("written") or 0) / reply["cpu_s"]
        if reply.get("cpu_s")
        else None,
    }


def _zramd(ctx: Context, *args: str) -> str:
    p = subprocess.run([ctx.zramd or "zramd", *args], capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"zramd {args[0]}: {(p.stderr or p.stdout).strip()}")
    return p.stdout


def _rounds(n: int) -> str:
    return "one round" if n == 1 else f"{n} interleaved rounds, median (min-max)"


def _rate(fmt: dict) -> str:
    """Pages per second of one format: median (min-max) over the rounds."""
    rates = fmt.get("pages_per_s_spread")
    return with_spread(rates, lambda v: f"{v:.0f}") if rates else f"{fmt['pages_per_s']:.0f}"


def _mib(n) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def summarize(data: dict) -> dict:
    if not data.get("slices"):
        return {}
    by = {w: [j for j in data["slices"] if j["system"] == w] for w in SYSTEMS}
    samples = data.get("samples") or []
    last = samples[-1] if samples else {}
    plain_end = data.get("plain_end") or {}
    return {
        "iops": {w: spread([j["iops"] for j in by[w]]) for w in SYSTEMS},
        "iops_ratio": per_round_ratio(by["policy"], by["plain"]),
        "memory_end": {"policy": last.get("memory_bytes"), "plain": plain_end.get("memory_bytes")},
        "recompressed_end": last.get("recompressed_bytes"),
        "cold_age_end_s": last.get("cold_age_s"),
        # the controller's settled part: the last third of the samples
        "promotion_rate": spread(
            [s["promotion_rate_pct_min"] for s in samples[len(samples) * 2 // 3 :]]
        ),
    }


def _row(target: str, want: str, measured: str | None, met: bool | None) -> dict:
    return {"target": target, "want": want, "measured": measured, "met": met}


def targets(data: dict) -> list[dict]:
    s = data.get("summary") or {}
    if not s:
        return []
    rows = []
    zram = (data.get("zram") or {}).get("mem_used_total")
    mem = s["memory_end"]["policy"]
    v = mem / zram if mem is not None and zram else None
    rows.append(
        _row(
            "memory at the end vs kernel zram lz4",
            f"<= {MEMORY_GOAL:.2f}x",
            None if v is None else f"{v:.2f}x",
            None if v is None else v <= MEMORY_GOAL,
        )
    )
    rate = s["promotion_rate"]
    target = data["settings"]["target_pct_min"]
    rows.append(
        _row(
            f"promotion rate vs the target ({target:g} %/min), last third",
            f"within {PROMOTION_WITHIN:.0%}",
            None if rate["median"] is None else f"{with_spread(rate, tenths)} %/min",
            None
            if rate["median"] is None
            else abs(rate["median"] - target) <= PROMOTION_WITHIN * target,
        )
    )
    ratio = s["iops_ratio"]
    rows.append(
        _row(
            "hot-path IOPS vs no policy, per slice",
            f">= {HOT_IOPS_MIN:.2f}x",
            None if ratio["median"] is None else with_spread(ratio, times),
            None if ratio["median"] is None else ratio["median"] >= HOT_IOPS_MIN,
        )
    )
    wb = data.get("writeback") or {}
    if wb.get("raw") and wb.get("packed") and wb["raw"]["allocated_bytes"]:
        v = wb["packed"]["allocated_bytes"] / wb["raw"]["allocated_bytes"]
        rows.append(
            _row(
                "packed writeback's backing bytes vs raw writeback's",
                f"<= {WRITEBACK_GOAL:.2f}x",
                f"{v:.2f}x",
                v <= WRITEBACK_GOAL,
            )
        )
    speed = writeback_speed(wb)
    if speed["median"] is not None:
        rows.append(
            _row(
                "packed writeback's pages per second vs raw writeback's, per round",
                f">= {WRITEBACK_SPEED_GOAL:.2f}x",
                with_spread(speed, times),
                speed["median"] >= WRITEBACK_SPEED_GOAL,
            )
        )
    return rows


def writeback_speed(wb: dict, key: str = "pages_per_s") -> dict:
    """spread() of packed's pages per second (``key``) over raw's, round by
    round (one pair when the data has no rounds)."""
    runs = wb.get("runs")
    if runs:
        by = {
            fmt: [r for r in runs if r["format"] == fmt and r.get(key)]
            for fmt, _ in WRITEBACK_FORMATS
        }
        return per_round_ratio(by["packed"], by["raw"], key)
    if key != "pages_per_s":
        return spread([])
    if wb.get("raw", {}).get("pages_per_s") and wb.get("packed", {}).get("pages_per_s"):
        return spread([wb["packed"]["pages_per_s"] / wb["raw"]["pages_per_s"]])
    return spread([])

"""The matrix section: every selected system x every workload.

For each system and dataset ("fio": fio's compressible buffers; "corpus":
real process memory from corpus.py) the system starts fresh, the whole
region is written first (the fill workload, measured too), the storage
counters are read (ratio, memory per page), then the timed workloads run on
the filled region, so reads always hit written data. Systems run one after
the other; the kernel zram peer runs under --zram-lock when given.

Data (results.json "sections"/"matrix"): systems (what ran, skipped or
failed and why), results (one row per system, dataset, workload), storage
(one record per system and dataset), targets, corpus, workloads.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import subprocess
import time
from pathlib import Path
from typing import IO

from bench import corpus, fill, fio, plots, storage, targets
from bench.context import Context
from bench.formats import kilo, num, times
from bench.kernel_zram import ZramDevice
from bench.servers import (
    SkipSystem,
    display_command,
    server_command,
    server_process,
    zramd_stats_settled,
)
from bench.systems import FIO_DATA_OPTIONS, WORKLOADS, System, Workload, select
from zramd.process import ServerProcess


@dataclasses.dataclass
class Target:
    """Where one dataset of one system runs: a server on sock, or a kernel
    zram device; fio: the fio options that point a job at it."""

    system: System
    dataset: str
    sock: str
    server: ServerProcess | None = None
    zram: ZramDevice | None = None
    fio: list[str] = dataclasses.field(default_factory=list)


class Matrix:
    name = "matrix"
    title = "Systems and workloads"

    def workloads(self, ctx: Context, system: System) -> list[Workload]:
        a = ctx.args
        out = []
        for w in WORKLOADS:
            if w.dataset not in a.datasets or (w.dataset == "corpus" and not system.stores):
                continue
            wanted = not a.workloads or any(
                fnmatch.fnmatch(w.name, p) or fnmatch.fnmatch(f"{w.dataset}/{w.name}", p)
                for p in a.workloads
            )
            if wanted or w.fill:
                out.append(w)
        return out

    def run(self, ctx: Context) -> dict:
        a = ctx.args
        chosen = select(a.systems)
        if not chosen:
            raise SystemExit(f"no system matches {','.join(a.systems)} (see --list)")
        jobs = sum(1 for s in chosen for w in self.workloads(ctx, s) if not w.fill)
        fills = sum(1 for s in chosen for w in self.workloads(ctx, s) if w.fill)
        ctx.progress(
            f"matrix: {len(chosen)} systems, {jobs} timed jobs of {a.runtime_s:.1f}+{a.ramp_s:.1f} "
            f"s, {fills} fills of {a.region_bytes >> 20} MiB"
        )
        data: dict = {
            "systems": [],
            "results": [],
            "storage": [],
            "corpus": None,
            "fio_data_options": FIO_DATA_OPTIONS,
            "workloads": [dataclasses.asdict(w) for w in WORKLOADS if w.dataset in a.datasets],
        }
        corpus_path = None
        if "corpus" in a.datasets and any(s.stores for s in chosen):
            ctx.progress(f"corpus: {a.region_bytes >> 20} MiB swap-like corpus in {a.corpus_dir}")
            corpus_path, data["corpus"] = corpus.ensure(
                a.corpus_dir, a.region_bytes, a.regenerate_corpus
            )
        for system in chosen:
            self._run_system(ctx, system, data, corpus_path)
        return data

    def derive(self, data: dict) -> None:
        targets.add_ratios(data)
        data["targets"] = targets.evaluate(data)

    def _run_system(
        self, ctx: Context, system: System, data: dict, corpus_path: str | None
    ) -> None:
        entry: dict = {
            "name": system.name,
            "kind": system.kind,
            "description": system.description,
            "args": list(system.args),
            "skipped": None,
            "error": None,
            "loadavg_at_start": os.getloadavg(),
        }
        data["systems"].append(entry)
        if system.kind == "zram":
            entry["command"] = (
                "fio --ioengine=libaio --direct=1 --filename=/dev/zramN "
                f"(comp_algorithm={system.args[0]})"
            )
        else:
            try:
                entry["command"] = display_command(
                    server_command(system, "SOCK", ctx.region_bytes, ctx.zramd)
                )
            except SkipSystem as e:
                entry["skipped"] = str(e)
                ctx.progress(f"{system.name:<18} SKIPPED: {e}")
                return
        workloads = self.workloads(ctx, system)
        with open(ctx.logs / f"{system.name}.fio.log", "a") as log:
            for dataset in ("fio", "corpus"):
                ws = [w for w in workloads if w.dataset == dataset]
                if not ws:
                    continue
                try:
                    t = Target(system, dataset, str(ctx.tmp / f"{system.name}.sock"))
                    self._run_dataset(ctx, t, ws, data, corpus_path, log)
                except SkipSystem as e:
                    entry["skipped"] = str(e)
                    ctx.progress(f"{system.name:<18} SKIPPED: {e}")
                    return
                except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as e:
                    entry["error"] = f"{dataset}: {e}"
                    ctx.progress(f"{system.name:<18} FAILED ({dataset}): {e}")

    def _run_dataset(
        self, ctx: Context, t: Target, workloads: list[Workload], data: dict, corpus, log: IO[str]
    ) -> None:
        """Fresh target, fill, storage stats, then the timed workloads."""
        a, name, system = ctx.args, t.system.name, t.system
        try:
            if system.kind == "zram":
                t.zram = ZramDevice(system.args[0], a.region_bytes, a.zram_lock)
                t.zram.setup()
                t.fio = fio.block_target(t.zram.dev)
            else:
                cmd = server_command(system, t.sock, a.region_bytes, ctx.zramd)
                t.server = server_process(cmd, [t.sock], ctx.logs / f"{name}.server.log").start()
                t.fio = fio.nbd_target(t.server.uris[0])
            time.sleep(0.2)
            rss_before = t.server.rss_bytes() if t.server else None
            for w in workloads:
                label = f"{name:<18} {t.dataset:<6} {w.name:<17}"
                ctx.progress(f"{label} ...")
                res = self._job(ctx, t, w, corpus, log)
                rec = {"system": name, "dataset": t.dataset, "workload": w.name, "rw": w.rw}
                rec |= {"bs_bytes": w.bs_bytes, "iodepth": w.iodepth, **res}
                data["results"].append(rec)
                lat = (
                    ""
                    if rec["p50_us"] is None
                    else f"  p50 {rec['p50_us']:7.1f} µs  p99 {rec['p99_us']:8.1f} µs"
                )
                ctx.progress(f"{label} {rec['iops']:9.0f} IOPS {rec['mb_per_s']:8.1f} MB/s{lat}")
                if w.fill and system.stores:
                    self._storage(ctx, t, rss_before, data)
        finally:
            if t.server:
                t.server.stop()
            if t.zram:
                t.zram.teardown()

    @staticmethod
    def _job(ctx: Context, t: Target, w: Workload, corpus: str | None, log: IO[str]) -> dict:
        """One workload on the target: a corpus fill, or a timed fio job."""
        a = ctx.args
        if w.rw == "corpus-fill":
            assert corpus is not None
            if t.zram:
                nbytes, secs, method = fill.corpus_onto_device(t.zram.dev, corpus, w.bs_bytes)
            else:
                nbytes, secs, method = fill.corpus_over_nbd(t.sock, corpus, w.bs_bytes)
            return {
                "iops": nbytes / w.bs_bytes / secs,
                "mb_per_s": nbytes / 1e6 / secs,
                "p50_us": None,
                "p99_us": None,
                "elapsed_s": round(secs, 2),
                "method": method,
            }
        json_path = ctx.logs / f"{t.system.name}.{t.dataset}.{w.name}.json"
        cmd = fio.job_command([t.fio], w, a.region_bytes, a.runtime_s, a.ramp_s, json_path)
        return fio.run(cmd, log, timeout_s=ctx.fio_timeout_s())

    @staticmethod
    def _storage(ctx: Context, t: Target, rss_before: int | None, data: dict) -> None:
        """After a fill: compression and memory per page, from stats and RSS."""
        name, system, dataset = t.system.name, t.system, t.dataset
        stats = None
        if t.zram:
            stats = t.zram.mm_stat()
        elif system.kind == "zramd":
            assert ctx.zramd is not None
            stats = zramd_stats_settled(ctx.zramd, t.sock)
        rss_after = t.server.rss_bytes() if t.server else None
        rss_delta = None if rss_after is None or rss_before is None else rss_after - rss_before
        srec = storage.record(system, dataset, ctx.args.region_bytes, stats, rss_delta, rss_after)
        data["storage"].append(srec)
        ctx.progress(
            f"{name:<18} {dataset:<6} stored {srec['orig_bytes'] / 2**20:.0f} MiB: ratio "
            f"{num(srec['ratio'], '.2f')}, memory {num(srec['bytes_per_page'])} B/page "
            f"({srec['memory_source']}), overhead {num(srec['overhead_bytes_per_page'])} B/page"
        )

    # ------------------------------------------------------------------
    # Rendering

    def markdown(self, data: dict) -> list[str]:
        lines = _results_table(data) + _storage_table(data)
        if data.get("targets"):
            lines += ["", *targets.markdown(data["targets"])]
        notes = [s for s in data["systems"] if s["skipped"] or s["error"]]
        if notes:
            lines += ["", "## Skipped or failed", ""]
            for s in notes:
                lines.append(
                    f"- {s['name']}: "
                    + (f"skipped: {s['skipped']}" if s["skipped"] else f"failed: {s['error']}")
                )
        lines += ["", "## Systems", ""]
        for s in data["systems"]:
            lines.append(
                f"- **{s['name']}**: {s['description']} (`{s.get('command', '')}`); "
                f"load average at its start {s.get('loadavg_at_start', (0,))[0]:.2f}"
            )
        return lines

    def plots(self, data: dict, out: Path, title: str) -> list[str]:
        return plots.matrix(data, out, title)

    def summary(self, data: dict) -> list[str]:
        """README's table: 4 KiB QD16 IOPS and 128 KiB writes on fio data,
        ratio and overhead on the corpus, one row per system that ran."""
        res, sto = data["results"], data["storage"]
        lines = [
            "| system | randwrite IOPS | randread IOPS | 128 KiB write MB/s | ratio (corpus) "
            "| bytes/page beyond payload (corpus) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for s in data["systems"]:
            if s["skipped"]:
                continue
            w = targets.lookup(res, s["name"], "fio", "randwrite-4k-qd16")
            r = targets.lookup(res, s["name"], "fio", "randread-4k-qd16")
            f = targets.lookup(res, s["name"], "fio", "seqwrite-128k")
            st = next(
                (x for x in sto if x["system"] == s["name"] and x["dataset"] == "corpus"), None
            )
            ratio = num(st["ratio"], ".2f") if st and st["ratio"] else "-"
            if st and not st["ratio"] and st["memory_ratio"]:
                ratio = f"{st['memory_ratio']:.2f} (by RSS)"
            overhead = num(st["overhead_bytes_per_page"]) if st else "-"
            lines.append(
                f"| {s['description']} | {kilo(w and w['iops'])} | {kilo(r and r['iops'])} | "
                f"{num(f and f['mb_per_s'])} | {ratio} | {overhead} |"
            )
        met = [t for t in data.get("targets", []) if t["system"] == "zramd-lz4"]
        if met:
            lines += [
                "",
                "zramd-lz4 against its targets: "
                + "; ".join(
                    f"{t['target']} {t['measured'] or '-'} (want {t['want']}"
                    f"{', met' if t['met'] else (', missed' if t['met'] is False else '')})"
                    for t in met
                )
                + ".",
            ]
        return lines


def _results_table(data: dict) -> list[str]:
    """The IOPS, MB/s and latency table, with the datasets it ran on."""
    c = data.get("corpus")
    corpus_pages = f", {c['pages']} pages, {c['zero_pages']} zero" if c else ""
    lines = [
        "Datasets: **fio** = fio's compressible buffers "
        f"(`{' '.join(data['fio_data_options'])}`); **corpus** = swap-like corpus of real process "
        "memory (resident anonymous pages of python3, sort and gcc started by the "
        f"bench{corpus_pages}). Each dataset starts on a fresh device whose whole region is "
        "written first (the fill rows), so reads always hit written data. NBD systems use fio "
        "`ioengine=nbd` over a Unix socket; kernel zram uses fio `libaio`, `direct=1`. Python "
        "plugins run with `nbdkit --threads 1`, as zramd does. Numbers drift between runs; "
        "compare within one run.",
        "",
        "| system | data | workload | IOPS | MB/s | p50 µs | p99 µs | vs kernel zram | vs "
        "nbdkit zstd |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["results"]:
        lines.append(
            f"| {r['system']} | {r['dataset']} | {r['workload']} | {num(r['iops'])} | "
            f"{num(r['mb_per_s'], '.1f')} | {_lat(r, 'p50_us')} | {_lat(r, 'p99_us')} | "
            f"{times(r.get('vs_kernel_zram'))} | {times(r.get('vs_nbdkit_zstd'))} |"
        )
    return lines


def _storage_table(data: dict) -> list[str]:
    """The compression and memory table, with what its columns mean."""
    lines = [
        "",
        "Mixed rows show read/write latency. Ratio columns compare MB/s (= IOPS at equal block "
        "size) with the same data and workload. Fill rows: 128 KiB fio writes (fio data), or the "
        "corpus written in 256 KiB requests one at a time (libnbd, or dd for kernel zram).",
        "",
        "## Compression and memory",
        "",
        "| system | data | stored MiB | ratio | vs kernel zram | memory | memory source | "
        "bytes/page | overhead B/page | stats overhead B/page | same pages | huge pages |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for s in data["storage"]:
        memory = "-" if s["memory_bytes"] is None else f"{s['memory_bytes'] / 2**20:.1f} MiB"
        lines.append(
            f"| {s['system']} | {s['dataset']} | {s['orig_bytes'] / 2**20:.0f} | "
            f"{num(s['ratio'], '.2f')} | {times(s.get('ratio_vs_kernel_zram'))} | {memory} | "
            f"{s['memory_source'] or '-'} | {num(s['bytes_per_page'])} | "
            f"{num(s['overhead_bytes_per_page'])} | {num(s['stats_overhead_bytes_per_page'])} | "
            f"{num(s.get('same_pages'))} | {num(s.get('huge_pages'))} |"
        )
    lines += [
        "",
        "ratio = orig_data_size / compr_data_size (payload only; same-filled pages count as "
        "free). memory = what the data made the system use: RSS growth of the server process tree "
        "between start and the end of the fill for processes, mm_stat mem_used_total for kernel "
        "zram (which leaves out its per-slot table sized at disksize, as RSS deltas leave out "
        "what a server allocates at start). bytes/page = memory / stored pages; overhead = "
        "(memory - payload) / pages; stats overhead = (mem_used_total - compr_data_size) / pages "
        "from the system's own stats.",
    ]
    return lines


def _lat(r: dict, key: str) -> str:
    if r.get(key) is None:
        return "-"
    if "read" in r and "write" in r:  # mixed: read/write
        return f"{r['read'][key]:.0f}/{r['write'][key]:.0f}"
    return f"{r[key]:.0f}"

"""The memory section: zramd's real memory next to kernel zram's, on the same
data and the same phases, and the compression ratio against zram's.

Four measurements, each with its targets (met or missed in the report):

churn       zramd (lz4, inline) and kernel zram (lz4) on a fresh device
            each, one after the other, the order alternating over rounds;
            the same fio data (fixed seeds) and phases for both:
              idle; fill FILL bytes at 50% compressible (128 KiB writes);
              random 4 KiB rewrite of as many bytes at 20% compressible;
              random trim of half the pages (each page once); compact;
              trim of the whole device; compact.
            After each phase: compr_data_size, mem_used_total and what the
            data really costs: zramd's VmRSS above its idle VmRSS (the
            nbdkit process, /proc/PID/status), zram's mem_used_total
            (zsmalloc's pages: the kernel's real memory for the data).
mem_limit   zramd with --mem-limit: fill at 50%, rewrite at 80%, then at
            20% compressible (writes past the limit fail with ENOSPC and
            fio goes on), full trim, compact; the peak VmRSS above idle
            (VmHWM, and a 20 ms sampler per phase) against the limit.
footprint   idle VmRSS of a 1 GiB device, plain and with --swap, alone and
            with two clients connected; idle VmRSS at 1 and 4 GiB, whose
            difference is the per-page tables' cost per device page.
sweep       orig/compr_data_size and orig/mem_used_total at fio
            compressibility 0, 10, ..., 90% and on the swap-like corpus
            (bench/corpus.py), zramd and kernel zram lz4, the same device
            size, each point on a trimmed and compacted device.

Compaction is `zramd compact` (zram's `compact` knob); a zramd without it
is reported as such and the compaction targets as missed. Kernel zram
(/dev/zramN, fio libaio direct) is held under --zram-lock while in use; where
there is none, zramd is measured alone and the comparisons say n/a.

Data (results.json "sections"/"memory"): settings, churn (per system: the
rounds' phase records and the median/min/max per phase), mem_limit, footprint,
sweep, targets. Nothing here is locked: one bench thread drives it, plus
the RSS sampler thread, which only appends to its own list.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

from bench import corpus, fill
from bench import fio as bench_fio
from bench.context import Context
from bench.formats import num
from bench.kernel_zram import ZramDevice
from bench.servers import SkipSystem, server_command, server_process, zramd_stats
from bench.stats import spread
from bench.systems import by_name
from zramd import process

MIB = 1 << 20
PAGE_BYTES = 4096
SEED = 20260101
ZRAMD_SYSTEM = "zramd-lz4"  # bench/systems.py: its serve arguments
ZRAM_ALGORITHM = "lz4"

# Targets (the numbers the report judges by)
COMPACTED_RSS_PER_COMPR_MAX = 1.08  # zramd RSS above idle / compr_data_size after compaction
MEM_LIMIT_OVERSHOOT_MAX = 1.05  # peak RSS above idle / mem_limit
TRIMMED_RSS_ABOVE_IDLE_MAX = 8 * MIB  # full trim + compact
METADATA_BYTES_PER_PAGE_MAX = 24
IDLE_RSS_MAX = 32 * MIB  # 1 GiB device
SWAP_RSS_MAX = 48 * MIB
RATIO_TOLERANCE = 0.03  # compression ratio vs kernel zram lz4

CHURN_PHASES = [
    "idle",
    "filled",
    "rewritten",
    "half trimmed",
    "compacted",
    "fully trimmed",
    "trimmed + compacted",
]
# what the churn summary gives per phase (median and spread over rounds)
CHURN_KEYS = (
    "compr_data_size",
    "mem_used_total",
    "memory",
    "rss_above_idle",
    "peak_rss_above_idle",
    "memory_per_compr",
    "pages_compacted",
    "orig_data_size",
)
LIMIT_PHASES = [
    "idle",
    "filled 50%",
    "rewritten 80%",
    "rewritten 20%",
    "fully trimmed",
    "compacted",
]
STAT_KEYS = (
    "orig_data_size",
    "compr_data_size",
    "mem_used_total",
    "pages_compacted",
    "huge_pages",
    "same_pages",
)


def settings(ctx: Context) -> dict:
    quick = ctx.args.quick
    return {
        "disksize_bytes": (128 if quick else 1024) * MIB,
        "fill_bytes": (32 if quick else 512) * MIB,
        "mem_limit_bytes": (24 if quick else 300) * MIB,
        "sweep_bytes": ctx.region_bytes,
        "compressibilities": [0, 50, 90] if quick else list(range(0, 100, 10)),
        "rounds": 1 if quick else max(1, min(ctx.args.rounds, 3)),
        "footprint_rounds": 1 if quick else 3,
    }


# --------------------------------------------------------------------------
# VmRSS over time


class RssSampler:
    """VmRSS of one process every `interval_s`, in a thread; `peak_since(t)`."""

    def __init__(self, pid: int, interval_s: float = 0.02):
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.t0 = time.monotonic()

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = process.status_bytes(self.pid)["VmRSS"]
            except (OSError, KeyError):
                return
            self.samples.append((time.monotonic() - self.t0, rss))
            self._stop.wait(self.interval_s)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def peak_since(self, t: float) -> int | None:
        values = [rss for ts, rss in list(self.samples) if ts >= t]
        return max(values) if values else None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


# --------------------------------------------------------------------------
# fio


def fio(
    target: list[str],
    log: IO[str],
    json_path: Path,
    *,
    rw: str,
    bs: int,
    size: int,
    io_size: int | None = None,
    compress: int | None = None,
    iodepth: int = 16,
    tolerate_errors: bool = False,
    extra: tuple[str, ...] = (),
) -> dict:
    """One fio job; {"seconds", "errors", "iops"}. Fixed seeds: every system
    gets the same data and offsets."""
    cmd = [
        "fio",
        "--name=memory",
        "--output-format=json",
        f"--output={json_path}",
        f"--rw={rw}",
        f"--bs={bs}",
        f"--size={size}",
        f"--iodepth={iodepth}",
        f"--randseed={SEED}",
        "--randrepeat=1",
        *target,
    ]
    if io_size:
        cmd.append(f"--io_size={io_size}")
    if compress is not None:
        cmd.append(f"--buffer_compress_percentage={compress}")
    if tolerate_errors:
        # ENOSPC is fatal to fio unless listed (only EIO and EILSEQ are not)
        cmd += ["--continue_on_error=write", "--ignore_error=,ENOSPC"]
    cmd += list(extra)
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    log.write(f"$ {' '.join(cmd)}\n{out.stdout}{out.stderr}")
    log.flush()
    job = bench_fio.first_job(cmd, out, tolerate_errors)
    errors = int(job.get("total_err") or 0)
    iops = sum(job[d]["iops"] for d in ("read", "write", "trim") if d in job)
    return {"seconds": round(time.monotonic() - t0, 2), "errors": errors, "iops": round(iops)}


# --------------------------------------------------------------------------
# The two systems behind one interface


class ZramdTarget:
    """zramd serve on a Unix socket; memory = nbdkit's VmRSS above idle."""

    kind = "zramd"

    def __init__(self, ctx: Context, name: str, disksize: int, extra: tuple[str, ...] = ()):
        self.ctx = ctx
        self.sock = str(ctx.tmp / f"memory-{name}.sock")
        cmd = server_command(by_name(ZRAMD_SYSTEM), self.sock, disksize, ctx.zramd, extra)
        self.server = server_process(
            cmd, [self.sock], ctx.logs / f"memory-{name}.server.log", control=True
        )
        self.pid = 0
        self.idle_rss = 0
        self.sampler: RssSampler | None = None

    def start(self, sample: bool = True) -> ZramdTarget:
        self.server.start()
        self.pid = process.wait_nbdkit_pid(self.server.proc.pid)
        time.sleep(0.3)
        self.idle_rss = process.status_bytes(self.pid)["VmRSS"]
        if sample:
            self.sampler = RssSampler(self.pid).start()
        return self

    @property
    def fio_target(self) -> list[str]:
        return ["--ioengine=nbd", f"--uri=nbd+unix:///?socket={self.sock}"]

    def stats(self) -> dict:
        return zramd_stats(self.ctx.zramd, self.sock)

    def compact(self) -> str | None:
        """None, or why compaction is not available."""
        out = subprocess.run(
            [self.ctx.zramd, "compact", "--socket", self.sock],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if out.returncode != 0:
            return (out.stderr.strip() or out.stdout.strip()).splitlines()[-1]
        return None

    def memory(self, stats: dict) -> dict:
        st = process.status_bytes(self.pid)
        return {
            "rss": st["VmRSS"],
            "rss_above_idle": st["VmRSS"] - self.idle_rss,
            "hwm": st["VmHWM"],
            "memory": st["VmRSS"] - self.idle_rss,
        }

    def fill_corpus(self, path: str) -> None:
        fill.corpus_over_nbd(self.sock, path, 256 << 10)

    def stop(self) -> None:
        if self.sampler:
            self.sampler.stop()
        self.server.stop()


class ZramTarget:
    """A kernel zram device; memory = mem_used_total (zsmalloc's pages)."""

    kind = "zram"

    def __init__(self, ctx: Context, name: str, disksize: int):
        self.dev = ZramDevice(
            ZRAM_ALGORITHM, disksize, lock_path=getattr(ctx.args, "zram_lock", None)
        )
        self.sampler = None
        self.idle_rss = 0

    def start(self, sample: bool = True) -> ZramTarget:
        self.dev.setup()
        return self

    @property
    def fio_target(self) -> list[str]:
        return ["--ioengine=libaio", "--direct=1", f"--filename={self.dev.dev}"]

    def stats(self) -> dict:
        return self.dev.mm_stat()

    def compact(self) -> str | None:
        (self.dev.sys / "compact").write_text("1")
        return None

    def memory(self, stats: dict) -> dict:
        return {"rss": None, "rss_above_idle": None, "hwm": None, "memory": stats["mem_used_total"]}

    def fill_corpus(self, path: str) -> None:
        fill.corpus_onto_device(self.dev.dev, path, 256 << 10)

    def stop(self) -> None:
        self.dev.teardown()


def make_target(ctx: Context, kind: str, name: str, disksize: int, extra: tuple[str, ...] = ()):
    if kind == "zramd":
        return ZramdTarget(ctx, name, disksize, extra)
    reason = ZramDevice.unavailable()
    if reason:
        raise SkipSystem(reason)
    return ZramTarget(ctx, name, disksize)


def record(target, phase: str, t_phase: float | None, extra: dict | None = None) -> dict:
    stats = target.stats()
    rec = {"phase": phase, **{k: stats.get(k) for k in STAT_KEYS}}
    rec.update(target.memory(stats))
    if target.sampler is not None and t_phase is not None:
        peak = target.sampler.peak_since(t_phase)
        rec["peak_rss_above_idle"] = (
            None if peak is None else max(peak, rec["rss"]) - target.idle_rss
        )
    compr = rec["compr_data_size"]
    rec["memory_per_compr"] = rec["memory"] / compr if compr else None
    # every non-standard counter the store offers (arena blocks, free space...)
    rec["extra_stats"] = {
        k: v
        for k, v in stats.items()
        if type(v) in (int, float)
        and k not in STAT_KEYS
        and any(w in k for w in ("arena", "block", "slot", "frag", "free_bytes", "compact"))
    }
    if extra:
        rec.update(extra)
    return rec


def _rewrite(size: int, compress: int) -> dict:
    """Every byte of the filled region once more, in random 4 KiB writes."""
    return dict(
        rw="randwrite",
        bs=PAGE_BYTES,
        size=size,
        io_size=size,
        compress=compress,
        extra=("--norandommap",),
    )


def churn_phases(fill_bytes: int, disk: int) -> list[tuple[str, dict | str | None]]:
    """CHURN_PHASES with what each does: fio's arguments, "compact" or nothing."""
    actions: list[dict | str | None] = [
        None,
        dict(rw="write", bs=128 << 10, size=fill_bytes, compress=50),
        _rewrite(fill_bytes, 20),
        dict(rw="randtrim", bs=PAGE_BYTES, size=fill_bytes, io_size=fill_bytes // 2),
        "compact",
        dict(rw="trim", bs=1 << 20, size=disk, iodepth=4),
        "compact",
    ]
    return list(zip(CHURN_PHASES, actions, strict=True))


def limit_phases(fill_bytes: int, disk: int) -> list[tuple[str, dict | str | None]]:
    """LIMIT_PHASES with what each does."""
    actions: list[dict | str | None] = [
        None,
        dict(rw="write", bs=128 << 10, size=fill_bytes, compress=50),
        _rewrite(fill_bytes, 80),
        _rewrite(fill_bytes, 20),
        dict(rw="trim", bs=1 << 20, size=disk, iodepth=4),
        "compact",
    ]
    return list(zip(LIMIT_PHASES, actions, strict=True))


def run_phases(
    ctx: Context, target, phases, log: IO[str], label: str, tag: str, tolerate_errors=False
) -> list[dict]:
    """Each phase's action, then its record (record()), with its start on
    the sampler's clock and its duration."""
    recs = []
    for i, (name, action) in enumerate(phases):
        t = target.sampler.now() if target.sampler else None
        t0 = time.monotonic()
        extra: dict = {}
        if action == "compact":
            why = target.compact()
            extra = {"compact_error": why} if why else {}
        elif action is not None:
            json_path = ctx.logs / f"memory.{tag}.{i}.json"
            extra["fio"] = fio(
                target.fio_target, log, json_path, tolerate_errors=tolerate_errors, **action
            )
        rec = record(target, name, t, extra)
        rec["seconds"] = round(time.monotonic() - t0, 2)
        rec["t_start"] = None if t is None else round(t, 3)
        recs.append(rec)
        errs = rec.get("fio", {}).get("errors", 0)
        peak = rec.get("peak_rss_above_idle")
        ctx.progress(
            f"{label}: {name:<20} compr {rec['compr_data_size'] / MIB:7.1f} MiB  "
            f"mem_used_total {rec['mem_used_total'] / MIB:7.1f} MiB  "
            f"{'RSS above idle' if target.kind == 'zramd' else 'memory'} "
            f"{rec['memory'] / MIB:7.1f} MiB"
            + ("" if peak is None else f"  peak {peak / MIB:7.1f} MiB")
            + (f"  ENOSPC x {errs}" if errs else "")
        )
    return recs


# --------------------------------------------------------------------------
# The section


class MemoryExperiments:
    """The measurements; bench/memory_report.py adds the report to make the section."""

    name = "memory"
    title = "Memory: zramd against kernel zram"

    def run(self, ctx: Context) -> dict:
        s = settings(ctx)
        data: dict = {"settings": s, "skipped": {}, "errors": {}}
        kinds = ["zramd", "zram"]
        reason = ZramDevice.unavailable()
        if reason:
            data["skipped"]["zram"] = reason
            ctx.progress(f"memory: kernel zram SKIPPED: {reason}")
            kinds = ["zramd"]
        with open(ctx.logs / "memory.fio.log", "a") as log:
            data["churn"] = self._churn(ctx, s, kinds, log, data)
            data["mem_limit"] = self._guarded(
                ctx, data, "mem_limit", lambda: self._mem_limit(ctx, s, log)
            )
            data["footprint"] = self._guarded(
                ctx, data, "footprint", lambda: self._footprint(ctx, s)
            )
            data["sweep"] = self._guarded(
                ctx, data, "sweep", lambda: self._sweep(ctx, s, kinds, log, data)
            )
        self.derive(data)
        for t in data["targets"]:
            met = "n/a" if t["met"] is None else ("met" if t["met"] else "MISSED")
            ctx.progress(f"memory target: {t['target']}: {t['measured']} (want {t['want']}): {met}")
        return data

    def derive(self, data: dict) -> None:
        """What is computed from the measurements (rerun by --render)."""
        churn = data.get("churn")
        if churn:
            churn["summary"] = summarize_churn(churn["rounds"])
        if data.get("sweep"):
            add_vs_zram(data["sweep"]["rows"])
        data["targets"] = evaluate(data)

    @staticmethod
    def _guarded(ctx: Context, data: dict, part: str, fn):
        try:
            return fn()
        except SkipSystem as e:
            data["skipped"][part] = str(e)
            ctx.progress(f"memory {part}: SKIPPED: {e}")
        except Exception as e:  # one failed part must not cost the others
            data["errors"][part] = f"{type(e).__name__}: {e}"
            ctx.progress(f"memory {part}: FAILED: {e}")
        return None

    # -- churn -------------------------------------------------------------
    def _churn(self, ctx: Context, s: dict, kinds: list[str], log: IO[str], data: dict) -> dict:
        runs: dict[str, list[list[dict]]] = {k: [] for k in kinds}
        for rnd in range(s["rounds"]):
            order = kinds if rnd % 2 == 0 else kinds[::-1]
            for kind in order:
                label = f"memory churn {kind} (round {rnd + 1}/{s['rounds']})"
                try:
                    runs[kind].append(self._churn_once(ctx, s, kind, log, label))
                except SkipSystem as e:
                    data["skipped"][kind] = str(e)
                    ctx.progress(f"{label}: SKIPPED: {e}")
                except Exception as e:
                    data["errors"][f"churn {kind}"] = f"{type(e).__name__}: {e}"
                    ctx.progress(f"{label}: FAILED: {e}")
        return {"rounds": runs}  # summary: derive()

    def _churn_once(self, ctx: Context, s: dict, kind: str, log: IO[str], label: str) -> list[dict]:
        fill_bytes, disk = s["fill_bytes"], s["disksize_bytes"]
        target = make_target(ctx, kind, "churn", disk)
        try:
            target.start()
            return run_phases(
                ctx, target, churn_phases(fill_bytes, disk), log, label, f"{kind}.churn"
            )
        finally:
            target.stop()

    # -- mem_limit ---------------------------------------------------------
    def _mem_limit(self, ctx: Context, s: dict, log: IO[str]) -> dict:
        limit, fill_bytes, disk = s["mem_limit_bytes"], s["fill_bytes"], s["disksize_bytes"]
        target = ZramdTarget(ctx, "limit", disk, ("--mem-limit", str(limit)))
        try:
            target.start()
            phases = limit_phases(fill_bytes, disk)
            label = f"memory mem_limit {limit >> 20} MiB"
            recs = run_phases(ctx, target, phases, log, label, "limit", tolerate_errors=True)
            for rec in recs:
                peak = rec.get("peak_rss_above_idle")
                rec["peak_per_limit"] = None if peak is None else peak / limit
            hwm = process.status_bytes(target.pid)["VmHWM"]
            assert target.sampler is not None
            samples = [
                (round(t, 3), rss - target.idle_rss) for t, rss in target.sampler.samples[::5]
            ]
        finally:
            target.stop()
        return {
            "mem_limit_bytes": limit,
            "idle_rss": target.idle_rss,
            "phases": recs,
            "hwm_above_idle": hwm - target.idle_rss,
            "hwm_per_limit": (hwm - target.idle_rss) / limit,
            "samples": samples,
        }

    # -- footprint ---------------------------------------------------------
    def _footprint(self, ctx: Context, s: dict) -> dict:
        import_nbd = _libnbd()
        variants = [("plain", 1 << 30, ()), ("swap", 1 << 30, ("--swap",))]
        if not ctx.args.quick:  # the per-page tables' idle cost: 4 GiB against 1 GiB
            variants.append(("plain 4G", 4 << 30, ()))
        if os.geteuid() != 0:
            variants = [v for v in variants if v[0] != "swap"]
        values: dict[str, list[int]] = {}
        for rnd in range(s["footprint_rounds"]):
            for name, size, extra in variants:
                target = ZramdTarget(ctx, "footprint", size, extra)
                try:
                    target.start(sample=False)
                    values.setdefault(f"{name} idle", []).append(target.idle_rss)
                    if import_nbd and size == 1 << 30:
                        handles = []
                        for _ in range(2):
                            h = import_nbd.NBD()
                            h.connect_unix(target.sock)
                            h.pread(PAGE_BYTES, 0)
                            handles.append(h)
                        values.setdefault(f"{name} 2 clients", []).append(
                            process.status_bytes(target.pid)["VmRSS"]
                        )
                        for h in handles:
                            h.shutdown()
                finally:
                    target.stop()
            now = ", ".join(f"{k} {v[-1] / MIB:.1f} MiB" for k, v in values.items())
            ctx.progress(f"memory footprint round {rnd + 1}/{s['footprint_rounds']}: {now}")
        out = {k: spread(v) for k, v in values.items()}
        per_page = None
        if values.get("plain idle") and values.get("plain 4G idle"):
            diff = statistics.median(values["plain 4G idle"]) - statistics.median(
                values["plain idle"]
            )
            per_page = diff / ((3 << 30) // PAGE_BYTES)
        return {
            "rss": out,
            "table_bytes_per_device_page": per_page,
            "swap_skipped": None if os.geteuid() == 0 else "--swap needs root",
        }

    # -- sweep -------------------------------------------------------------
    def _sweep(self, ctx: Context, s: dict, kinds: list[str], log: IO[str], data: dict) -> dict:
        size = s["sweep_bytes"]
        corpus_path = None
        try:
            ctx.progress(f"memory sweep: corpus of {size >> 20} MiB in {ctx.args.corpus_dir}")
            corpus_path, corpus_info = corpus.ensure(
                ctx.args.corpus_dir, size, ctx.args.regenerate_corpus
            )
        except Exception as e:  # the fio points still say most of it
            data["errors"]["corpus"] = f"{type(e).__name__}: {e}"
            corpus_info = None
        points = [f"{c}%" for c in s["compressibilities"]] + (["corpus"] if corpus_path else [])
        rows: dict[str, dict[str, dict]] = {p: {} for p in points}
        for kind in kinds:
            try:
                target = make_target(ctx, kind, "sweep", size)
            except SkipSystem as e:
                data["skipped"][f"sweep {kind}"] = str(e)
                continue
            try:
                target.start(sample=False)
                for point in points:
                    rows[point][kind] = _sweep_point(ctx, target, point, size, corpus_path, log)
            finally:
                target.stop()
        return {"size_bytes": size, "points": points, "rows": rows, "corpus": corpus_info}


def _sweep_point(ctx: Context, target, point: str, size: int, corpus_path, log: IO[str]) -> dict:
    """One sweep point: write it, read the counters, then trim and compact
    for the next one."""
    name = f"memory.sweep.{target.kind}"
    if point == "corpus":
        target.fill_corpus(corpus_path)
    else:
        path, compress = ctx.logs / f"{name}.{point[:-1]}.json", int(point[:-1])
        fio(target.fio_target, log, path, rw="write", bs=128 << 10, size=size, compress=compress)
    st = target.stats()
    orig, compr, used = (st[k] for k in ("orig_data_size", "compr_data_size", "mem_used_total"))
    r = {"orig_data_size": orig, "compr_data_size": compr, "mem_used_total": used}
    r |= {
        "ratio_compr": orig / compr if compr else None,
        "ratio_mem": orig / used if used else None,
    }
    r |= {"huge_pages": st.get("huge_pages"), "same_pages": st.get("same_pages")}
    ctx.progress(
        f"memory sweep {target.kind:<5} {point:>6}: orig/compr {num(r['ratio_compr'], '.3f')}  "
        f"orig/mem_used {num(r['ratio_mem'], '.3f')}"
    )
    trim = ctx.logs / f"{name}.trim.json"
    fio(target.fio_target, log, trim, rw="trim", bs=1 << 20, size=size, iodepth=4)
    target.compact()
    return r


def _libnbd():
    try:
        import nbd

        return nbd
    except ImportError:
        return None


# --------------------------------------------------------------------------
# Targets


def mib(v) -> str:
    return "-" if v is None else f"{v / MIB:.1f}"


def mib_spread(s: dict | None) -> str:
    if not s or s.get("median") is None:
        return "-"
    if s["n"] <= 1 or s["max"] - s["min"] < 0.05 * MIB:
        return mib(s["median"])
    return f"{mib(s['median'])} ({mib(s['min'])}-{mib(s['max'])})"


def median_of(spread_or_none):
    return None if not spread_or_none else spread_or_none.get("median")


def phase_row(data: dict, kind: str, phase: str) -> dict | None:
    rows = ((data.get("churn") or {}).get("summary") or {}).get(kind) or []
    return next((r for r in rows if r["phase"] == phase), None)


def summarize_churn(runs: dict) -> dict:
    """Per system, per churn phase: spread() of each of CHURN_KEYS over the
    rounds, and the first compaction error seen."""
    summary = {}
    for kind, rounds in runs.items():
        if not rounds:
            continue
        summary[kind] = []
        for i, phase in enumerate(CHURN_PHASES):
            recs = [r[i] for r in rounds if i < len(r)]
            row = {"phase": phase}
            for key in CHURN_KEYS:
                row[key] = spread([r.get(key) for r in recs])
            row["compact_error"] = next(
                (r.get("compact_error") for r in recs if r.get("compact_error")), None
            )
            summary[kind].append(row)
    return summary


def add_vs_zram(rows: dict) -> None:
    """Each sweep point's zramd ratios over kernel zram's (``*_vs_zram``)."""
    for by_kind in rows.values():
        z, k = by_kind.get("zramd"), by_kind.get("zram")
        for key in ("ratio_compr", "ratio_mem"):
            if z and k and z[key] and k[key]:
                by_kind[f"{key}_vs_zram"] = z[key] / k[key]


def metadata_bytes_per_page(data: dict) -> tuple[float | None, str]:
    """Memory per stored page that is neither payload nor block space, after
    compaction, from the store's own accounting: (mem_used_total -
    arena_block_bytes) / stored pages, the per-page table entries and the
    blocks' bookkeeping."""
    rounds = ((data.get("churn") or {}).get("rounds") or {}).get("zramd") or []
    at = CHURN_PHASES.index("compacted")
    recs = [r[at] for r in rounds if len(r) > at and r[at].get("orig_data_size")]
    if not recs or not all("arena_block_bytes" in r["extra_stats"] for r in recs):
        return None, "not measured"
    v = statistics.median(
        (r["mem_used_total"] - r["extra_stats"]["arena_block_bytes"])
        / (r["orig_data_size"] // PAGE_BYTES)
        for r in recs
    )
    return v, "(mem_used_total - arena_block_bytes) / stored pages"


def evaluate(data: dict) -> list[dict]:
    """Every memory target, met or missed (None: not measured), in the order
    the report lists them."""
    out: list[dict] = []

    def add(target, want, measured, met):
        out.append({"target": target, "want": want, "measured": measured, "met": met})

    # RSS per compressed byte after compaction
    comp, zcomp = phase_row(data, "zramd", "compacted"), phase_row(data, "zram", "compacted")
    ratio = median_of(comp["memory_per_compr"]) if comp else None
    zratio = median_of(zcomp["memory_per_compr"]) if zcomp else None
    what, want = (
        "after compaction, zramd RSS above idle / compr_data_size",
        COMPACTED_RSS_PER_COMPR_MAX,
    )
    if comp and comp.get("compact_error"):
        add(what, f"<= {want}x", f"no compaction: {comp['compact_error']}", False)
    else:
        shown = f"{ratio:.3f}x (kernel zram mem_used_total/compr {num(zratio, '.3f')}x)"
        add(what, f"<= {want}x", *((None, None) if ratio is None else (shown, ratio <= want)))
    # the peak RSS against --mem-limit
    lim = data.get("mem_limit")
    if lim:
        peak = max([lim["hwm_per_limit"]] + [p.get("peak_per_limit") or 0 for p in lim["phases"]])
        add(
            f"peak RSS above idle vs --mem-limit {lim['mem_limit_bytes'] >> 20}M",
            f"<= {MEM_LIMIT_OVERSHOOT_MAX}x",
            f"{peak:.3f}x ({peak * lim['mem_limit_bytes'] / MIB:.0f} MiB)",
            peak <= MEM_LIMIT_OVERSHOOT_MAX,
        )
    # RSS left after a full trim, and metadata per page
    end = phase_row(data, "zramd", "trimmed + compacted")
    if end:
        v = median_of(end["rss_above_idle"])
        lim_end = lim["phases"][-1]["rss_above_idle"] if lim else None
        worst = max((x for x in (v, lim_end) if x is not None), default=None)
        add(
            "full trim + compact: RSS above idle",
            f"<= {TRIMMED_RSS_ABOVE_IDLE_MAX >> 20} MiB",
            None
            if worst is None
            else f"{worst / MIB:.1f} MiB (churn {num(v and v / MIB, '.1f')}, "
            f"mem_limit run {num(lim_end and lim_end / MIB, '.1f')})",
            None if worst is None else worst <= TRIMMED_RSS_ABOVE_IDLE_MAX,
        )
    meta, how = metadata_bytes_per_page(data)
    add(
        "metadata per stored page",
        f"<= {METADATA_BYTES_PER_PAGE_MAX} B",
        None if meta is None else f"{meta:.1f} B, {how}",
        None if meta is None else meta <= METADATA_BYTES_PER_PAGE_MAX,
    )
    # idle RSS, plain and with --swap
    fp = (data.get("footprint") or {}).get("rss") or {}
    for key, limit, label in (
        ("plain idle", IDLE_RSS_MAX, "idle RSS, 1 GiB device"),
        ("swap idle", SWAP_RSS_MAX, "idle RSS with --swap, 1 GiB device"),
        ("swap 2 clients", SWAP_RSS_MAX, "RSS with --swap, 2 clients connected"),
    ):
        sp = fp.get(key)
        if sp and sp["median"] is not None:
            add(label, f"<= {limit >> 20} MiB", f"{mib_spread(sp)} MiB", sp["max"] <= limit)
    return out + _sweep_targets(data)


def _sweep_targets(data: dict) -> list[dict]:
    """The compression ratio against kernel zram, every point. Judged
    one-sided: zramd may not save less memory than zram by more than the
    tolerance; saving more is not a defect (python-lz4 output is a little
    smaller than the kernel's, and zsmalloc puts a handle in front of each
    object). The best point is shown too."""
    out = []
    sweep = data.get("sweep") or {"points": []}
    for key, label in (
        ("ratio_compr_vs_zram", "orig/compr_data_size"),
        ("ratio_mem_vs_zram", "orig/mem_used_total"),
    ):
        devs = {p: sweep["rows"][p][key] for p in sweep["points"] if sweep["rows"][p].get(key)}
        if devs:
            lo, hi = min(devs, key=devs.__getitem__), max(devs, key=devs.__getitem__)
            out.append(
                {
                    "target": f"compression ratio {label} vs kernel zram lz4, every point",
                    "want": f"at most {RATIO_TOLERANCE:.0%} below",
                    "measured": f"lowest {(devs[lo] - 1) * 100:+.1f}% at {lo}, "
                    f"highest {(devs[hi] - 1) * 100:+.1f}% at {hi}",
                    "met": devs[lo] >= 1 - RATIO_TOLERANCE,
                }
            )
    return out

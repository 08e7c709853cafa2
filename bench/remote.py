"""The remote section: the cold tier on a local file against a remote NBD
export (``--backing-uri``, docs/design.md#remote-tier) over a Unix socket,
loopback TCP, TCP with TLS-PSK, and TCP behind a delay.

Targets (``TARGETS``): ``file`` (a backing file, plain: an information
row), ``file-aes`` (the same, ``--backing-encrypt aes-256-gcm``, as the
remote always is: the row every remote is divided by), ``unix`` and
``unix-packed`` (``nbdkit memory`` on a Unix socket; the second with
``--writeback-compressed``), ``tcp``, ``tls`` (``--tls=require`` with a
PSK) and ``delayed`` (TCP, ``DELAY_MS`` on every read and write of the
remote). The delay is ``tc netem`` on a veth pair into a network namespace
where the kernel has sch_netem; where it does not (``netem_reason``),
nbdkit's delay filter in front of the export.

Per round (the order rotates, bench/measure.py), per target, a fresh remote
and a fresh zramd: ``pages`` pages written through NBD (``PAGE_RANDOM_BYTES``
random bytes then zeros: lz4 keeps about a quarter, so packed writeback puts
several in a block), ``zramd idle`` and ``zramd writeback idle`` (writes
them all back; MB/s from its own ``elapsed_s``), then every page read back
once, in order, one 4 KiB read in flight (QD1, libnbd in this process):
read-back MB/s and the p50/p99 of one read of a written-back page, client
side.

The swap mix with the tier active (``SWAP_KINDS``): bench/swap.py's bssplit
jobs, swap-in then swap-out, on a zramd whose whole ``swap_region_bytes``
was filled (128 KiB sequential) and then written back entirely (``idle``,
``writeback idle``) before each job, against the same zramd with no tier
(``none``, pages in RAM), in the same round. Ratios of MB/s to ``none``.

Data (results.json "sections"/"remote"): settings, runs (one per round and
target), swap_jobs, skipped, errors; ``derive`` adds summary, ratios (to
file-aes within a round) and swap_ratios. Single-threaded; the remotes are
processes this section starts and stops.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from bench import fio, measure, plots
from bench import swap as swap_section
from bench.context import Context
from bench.formats import outcome_lines, row, tenths, times, with_spread
from bench.servers import SkipSystem, server_command, zramd_stats
from bench.stats import per_round_ratio, spread
from bench.systems import PAGE_BYTES, System

TARGETS = ("file", "file-aes", "unix", "unix-packed", "tcp", "tls", "delayed")
BASE = "file-aes"
SWAP_KINDS = ("none", "file-aes", "unix", "tcp", "tls", "delayed", "delayed-t4")
# "-t4": the same tier, zramd serve --threads 4: one connection's requests
# wait for the remote four at a time, not one (docs/design.md#remote-tier)
THREADS_SUFFIX, THREADS = "-t4", 4
# The settings (docs/design.md#remote-tier, "Measured"): a delay of about a
# nearby machine's round trip; pages a quarter random, so that lz4 and packed
# writeback have something to pack; a few minutes for the default run.
DELAY_MS = 1
PAGE_RANDOM_BYTES = 1024
PAGES, QUICK_PAGES = 4096, 512
SWAP_REGION_BYTES, QUICK_SWAP_REGION_BYTES = 32 << 20, 8 << 20
SWAP_RUNTIME_MAX_S = 2.0
CHUNK_PAGES = 64
START_TIMEOUT_S = 20.0
ZRAMD = System("zramd-lz4", "zramd", ("--algorithm", "lz4"), "zramd, lz4")
PSK_USER = "bench"


# ----------------------------------------------------------------------
# The remotes


def netem_reason() -> str | None:
    """None where ``tc ... netem`` works in a throwaway namespace; else why not."""
    if os.geteuid() != 0 or not shutil.which("tc") or not shutil.which("ip"):
        return "needs root, ip and tc"
    ns, a, b = f"zrb{os.getpid() % 10000}ns", f"zrb{os.getpid() % 10000}a", "zrbpeer"
    run = subprocess.run
    try:
        if run(["ip", "netns", "add", ns], capture_output=True).returncode:
            return "cannot make a network namespace"
        run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], capture_output=True)
        p = run(
            ["tc", "qdisc", "add", "dev", a, "root", "netem", "delay", f"{DELAY_MS}ms"],
            capture_output=True,
            text=True,
        )
        return None if p.returncode == 0 else (p.stderr.strip() or "tc netem failed")
    finally:
        run(["ip", "link", "del", a], capture_output=True)
        run(["ip", "netns", "del", ns], capture_output=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _psk(workdir: Path) -> Path:
    path = workdir / "remote.psk"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{PSK_USER}:{os.urandom(32).hex()}\n")
    return path


def remote_command(kind: str, workdir: Path, size_bytes: int) -> tuple[list[str], str]:
    """nbdkit's command line for a remote of ``kind`` and the URI zramd uses."""
    pid = workdir / f"remote-{kind}.pid"
    cmd = ["nbdkit", "-f", "-P", str(pid)]
    if kind.startswith("unix"):
        sock = workdir / "remote.sock"
        cmd += ["-U", str(sock)]
        uri = f"nbd+unix:///?socket={sock}"
    else:
        port = _free_port()
        cmd += ["-i", "127.0.0.1", "-p", str(port)]
        uri = f"nbd://127.0.0.1:{port}/"
        if kind == "tls":
            psk = _psk(workdir)
            cmd += ["--tls=require", f"--tls-psk={psk}"]
            uri = f"nbds://{PSK_USER}@127.0.0.1:{port}/?tls-psk-file={psk}"
    if kind == "delayed":
        cmd += ["--filter=delay"]
    cmd += ["memory", str(size_bytes)]
    if kind == "delayed":
        cmd += [f"delay-read={DELAY_MS}ms", f"delay-write={DELAY_MS}ms"]
    return cmd, uri


@contextlib.contextmanager
def remote(ctx: Context, kind: str, size_bytes: int) -> Iterator[str]:
    """A fresh nbdkit memory export of ``kind`` for one round: its URI."""
    if not shutil.which("nbdkit"):
        raise SkipSystem("nbdkit not installed")
    cmd, uri = remote_command(kind, ctx.tmp, size_bytes)
    pid = Path(cmd[3])
    for stale in (pid, ctx.tmp / "remote.sock"):
        stale.unlink(missing_ok=True)
    with open(ctx.logs / f"remote-{kind}.nbdkit.log", "a") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not pid.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nbdkit for {kind} did not start (logs/remote-{kind}*)")
            time.sleep(0.01)
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tier_args(kind: str, ctx: Context, uri: str | None) -> list[str]:
    """zramd serve's options for a tier of ``kind`` (none: no tier)."""
    if kind.endswith(THREADS_SUFFIX):
        return ["--threads", str(THREADS), *tier_args(kind.removesuffix(THREADS_SUFFIX), ctx, uri)]
    if kind == "none":
        return []
    if kind.startswith("file"):
        args = ["--backing-file", str(ctx.tmp / "backing.img")]
        (ctx.tmp / "backing.img").unlink(missing_ok=True)
        return args + (["--backing-encrypt", "aes-256-gcm"] if kind == "file-aes" else [])
    return ["--backing-uri", uri or ""] + (["--writeback-compressed"] if "packed" in kind else [])


@contextlib.contextmanager
def zramd_on(ctx: Context, kind: str, size_bytes: int, label: str) -> Iterator:
    """(server, its socket): a fresh zramd with a tier of ``kind``."""
    with contextlib.ExitStack() as stack:
        uri = None
        if kind not in ("none", "file", "file-aes"):
            uri = stack.enter_context(remote(ctx, kind.removesuffix(THREADS_SUFFIX), size_bytes))
        sock = str(ctx.tmp / "remote-zramd.sock")
        cmd = server_command(ZRAMD, sock, size_bytes, ctx.zramd, tuple(tier_args(kind, ctx, uri)))
        yield stack.enter_context(measure.serving(ctx, cmd, [sock], label)), sock


def _zramd(ctx: Context, *args: str) -> str:
    p = subprocess.run([ctx.zramd or "zramd", *args], capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        raise RuntimeError(f"zramd {args[0]}: {(p.stderr or p.stdout).strip()}")
    return p.stdout


def write_back_all(ctx: Context, sock: str) -> dict:
    """``zramd idle`` then ``zramd writeback idle``: its result (written, elapsed_s)."""
    import json

    _zramd(ctx, "idle", "--socket", sock)
    out = _zramd(ctx, "writeback", "idle", "--socket", sock, "--json")
    return json.loads(out.strip().splitlines()[-1])


# ----------------------------------------------------------------------
# Measuring


def page_data() -> bytes:
    """One page as the section writes it: PAGE_RANDOM_BYTES random, then zeros."""
    return os.urandom(PAGE_RANDOM_BYTES) + bytes(PAGE_BYTES - PAGE_RANDOM_BYTES)


def quantile(sorted_values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of sorted values; None for none."""
    if not sorted_values:
        return None
    rank = math.ceil(round(q * len(sorted_values), 9))  # round: 0.99 * 100 is 99.00...01
    k = min(len(sorted_values) - 1, max(0, rank - 1))
    return sorted_values[k]


def one_run(ctx: Context, kind: str, pages: int, rnd: int) -> dict:
    """One target, one round: write, write back, read back (see the docstring)."""
    import nbd

    size = 2 * pages * PAGE_BYTES
    with zramd_on(ctx, kind, size, f"remote-{kind}-r{rnd}") as (_server, sock):
        h = nbd.NBD()
        h.connect_uri(f"nbd+unix:///?socket={sock}")
        try:
            for first in range(0, pages, CHUNK_PAGES):
                n = min(CHUNK_PAGES, pages - first)
                h.pwrite(b"".join(page_data() for _ in range(n)), first * PAGE_BYTES)
            wb = write_back_all(ctx, sock)
            latencies_s = []
            t0 = time.perf_counter()
            for i in range(pages):
                t = time.perf_counter()
                h.pread(PAGE_BYTES, i * PAGE_BYTES)
                latencies_s.append(time.perf_counter() - t)
            read_s = time.perf_counter() - t0
        finally:
            h.shutdown()
    latencies_s.sort()
    written = wb.get("written") or 0
    elapsed = wb.get("elapsed_s") or 0
    return {
        "target": kind,
        "round": rnd,
        "pages": pages,
        "written": written,
        "writeback_s": elapsed,
        "writeback_mb_s": written * PAGE_BYTES / elapsed / 1e6 if elapsed else None,
        "read_mb_s": pages * PAGE_BYTES / read_s / 1e6,
        "read_p50_ms": quantile(latencies_s, 0.50) * 1e3,
        "read_p99_ms": quantile(latencies_s, 0.99) * 1e3,
        "loadavg_1m": os.getloadavg()[0],
    }


def swap_round(ctx: Context, data: dict, kind: str, rnd: int) -> None:
    """The swap mix on a zramd with a tier of ``kind``, all of it written back before each job."""
    region = data["settings"]["swap_region_bytes"]
    with zramd_on(ctx, kind, region, f"remote-swap-{kind}-r{rnd}") as (server, sock):
        with open(ctx.logs / "remote.fio.log", "a") as log:
            measure.fill(ctx, server, log, f"remote-swap-{kind}-r{rnd}")
        sub = _SwapContext(ctx, region)
        for path, plan in data["swap_plan"].items():
            for op, rw, _ in reversed(swap_section.OPERATIONS):  # swap-in first: all written back
                if op not in plan["bssplit"]:
                    continue
                if kind != "none":
                    write_back_all(ctx, sock)
                backed = zramd_stats(ctx.zramd or "zramd", sock).get("bd_count") or 0
                w = swap_section.workload(path, op, rw, plan["max_bytes"][op])
                label = f"remote-swap-{kind}-{path}-{op}-r{rnd}"
                opts = fio.nbd_target(server.uris[0])
                res = swap_section.job(sub, opts, server, w, plan["bssplit"][op], label)
                keep = ("mb_per_s", "iops", "server_us_per_request")
                job = {"kind": kind, "path": path, "operation": op, "round": rnd}
                data["swap_jobs"].append({**job, "bd_count": backed, **_pick(res, keep)})
                ctx.progress(
                    f"remote swap round {rnd + 1} {kind} {path} {op}: {res['mb_per_s']:.1f} MB/s "
                    f"({backed} pages in the tier at its start)"
                )


def swap_runtime_s(ctx: Context) -> float:
    """Seconds per swap job: --runtime, at most SWAP_RUNTIME_MAX_S."""
    return min(ctx.args.runtime_s, SWAP_RUNTIME_MAX_S)


class _SwapContext:
    """ctx with the swap jobs' region and runtime (swap.job reads ctx.region_bytes
    and ctx.args.runtime_s)."""

    def __init__(self, ctx: Context, region_bytes: int) -> None:
        self.args = argparse.Namespace(**{**vars(ctx.args), "runtime_s": swap_runtime_s(ctx)})
        self.logs, self.region_bytes = ctx.logs, region_bytes
        self.fio_timeout_s = ctx.fio_timeout_s


def _pick(d: dict, keys: tuple) -> dict:
    return {k: d.get(k) for k in keys}


# ----------------------------------------------------------------------
# The section


class RemoteTier:
    name = "remote"
    title = "Remote cold tier"

    def run(self, ctx: Context) -> dict:
        quick = getattr(ctx.args, "quick", False)
        reason = netem_reason()
        data: dict = {
            "settings": {
                "pages": QUICK_PAGES if quick else PAGES,
                "page_random_bytes": PAGE_RANDOM_BYTES,
                "delay_ms": DELAY_MS,
                "delay_by": "tc netem" if reason is None else "nbdkit --filter=delay",
                "netem_reason": reason,
                "swap_region_bytes": QUICK_SWAP_REGION_BYTES if quick else SWAP_REGION_BYTES,
                "runtime_s": swap_runtime_s(ctx),
                "rounds": ctx.args.rounds,
            },
            "runs": [],
            "swap_jobs": [],
            "skipped": {},
            "errors": [],
        }
        if not ctx.zramd:
            data["skipped"]["all"] = "zramd CLI not found"
            return data
        pages = data["settings"]["pages"]
        ctx.progress(
            f"remote: {', '.join(TARGETS)} x {ctx.args.rounds} rounds of {pages} pages; delay "
            f"{DELAY_MS} ms by {data['settings']['delay_by']}"
            + (f" (netem: {reason})" if reason else "")
        )

        def one(kind: str, rnd: int) -> None:
            r = one_run(ctx, kind, pages, rnd)
            data["runs"].append(r)
            ctx.progress(
                f"remote round {rnd + 1} {kind}: writeback {tenths(r['writeback_mb_s'])} MB/s, "
                f"read-back {tenths(r['read_mb_s'])} MB/s, p50 {r['read_p50_ms']:.3f} ms, "
                f"p99 {r['read_p99_ms']:.3f} ms"
            )

        measure.rounds(ctx, data, "remote", list(TARGETS), one)
        self._swap(ctx, data)
        return data

    def _swap(self, ctx: Context, data: dict) -> None:
        mix_path = Path(getattr(ctx.args, "swap_mix", None) or swap_section.DEFAULT_MIX)
        if not mix_path.exists():
            data["skipped"]["swap"] = f"no request mix ({swap_section.shown_path(mix_path)})"
            return
        data["swap_plan"] = swap_section.mix_plan(swap_section.load_mix(mix_path))
        data["swap_mix_file"] = swap_section.shown_path(mix_path)
        measure.rounds(
            ctx, data, "remote swap", list(SWAP_KINDS), lambda k, r: swap_round(ctx, data, k, r)
        )

    def derive(self, data: dict) -> None:
        data["summary"] = summarize(data.get("runs", []))
        data["ratios"] = ratios(data.get("runs", []))
        data["swap_ratios"] = swap_ratios(data.get("swap_jobs", []))

    def markdown(self, data: dict) -> list[str]:
        lines = [f"## {self.title}", ""]
        if "all" in data.get("skipped", {}):
            return lines + [f"Not measured: {data['skipped']['all']}."]
        return lines + describe(data) + tables(data) + outcome_lines(data)

    def plots(self, data: dict, out: Path, title: str) -> list[str]:
        if not data.get("summary"):
            return []
        plots.remote_tier(out / "remote.png", data["summary"], data.get("swap_ratios", []), title)
        return ["remote.png"]

    def summary(self, data: dict) -> list[str]:
        rows = {r["target"]: r for r in data.get("ratios", [])}
        if not rows:
            return []
        parts = [
            f"{t} {with_spread(rows[t]['writeback_mb_s'], times)} writeback, "
            f"{with_spread(rows[t]['read_p50_ms'], times)} read p50"
            for t in TARGETS
            if t in rows
        ]
        return [
            f"- Remote cold tier against the encrypted local file, per round: {'; '.join(parts)}."
        ]


# ----------------------------------------------------------------------
# Deriving and rendering (pure)

METRICS = ("writeback_mb_s", "read_mb_s", "read_p50_ms", "read_p99_ms")


def summarize(runs: list[dict]) -> list[dict]:
    """Per target (in TARGETS order): spread of each metric over the rounds."""
    out = []
    for t in TARGETS:
        mine = [r for r in runs if r["target"] == t]
        if mine:
            out.append({"target": t, **{m: spread([r.get(m) for r in mine]) for m in METRICS}})
    return out


def ratios(runs: list[dict]) -> list[dict]:
    """Per target other than BASE: each metric over BASE's, within each round."""
    base = [r for r in runs if r["target"] == BASE]
    out = []
    for t in TARGETS:
        mine = [r for r in runs if r["target"] == t]
        if t == BASE or not mine or not base:
            continue
        out.append({"target": t, **{m: per_round_ratio(mine, base, key=m) for m in METRICS}})
    return out


def swap_ratios(jobs: list[dict]) -> list[dict]:
    """Per tier kind, path and operation: MB/s over the no-tier zramd's, within each round."""
    out = []
    keys = list(dict.fromkeys((j["path"], j["operation"]) for j in jobs))
    for kind in SWAP_KINDS[1:]:
        for path, op in keys:
            mine = [j for j in jobs if (j["kind"], j["path"], j["operation"]) == (kind, path, op)]
            none = [j for j in jobs if (j["kind"], j["path"], j["operation"]) == ("none", path, op)]
            if mine:
                ratio = per_round_ratio(mine, none, key="mb_per_s")
                mb = spread([j["mb_per_s"] for j in mine])
                out.append(
                    {"kind": kind, "path": path, "operation": op, "ratio": ratio, "mb_s": mb}
                )
    return out


def describe(data: dict) -> list[str]:
    s = data["settings"]
    why = f" (netem unavailable here: {s['netem_reason']})" if s.get("netem_reason") else ""
    return [
        f"The cold tier on a local backing file against a remote `nbdkit memory` export "
        f"(`--backing-uri`, always encrypted): over a Unix socket, loopback TCP, TCP with "
        f"TLS-PSK, and `delayed`, TCP with {s['delay_ms']} ms on every read and write of the "
        f"remote by {s['delay_by']}{why}. `unix-packed` adds `--writeback-compressed`; "
        f"`file` is the plain file, for information; ratios are to `{BASE}`, the encrypted "
        f"file, taken within each round. Per round and target a fresh zramd (lz4) and remote: "
        f"{s['pages']} pages written (synthetic: {s['page_random_bytes']} random bytes, then "
        f"zeros), `zramd idle` and `zramd writeback idle` write them all back (MB/s of 4 KiB "
        f"pages over its own elapsed time; packed writes fewer bytes for them), then every "
        f"page read back once in order, one 4 KiB read in flight: "
        f"read-back MB/s and p50/p99 of one read of a written-back page (client side). All "
        f"on one machine: remote, zramd and client share its cores. Medians (min-max) over "
        f"{s['rounds']} interleaved rounds.",
        "",
    ]


def tables(data: dict) -> list[str]:
    lines = [
        "| target | writeback MB/s | read-back MB/s | read p50 ms | read p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in data.get("summary", []):
        lines.append(row([r["target"], *(with_spread(r[m], _fmt(m)) for m in METRICS)]))
    lines += [
        "",
        f"Ratios to `{BASE}` within each round:",
        "",
        "| target | writeback MB/s | read-back MB/s | read p50 | read p99 |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in data.get("ratios", []):
        lines.append(row([r["target"], *(with_spread(r[m], times) for m in METRICS)]))
    return lines + swap_lines(data)


def swap_lines(data: dict) -> list[str]:
    rows = data.get("swap_ratios") or []
    if not rows:
        return []
    s = data["settings"]
    lines = [
        "",
        f"The swap mix ({data.get('swap_mix_file', 'bench/swap_mix.json')}, bench/swap.py's "
        f"bssplit jobs at iodepth {swap_section.IODEPTH}, {s['runtime_s']:g} s each) with the "
        f"tier active: a zramd whose {s['swap_region_bytes'] >> 20} MiB were filled and then "
        "written back entirely (`zramd idle`, `zramd writeback idle`) right before each job, "
        "swap-in first; so swap-in reads written-back pages and swap-out overwrites them. "
        "zramd runs nbdkit with one request thread per connection (`--threads 1`, the "
        "default), so one connection's swap-in waits for the remote one request at a time; "
        f"`delayed{THREADS_SUFFIX}` is the delayed remote with `zramd serve --threads "
        f"{THREADS}`. MB/s over the same zramd with no tier (pages in RAM, `--threads 1`), "
        "within each round:",
        "",
        "| tier | path | operation | MB/s | ratio to no tier |",
        "|---|---|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            row(
                [
                    r["kind"],
                    r["path"],
                    r["operation"],
                    with_spread(r["mb_s"], tenths),
                    with_spread(r["ratio"], times),
                ]
            )
        )
    return lines


def _fmt(metric: str):
    return tenths if metric.endswith("mb_s") else (lambda v: "-" if v is None else f"{v:.3f}")

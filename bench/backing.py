"""The backing-file encryption section: what encrypting written-back pages
at rest costs (``zramd serve --backing-encrypt``), against the same
writeback without encryption.

Per round and system (plain, aes-256-gcm, chacha20-poly1305; the order
rotates from round to round): a fresh zramd with a backing file in the
run's temporary directory, the region filled (fio data, 128 KiB writes),
every page marked idle and written back with ``zramd writeback idle
--json``: writeback MB/s from the server's own timing of that run
(``elapsed_s``: select, read from RAM, encrypt, pwrite). Then fio 4 KiB
random reads at iodepth 1 over the region, where every page now comes from
the backing file (pread, decrypt, verify): read latency (p50, mean) and
IOPS. The file is in the page cache, so this is the CPU cost of the
cipher, not the disk's. Medians and min-max over rounds, and the per-round
ratio to plain (both halves from the same minute).

Data (results.json "sections"/"backing"): runs (one per round and
system), summary (the spreads), the settings.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bench import measure, plots
from bench.context import Context
from bench.formats import outcome_lines, tenths, times, with_spread
from bench.servers import server_command, zramd_serve_has
from bench.stats import per_round_ratio, spread
from bench.systems import Workload, by_name

SYSTEMS = {
    "plain": [],
    "aes-256-gcm": ["--backing-encrypt", "aes-256-gcm"],
    "chacha20-poly1305": ["--backing-encrypt", "chacha20-poly1305"],
}
READ_QD1 = Workload("randread-4k-qd1", "fio", "randread", 4096, 1)


class BackingEncryption:
    name = "backing"
    title = "Backing file encryption"

    def run(self, ctx: Context) -> dict:
        a = ctx.args
        names = list(SYSTEMS)
        data: dict = {
            "rounds": a.rounds,
            "runtime_s": a.runtime_s,
            "region_bytes": a.region_bytes,
            "systems": names,
            "runs": [],
            "skipped": {},
        }
        if not ctx.zramd or not zramd_serve_has(ctx.zramd, "--backing-encrypt"):
            data["skipped"]["all"] = "this zramd has no --backing-encrypt"
            return data
        ctx.progress(
            f"backing: {len(names)} systems x {a.rounds} rounds (writeback of "
            f"{a.region_bytes >> 20} MiB, then {a.runtime_s:.1f} s of reads)"
        )
        with open(ctx.logs / "backing.fio.log", "a") as log:

            def one(name: str, rnd: int) -> None:
                run = self._one(ctx, name, rnd, log)
                data["runs"].append(run)
                ctx.progress(
                    f"backing round {rnd + 1}/{a.rounds} {name:<18} writeback "
                    f"{run['writeback_mb_s']:7.1f} MB/s, read p50 {run['read_p50_us']:6.1f} "
                    f"µs, {run['read_iops']:7.0f} IOPS"
                )

            measure.rounds(ctx, data, "backing", names, one)
        return data

    def derive(self, data: dict) -> None:
        data["summary"] = summarize(data)

    def _one(self, ctx: Context, name: str, rnd: int, log) -> dict:
        sock = str(ctx.tmp / f"backing-{name}.sock")
        image = ctx.tmp / f"backing-{name}.img"
        extra = ("--backing-file", str(image), *SYSTEMS[name])
        cmd = server_command(by_name("zramd-lz4"), sock, ctx.region_bytes, ctx.zramd, extra)
        with measure.serving(ctx, cmd, [sock], f"backing-{name}") as server:
            measure.fill(ctx, server, log, f"backing-{name}-r{rnd}")
            self._cli(ctx, "idle", "all", "--socket", sock)
            out = self._cli(ctx, "writeback", "idle", "--json", "--socket", sock)
            wb = json.loads(out.splitlines()[-1])
            if wb.get("error") or not wb["written"]:
                raise RuntimeError(f"writeback failed: {wb}")
            res = measure.job(ctx, server, READ_QD1, log, f"backing-{name}-read-r{rnd}")
            return {
                "system": name,
                "round": rnd,
                "pages_written": wb["written"],
                "writeback_s": wb["elapsed_s"],
                "writeback_mb_s": wb["written"] * 4096 / wb["elapsed_s"] / 1e6,
                "read_iops": res["iops"],
                "read_p50_us": res["read"]["p50_us"],
                "read_mean_us": res["read"]["mean_us"],
                "read_p99_us": res["read"]["p99_us"],
                "server_us_per_read": res["server_us_per_request"],
            }

    @staticmethod
    def _cli(ctx: Context, *args: str) -> str:
        out = subprocess.run(
            [ctx.zramd, *args], capture_output=True, text=True, timeout=ctx.fio_timeout_s()
        )
        if out.returncode != 0:
            raise RuntimeError(f"zramd {args[0]} failed: {out.stderr.strip()}")
        return out.stdout

    def markdown(self, data: dict) -> list[str]:
        lines = [
            f"## {self.title}",
            "",
            f"A {data['region_bytes'] >> 20} MiB region filled with fio data, every page written "
            "back (`zramd writeback idle`), then 4 KiB random reads at iodepth 1 that all come "
            "from the backing file (in the page cache: the cipher's CPU cost, not the disk's). "
            f"{data['rounds']} round(s), systems interleaved; median (min-max); "
            '"vs plain": median (min-max) of the per-round ratio.',
            "",
            "| backing file | writeback MB/s | vs plain | read p50 µs | read mean µs | "
            "read IOPS (qd1) | vs plain | server µs/read |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in data["summary"]:
            lines.append(
                f"| {row['system']} | {with_spread(row['writeback_mb_s'], tenths)} | "
                f"{with_spread(row['writeback_vs_plain'], times)} | "
                f"{with_spread(row['read_p50_us'], tenths)} | "
                f"{with_spread(row['read_mean_us'], tenths)} | {with_spread(row['read_iops'])} | "
                f"{with_spread(row['read_iops_vs_plain'], times)} | "
                f"{with_spread(row['server_us_per_read'], tenths)} |"
            )
        return lines + outcome_lines(data)

    def plots(self, data: dict, out: Path, title: str) -> list[str]:
        if not data["summary"]:
            return []
        plots.medians_by_group(
            out / "backing.png",
            [r["system"] for r in data["summary"]],
            {"writeback MB/s": [r["writeback_mb_s"] for r in data["summary"]]},
            "MB/s (median, bars: min-max)",
            "writeback to the backing file",
            title,
        )
        return ["backing.png"]

    def summary(self, data: dict) -> list[str]:
        if not data["summary"]:
            return []
        lines = [
            f"Backing file encryption ({data['rounds']} rounds, median (min-max)):",
            "",
            "| backing file | writeback MB/s | read p50 µs (qd1) |",
            "|---|---:|---:|",
        ]
        for row in data["summary"]:
            lines.append(
                f"| {row['system']} | {with_spread(row['writeback_mb_s'], tenths)} | "
                f"{with_spread(row['read_p50_us'], tenths)} |"
            )
        return lines


def summarize(data: dict) -> list[dict]:
    runs = data["runs"]
    rows = []
    for name in data["systems"]:
        mine = [r for r in runs if r["system"] == name]
        if not mine:
            continue
        row: dict = {"system": name}
        for key in (
            "writeback_mb_s",
            "read_p50_us",
            "read_mean_us",
            "read_iops",
            "server_us_per_read",
        ):
            row[key] = spread([r[key] for r in mine])
        for key, out in (
            ("writeback_mb_s", "writeback_vs_plain"),
            ("read_iops", "read_iops_vs_plain"),
        ):
            row[out] = per_round_ratio(mine, [p for p in runs if p["system"] == "plain"], key)
        rows.append(row)
    return rows

"""The connection scaling section: 4 KiB random reads and writes with 1, 2
and 4 NBD connections (fio jobs, ioengine=nbd, one connection each) at the
same total iodepth, for zramd, the pinned Python null plugin (the ceiling
of any Python plugin), the least lz4 store (that plugin with keep=lz4: what
any Python plugin that compresses each page inline pays) and nbdkit's C
null plugin (the transport's ceiling).

Each round starts every system fresh (zramd's region filled first, so reads
hit stored pages) and runs all its jobs; the order of systems rotates from
round to round, so slow minutes on the shared machine spread over all of
them. Per system, workload and connection count: median and min-max of IOPS
over the rounds, and of the per-round ratio to 1 connection (the steadier
number: both halves of a ratio come from the same few seconds), and the CPU
time per request of server and client, the steadier number on a shared
machine (why: docs/design.md#connections).

Targets (``STORE_TARGETS``): zramd-lz4's 4 KiB IOPS at one connection over
the least lz4 store's, the ratio taken within each round (both halves from
the same few minutes), median and min-max over the rounds: what zramd's
store (accounting, limits, the arena, checksums) costs over a Python list of
lz4 pages. Beside it, informational, in the same rounds: zramd-lz4 and the
least store each over the pinned Python null plugin (the ceiling of any
Python plugin; no store compressing inline reaches it), and the server CPU
µs per request zramd spends beyond the least store
(docs/design.md#a-4-kib-write-step-by-step).

Data (results.json "sections"/"scaling"): jobs (one per round, system,
workload, connections), summary (the spreads), targets, the settings.
"""

from __future__ import annotations

from pathlib import Path

from bench import measure, plots
from bench.context import Context
from bench.formats import met_cell, outcome_lines, tenths, times, with_spread
from bench.formats import row as md_row
from bench.servers import SkipSystem, server_command
from bench.stats import per_round_ratio, spread
from bench.systems import C_CEILING, LZ4_STORE_CEILING, PYTHON_CEILING, by_name, select

SYSTEM_NAMES = ["zramd-lz4", LZ4_STORE_CEILING, PYTHON_CEILING, C_CEILING]
CONNECTIONS = (1, 2, 4)
TOTAL_IODEPTH = 16
WORKLOADS = (measure.RANDREAD_4K, measure.RANDWRITE_4K)
# (workload, at least): zramd-lz4 IOPS / the least lz4 store's at one
# connection, per round.
TARGET_SYSTEM = "zramd-lz4"
STORE_TARGETS = ((measure.RANDWRITE_4K, 0.9), (measure.RANDREAD_4K, 1.0))


class ConnectionScaling:
    name = "scaling"
    title = "Connection scaling"

    def run(self, ctx: Context) -> dict:
        a = ctx.args
        systems = select(a.systems, [by_name(s) for s in SYSTEM_NAMES])
        data: dict = {
            "connections": list(CONNECTIONS),
            "total_iodepth": TOTAL_IODEPTH,
            "rounds": a.rounds,
            "runtime_s": a.runtime_s,
            "systems": [s.name for s in systems],
            "descriptions": {s.name: s.description for s in systems},
            "cores": ctx.cores,
            "jobs": [],
            "skipped": {},
        }
        commands = {}
        for system in systems:
            sock = str(ctx.tmp / f"scaling-{system.name}.sock")
            try:
                commands[system.name] = (
                    server_command(system, sock, a.region_bytes, ctx.zramd),
                    sock,
                )
            except SkipSystem as e:
                data["skipped"][system.name] = str(e)
                ctx.progress(f"scaling {system.name}: SKIPPED: {e}")
        ctx.progress(
            f"scaling: {len(commands)} systems x {len(CONNECTIONS)} connection counts x "
            f"{len(WORKLOADS)} workloads x {a.rounds} rounds of {a.runtime_s:.1f} s"
        )
        with open(ctx.logs / "scaling.fio.log", "a") as log:

            def one(name: str, rnd: int) -> None:
                cmd, sock = commands[name]
                with measure.serving(ctx, cmd, [sock], f"scaling-{name}") as server:
                    if by_name(name).stores:
                        measure.fill(ctx, server, log, f"scaling-{name}-r{rnd}")
                    for w in WORKLOADS:
                        for conns in CONNECTIONS:
                            depth = max(1, TOTAL_IODEPTH // conns)
                            tags = {"system": name, "workload": w.name, "round": rnd}
                            tags |= {"connections": conns, "iodepth_per_connection": depth}
                            measure.recorded(
                                ctx,
                                data,
                                "scaling",
                                server,
                                w,
                                log,
                                tags,
                                numjobs=conns,
                                iodepth=depth,
                            )

            measure.rounds(ctx, data, "scaling", list(commands), one)
        return data

    def derive(self, data: dict) -> None:
        data["summary"] = summarize(data)
        data["targets"] = store_targets(data)

    def markdown(self, data: dict) -> list[str]:
        conns = data["connections"]
        depth = data["total_iodepth"]
        shapes = ", ".join(f"{c} x {max(1, depth // c)}" for c in conns)
        load = spread([j.get("loadavg_1m") for j in data["jobs"]])
        lines = [
            f"## {self.title}",
            "",
            "4 KiB random I/O over 1, 2 and 4 NBD connections (fio `ioengine=nbd`, one "
            f"connection per fio job) at the same total iodepth {depth} ({shapes}); "
            f"{data['rounds']} round(s) of {data['runtime_s']:.1f} s per job, systems "
            'interleaved. Median (min-max) over the rounds; "N vs 1" is the median (min-max) '
            "of the per-round ratio to one connection. The client (fio, one process per "
            "connection) runs on the same cores as the server"
            + (
                f"; 1-minute load average during the jobs {with_spread(load, tenths)}"
                if load["n"]
                else ""
            )
            + ". Where other work loads the machine, IOPS measure how much CPU the client "
            "processes get as much as the server: CPU time per request is the steadier number.",
            "",
            md_row(
                ["system", "workload", *(f"{c} conn IOPS" for c in conns)]
                + [f"{c} vs 1" for c in conns[1:]]
            ),
            "|---|---|" + "---:|" * (2 * len(conns) - 1),
        ]
        for row in data["summary"]:
            iops = [with_spread(row["iops"][str(c)]) for c in conns]
            vs = [with_spread(row["vs_one"][str(c)], times) for c in conns[1:]]
            lines.append(md_row([row["system"], row["workload"], *iops, *vs]))
        lines += [
            "",
            "CPU time per request, µs: server = utime+stime of the server's nbdkit process "
            "(/proc) over the job / requests; client = fio's own CPU time / requests.",
            "",
            md_row(
                ["system", "workload", *(f"server, {c} conn" for c in conns)]
                + [f"client, {c} conn" for c in conns]
            ),
            "|---|---|" + "---:|" * (2 * len(conns)),
        ]
        for row in data["summary"]:
            client = row.get("client_us", {})
            server = [with_spread(row["server_us"][str(c)], tenths) for c in conns]
            cl = [with_spread(client[str(c)], tenths) if str(c) in client else "-" for c in conns]
            lines.append(md_row([row["system"], row["workload"], *server, *cl]))
        lines += ["", *targets_markdown(data)]
        return lines + outcome_lines(data)

    def plots(self, data: dict, out: Path, title: str) -> list[str]:
        if not data["summary"]:
            return []
        groups = [f"{r['system']}\n{r['workload']}" for r in data["summary"]]
        series = {
            f"{c} connection{'s' if c > 1 else ''}": [r["iops"][str(c)] for r in data["summary"]]
            for c in data["connections"]
        }
        plots.medians_by_group(
            out / "scaling.png",
            groups,
            series,
            "IOPS (median, bars: min-max)",
            f"4 KiB random I/O, total iodepth {data['total_iodepth']}",
            title,
        )
        series_cpu = {
            f"{c} connection{'s' if c > 1 else ''}": [
                r["server_us"][str(c)] for r in data["summary"]
            ]
            for c in data["connections"]
        }
        plots.medians_by_group(
            out / "scaling-cpu.png",
            groups,
            series_cpu,
            "server CPU µs per request (median, bars: min-max)",
            "Server CPU per 4 KiB request by connections",
            title,
        )
        return ["scaling.png", "scaling-cpu.png"]

    def summary(self, data: dict) -> list[str]:
        if not data["summary"]:
            return []
        conns = data["connections"]
        load = spread([j.get("loadavg_1m") for j in data["jobs"]])
        lines = [
            f"Connections: 4 KiB random I/O, total iodepth {data['total_iodepth']} split over 1, 2 "
            f"and 4 connections; median (min-max) over {data['rounds']} interleaved rounds; "
            f"client and server share the machine's {data.get('cores', 2)} cores"
            + (f" (1-minute load average {with_spread(load, tenths)})" if load["n"] else "")
            + ". Server µs/request: CPU time of the server's nbdkit process per request.",
            "",
            md_row(
                ["system", "workload", *(f"IOPS, {c} conn" for c in conns)]
                + [f"server µs/req, {c} conn" for c in conns]
            ),
            "|---|---|" + "---:|" * (2 * len(conns)),
        ]
        for row in data["summary"]:
            iops = [with_spread(row["iops"][str(c)]) for c in conns]
            server = [with_spread(row["server_us"][str(c)], tenths) for c in conns]
            name = data["descriptions"].get(row["system"], row["system"])
            lines.append(md_row([name, row["workload"], *iops, *server]))
        targets = targets_markdown(data)
        return lines + ["", *targets] if targets else lines


def summarize(data: dict) -> list[dict]:
    rows = []
    jobs = data["jobs"]
    for system in data["systems"]:
        for w in WORKLOADS:
            mine = [j for j in jobs if j["system"] == system and j["workload"] == w.name]
            if not mine:
                continue
            row: dict = {
                "system": system,
                "workload": w.name,
                "iops": {},
                "vs_one": {},
                "server_us": {},
                "client_us": {},
            }
            for c in data["connections"]:
                at_c = [j for j in mine if j["connections"] == c]
                row["iops"][str(c)] = spread([j["iops"] for j in at_c])
                row["server_us"][str(c)] = spread([j["server_us_per_request"] for j in at_c])
                row["client_us"][str(c)] = spread([j.get("client_us_per_request") for j in at_c])
                one = [x for x in mine if x["connections"] == 1]
                row["vs_one"][str(c)] = per_round_ratio(at_c, one)
            rows.append(row)
    return rows


def store_targets(data: dict) -> list[dict]:
    """One row per ``STORE_TARGETS`` entry: the per-round IOPS ratio of
    TARGET_SYSTEM to LZ4_STORE_CEILING at one connection (median, min-max);
    informational: both over PYTHON_CEILING, and the per-round server CPU
    µs per request zramd spends beyond the least store."""
    jobs = data["jobs"]

    def one_conn(system: str, workload: str) -> dict:
        return {
            j["round"]: j
            for j in jobs
            if j["system"] == system and j["workload"] == workload and j["connections"] == 1
        }

    rows = []
    for w, want in STORE_TARGETS:
        mine, least = one_conn(TARGET_SYSTEM, w.name), one_conn(LZ4_STORE_CEILING, w.name)
        null = one_conn(PYTHON_CEILING, w.name)
        both = sorted(set(mine) & set(least))
        ratio = per_round_ratio(list(mine.values()), list(least.values()))
        extra = spread(
            [
                mine[r]["server_us_per_request"] - least[r]["server_us_per_request"]
                for r in both
                if mine[r].get("server_us_per_request") is not None
                and least[r].get("server_us_per_request") is not None
            ]
        )
        rows.append(
            {
                "target": f"{TARGET_SYSTEM} {w.bs_bytes // 1024} KiB {w.rw} QD{TOTAL_IODEPTH} "
                f"vs {LZ4_STORE_CEILING}",
                "workload": w.name,
                "want": want,
                "ratio": ratio,
                "server_us_beyond": extra,
                "vs_null_plugin": per_round_ratio(list(mine.values()), list(null.values())),
                "least_store_ratio": per_round_ratio(list(least.values()), list(null.values())),
                "met": None if ratio["median"] is None else ratio["median"] >= want,
            }
        )
    return rows


def targets_markdown(data: dict) -> list[str]:
    rows = store_targets(data)
    if not any(r["ratio"]["n"] for r in rows):
        return []
    lines = [
        f"Targets: IOPS of {TARGET_SYSTEM} over the least store that compresses with lz4 "
        f"({LZ4_STORE_CEILING}: each page compressed as zramd-lz4 does and kept in a Python "
        f"list, no accounting, no limits), one connection at iodepth {data['total_iodepth']}; "
        "the ratio is taken within each round, median (min-max) over the rounds. Beside it, "
        f"informational, in the same rounds: zramd-lz4 and the least store over the pinned "
        f"Python null plugin ({PYTHON_CEILING}, the ceiling of any Python plugin), and the "
        "server CPU per request that zramd spends beyond the least store.",
        "",
        "| target | want | measured | met | zramd vs null plugin "
        "| least lz4 store vs null plugin | server µs/request beyond the least store |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['target']} | >= {r['want']:.2f}x | {with_spread(r['ratio'], times)} | "
            f"{met_cell(r['met'])} | {with_spread(r.get('vs_null_plugin', spread([])), times)} "
            f"| {with_spread(r.get('least_store_ratio', spread([])), times)} | "
            f"{with_spread(r['server_us_beyond'], tenths)} |"
        )
    return lines

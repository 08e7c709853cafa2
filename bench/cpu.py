"""The server CPU section: CPU time per 4 KiB request, and what it projects
for a machine with more cores.

zramd (lz4, inline) serves 4 KiB random writes and reads at total iodepth 16
with one connection per instance, for each instance count in INSTANCES that
this zramd can run (``--instances N``, sockets PATH.0 ... PATH.N-1; where the
option is missing only one instance runs and the report says so). Around
each job: utime+stime of the nbdkit processes from /proc (server) and of
fio (client), divided by the requests completed. Systems rotate over rounds
as in the scaling section; medians with min-max spread.

The projection (labelled as such everywhere it is printed): one instance's
Python work holds one GIL, so one instance serves at most about
1e6 / server_us_per_request requests per second of one core; N instances on
N cores, sharing nothing, about N times that with the client elsewhere, or
N * 1e6 / (server + client µs per request) where the client shares the
cores, as it does on the 2-core machine the bench runs on. It ignores what
does not scale (memory bandwidth, the kernel's block layer and swap
round-robin, NBD transport) and is an upper bound, not a measurement
(docs/design.md#connections).

Data (results.json "sections"/"cpu"): jobs, summary, projection, instances
tried, and why an instance count was left out.
"""

from __future__ import annotations

from pathlib import Path

from bench import measure, plots
from bench.context import Context
from bench.formats import kilo, outcome_lines, tenths, with_spread
from bench.servers import server_command, zramd_serve_has
from bench.stats import spread
from bench.systems import by_name

SYSTEM_NAME = "zramd-lz4"
INSTANCES = (1, 2)
TOTAL_IODEPTH = 16
PROJECTED_CORES = (1, 2, 4, 8, 16)
WORKLOADS = (measure.RANDWRITE_4K, measure.RANDREAD_4K)


class ServerCpu:
    name = "cpu"
    title = "Server CPU per request, and a projection"

    def run(self, ctx: Context) -> dict:
        a = ctx.args
        system = by_name(SYSTEM_NAME)
        data: dict = {
            "system": SYSTEM_NAME,
            "description": system.description,
            "total_iodepth": TOTAL_IODEPTH,
            "rounds": a.rounds,
            "runtime_s": a.runtime_s,
            "cores": ctx.cores,
            "jobs": [],
            "instances": [],
            "left_out": {},
        }
        if not ctx.zramd:
            data["left_out"]["all"] = "zramd CLI not found"
            return data
        has_instances = zramd_serve_has(ctx.zramd, "--instances")
        for n in INSTANCES:
            if n > 1 and not has_instances:
                data["left_out"][str(n)] = "this zramd has no `serve --instances`"
            else:
                data["instances"].append(n)
        ctx.progress(
            f"cpu: {SYSTEM_NAME} with {', '.join(map(str, data['instances']))} instance(s) x "
            f"{len(WORKLOADS)} workloads x {a.rounds} rounds of {a.runtime_s:.1f} s"
        )
        with open(ctx.logs / "cpu.fio.log", "a") as log:
            measure.rounds(
                ctx, data, "cpu", data["instances"], lambda n, rnd: _round(ctx, data, n, rnd, log)
            )
        return data

    def derive(self, data: dict) -> None:
        data["summary"] = summarize(data)
        data["projection"] = project(data["summary"])

    def markdown(self, data: dict) -> list[str]:
        load = spread([j.get("loadavg_1m") for j in data["jobs"]])
        lines = [
            f"## {self.title}",
            "",
            f"{data['description']}, 4 KiB random I/O at total iodepth {data['total_iodepth']}, "
            f"one connection per instance; {data['rounds']} round(s) of {data['runtime_s']:.1f} s "
            "per job. Server: utime+stime of the nbdkit process(es) from /proc over the job / "
            "requests; client: fio's own CPU time / requests. Median (min-max) over the rounds. "
            f"**Measured on {data['cores']} cores shared by client and server**"
            + (f" (1-minute load average {with_spread(load, tenths)})." if load["n"] else "."),
            "",
        ]
        for n, why in data.get("left_out", {}).items():
            lines.append(f"- {n} instance(s) not measured: {why}.")
        if data.get("left_out"):
            lines.append("")
        if not data.get("summary"):
            return lines + ["No measurement."]
        lines += [
            "| instances | workload | IOPS | server µs/request | client µs/request |",
            "|---:|---|---:|---:|---:|",
        ]
        for row in data["summary"]:
            lines.append(
                f"| {row['instances']} | {row['workload']} | {with_spread(row['iops'])} | "
                f"{with_spread(row['server_us'], tenths)} | "
                f"{with_spread(row['client_us'], tenths)} |"
            )
        lines += ["", *projection_markdown(data)]
        return lines + outcome_lines(data)

    def plots(self, data: dict, out: Path, title: str) -> list[str]:
        if not data.get("summary"):
            return []
        groups = [f"{r['instances']} instance(s)\n{r['workload']}" for r in data["summary"]]
        series = {
            "server (nbdkit)": [r["server_us"] for r in data["summary"]],
            "client (fio)": [r["client_us"] for r in data["summary"]],
        }
        plots.medians_by_group(
            out / "cpu.png",
            groups,
            series,
            "CPU µs per 4 KiB request (median, bars: min-max)",
            "CPU time per request",
            title,
        )
        return ["cpu.png"]

    def summary(self, data: dict) -> list[str]:
        if not data.get("projection"):
            return []
        return projection_markdown(data)


def _round(ctx: Context, data: dict, n: int, rnd: int, log) -> None:
    """n instances, fresh, filled; each workload at total iodepth TOTAL_IODEPTH."""
    sock = str(ctx.tmp / f"cpu-{n}.sock")
    extra = ("--instances", str(n)) if n > 1 else ()
    sockets = [f"{sock}.{i}" for i in range(n)] if n > 1 else [sock]
    system = by_name(SYSTEM_NAME)
    cmd = server_command(system, sock, ctx.region_bytes * n, ctx.zramd, extra)
    with measure.serving(ctx, cmd, sockets, f"cpu-{n}") as server:
        measure.fill(ctx, server, log, f"cpu-{n}-r{rnd}")
        for w in WORKLOADS:
            tags = {"instances": n, "workload": w.name, "round": rnd}
            measure.recorded(
                ctx, data, "cpu", server, w, log, tags, iodepth=max(1, TOTAL_IODEPTH // n)
            )


def summarize(data: dict) -> list[dict]:
    rows = []
    for n in data["instances"]:
        for w in WORKLOADS:
            mine = [j for j in data["jobs"] if j["instances"] == n and j["workload"] == w.name]
            if mine:
                rows.append(
                    {
                        "instances": n,
                        "workload": w.name,
                        "iops": spread([j["iops"] for j in mine]),
                        "server_us": spread([j["server_us_per_request"] for j in mine]),
                        "client_us": spread([j["client_us_per_request"] for j in mine]),
                    }
                )
    return rows


def project(summary: list[dict]) -> list[dict]:
    """Projected IOPS on N cores from one instance's median CPU per request."""
    rows = []
    for row in summary:
        if row["instances"] != 1 or not row["server_us"]["median"]:
            continue
        server_us = row["server_us"]["median"]
        client_us = row["client_us"]["median"] or 0.0
        for cores in PROJECTED_CORES:
            rows.append(
                {
                    "workload": row["workload"],
                    "cores": cores,
                    "client_elsewhere_iops": cores * 1e6 / server_us,
                    "client_sharing_iops": cores * 1e6 / (server_us + client_us),
                }
            )
    return rows


def projection_markdown(data: dict) -> list[str]:
    proj = data.get("projection") or []
    if not proj:
        return []
    workloads = list(dict.fromkeys(p["workload"] for p in proj))
    lines = [
        "**Projection, not a measurement**: IOPS on N cores with N zramd instances (one per core, "
        "swap striped over them), from one instance's median server CPU time per request "
        f'(measured here on {data["cores"]} cores shared with the client). "client elsewhere" = '
        'N x 1e6 / server µs; "sharing" = N x 1e6 / (server + client µs).',
        "",
        "| cores = instances | "
        + " | ".join(f"{w} client elsewhere | {w} sharing" for w in workloads)
        + " |",
        "|---:|" + "---:|---:|" * len(workloads),
    ]
    for cores in PROJECTED_CORES:
        cells = []
        for w in workloads:
            p = next((x for x in proj if x["workload"] == w and x["cores"] == cores), None)
            cells += [kilo(p and p["client_elsewhere_iops"]), kilo(p and p["client_sharing_iops"])]
        lines.append(f"| {cores} | " + " | ".join(cells) + " |")
    return lines

"""One measured fio job against a running server: IOPS and latency from fio,
plus CPU time per request on both sides.

server_us_per_request = (utime+stime of the server's nbdkit processes after
the job - before) / requests completed; client_us_per_request likewise from
fio's own CPU time. Jobs measured this way run without a ramp, so the CPU
window and fio's request count cover the same requests. /proc counts in
clock ticks (usually 10 ms): a job of a few seconds keeps the rounding
error near 1%.
"""

from __future__ import annotations

import dataclasses
import os
from typing import IO

from bench import fio
from bench.context import Context
from bench.systems import FILL_WORKLOAD, Workload
from zramd.process import ServerProcess


def job(
    ctx: Context,
    server: ServerProcess,
    w: Workload,
    log: IO[str],
    label: str,
    numjobs: int = 1,
    iodepth: int | None = None,
) -> dict:
    """Runs w on every socket of `server` (numjobs connections each)."""
    json_path = ctx.logs / f"{label}.json"
    cmd = fio.job_command(
        [fio.nbd_target(u) for u in server.uris],
        w,
        ctx.region_bytes,
        ctx.args.runtime_s,
        0,
        json_path,
        numjobs=numjobs,
        iodepth=iodepth,
    )
    loadavg_1m = os.getloadavg()[0]
    cpu0 = server.cpu_seconds()
    res = fio.run(cmd, log, timeout_s=ctx.fio_timeout_s())
    server_cpu_s = server.cpu_seconds() - cpu0
    ios = res["ios"] or 0
    res["loadavg_1m"] = loadavg_1m
    res["server_cpu_s"] = round(server_cpu_s, 3)
    res["server_us_per_request"] = server_cpu_s * 1e6 / ios if ios else None
    res["client_us_per_request"] = res["client_cpu_s"] * 1e6 / ios if ios else None
    return res


def fill(ctx: Context, server: ServerProcess, log: IO[str], label: str) -> None:
    """Writes the whole region of every socket once (128 KiB sequential), so
    that reads hit stored pages."""
    json_path = ctx.logs / f"{label}.fill.json"
    w = dataclasses.replace(FILL_WORKLOAD, name=f"{label}.fill")
    cmd = fio.job_command(
        [fio.nbd_target(u) for u in server.uris], w, ctx.region_bytes, 0, 0, json_path
    )
    fio.run(cmd, log, timeout_s=ctx.fio_timeout_s())


RANDWRITE_4K = Workload("randwrite-4k", "fio", "randwrite", 4096, 16)
RANDREAD_4K = Workload("randread-4k", "fio", "randread", 4096, 16)

"""One measured fio job against a running server: IOPS and latency from fio,
plus CPU time per request on both sides; and the interleaved rounds the
sections run them in.

Rounds: every item (a system, an instance count, a tree) runs once per
round on a fresh server, and the order rotates from round to round, so the
slow minutes of a shared machine spread over all of them; a ratio taken
within a round (stats.per_round_ratio) has both halves from the same minute.

server_us_per_request = (utime+stime of the server's nbdkit processes after
the job - before) / requests completed; client_us_per_request likewise from
fio's own CPU time. Jobs measured this way run without a ramp, so the CPU
window and fio's request count cover the same requests. /proc counts in
clock ticks (usually 10 ms): a job of a few seconds keeps the rounding
error near 1%.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import IO

from bench import fio
from bench.context import Context
from bench.formats import tenths
from bench.servers import SkipSystem, server_process
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


def rotated(items: list, rnd: int) -> list:
    """items starting at index rnd (mod their number)."""
    k = rnd % len(items) if items else 0
    return items[k:] + items[:k]


def rounds(ctx: Context, data: dict, section: str, items: list, one: Callable) -> None:
    """one(item, rnd) for every item in each of --rounds rounds, the order
    rotated; a failure is a progress line and an entry in data["errors"],
    and the rest go on."""
    for rnd in range(ctx.args.rounds):
        for item in rotated(items, rnd):
            try:
                one(item, rnd)
            except (RuntimeError, OSError, ValueError, SkipSystem) as e:
                ctx.progress(f"{section} {item} round {rnd + 1}: FAILED: {e}")
                data.setdefault("errors", []).append(f"{item} round {rnd + 1}: {e}")


@contextlib.contextmanager
def serving(ctx: Context, cmd: list[str], sockets: list[str], name: str) -> Iterator[ServerProcess]:
    """A fresh server for one round, logging to logs/NAME.server.log."""
    server = server_process(cmd, sockets, ctx.logs / f"{name}.server.log")
    try:
        yield server.start()
    finally:
        server.stop()


def recorded(
    ctx: Context,
    data: dict,
    section: str,
    server: ServerProcess,
    w: Workload,
    log: IO[str],
    tags: dict,
    **kw,
) -> dict:
    """job() with its result appended to data["jobs"] after ``tags`` (what
    the job was: workload, round, system...), and a progress line."""
    what = [str(v) for k, v in tags.items() if k != "round"]
    res = job(ctx, server, w, log, "-".join([section, *what, f"r{tags['round']}"]), **kw)
    data["jobs"].append({**tags, **res})
    ctx.progress(
        f"{section} round {tags['round'] + 1}/{ctx.args.rounds} {' '.join(what)}: "
        f"{res['iops']:9.0f} IOPS, server {tenths(res['server_us_per_request'])} µs/request, "
        f"client {tenths(res['client_us_per_request'])} µs/request"
    )
    return res

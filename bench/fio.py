"""fio command lines and their results.

One fio run is one measurement. ``job_command`` builds it: global options
first, then one ``--name`` section per target (a list of fio options naming
where the I/O goes: ``--ioengine=nbd --uri=...`` or ``--ioengine=libaio
--filename=/dev/zramN``), each with ``numjobs`` jobs (for ``ioengine=nbd``
each job is one NBD connection). With several sections or jobs,
``--group_reporting`` folds them into one result.

``run`` returns a flat dict: iops, mb_per_s, p50_us/p99_us (whole latency,
submit to completion), ios (requests completed in the timed part), per
direction details, and client_cpu_s (fio's own CPU time, from
RUSAGE_CHILDREN around the run: the bench waits for nothing else meanwhile).
"""

from __future__ import annotations

import json
import resource
import subprocess
import time
from pathlib import Path
from typing import IO

from bench.systems import FIO_DATA_OPTIONS, Workload


def nbd_target(uri: str) -> list[str]:
    return ["--ioengine=nbd", f"--uri={uri}"]


def block_target(dev: str) -> list[str]:
    return ["--ioengine=libaio", "--direct=1", f"--filename={dev}"]


def job_command(
    targets: list[list[str]],
    w: Workload,
    region_bytes: int,
    runtime_s: float,
    ramp_s: float,
    json_path: Path,
    numjobs: int = 1,
    iodepth: int | None = None,
) -> list[str]:
    """fio's command line; `iodepth` (per job) overrides the workload's."""
    cmd = [
        "fio",
        "--output-format=json",
        f"--output={json_path}",
        f"--size={region_bytes}",
        f"--bs={w.bs_bytes}",
        f"--rw={w.rw}",
        f"--iodepth={iodepth or w.iodepth}",
        f"--numjobs={numjobs}",
        # Percentiles of the whole latency (submit to completion): libaio on
        # zram completes inside io_submit, where completion latency alone is ~0.
        "--lat_percentiles=1",
        "--clat_percentiles=0",
    ]
    if len(targets) > 1 or numjobs > 1:
        cmd += ["--group_reporting"]
    if w.rw.startswith("rand"):
        cmd += ["--norandommap", "--randrepeat=0"]
    if w.rwmixread:
        cmd += [f"--rwmixread={w.rwmixread}"]
    if "write" in w.rw or w.rw == "randrw":
        cmd += FIO_DATA_OPTIONS
    if w.fill:
        cmd += ["--end_fsync=1"]
    else:
        cmd += ["--time_based", f"--runtime={int(runtime_s * 1000)}ms"]
        if ramp_s > 0:
            cmd += [f"--ramp_time={int(ramp_s * 1000)}ms"]
    for i, target in enumerate(targets):
        cmd += [f"--name={w.name}" if len(targets) == 1 else f"--name={w.name}.{i}", *target]
    return cmd


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def first_job(cmd: list[str], out: subprocess.CompletedProcess, tolerate_errors=False) -> dict:
    """The first job of fio's JSON output (--output=); RuntimeError with
    fio's last words if it failed (with ``tolerate_errors``, failed I/Os
    that fio went on after are not a failure)."""
    json_path = next(a for a in cmd if a.startswith("--output=")).split("=", 1)[1]
    try:
        text = Path(json_path).read_text()
        job = json.loads(text[text.index("{") :])["jobs"][0]  # nbd may print a line first
    except (OSError, ValueError, KeyError, IndexError) as e:
        raise RuntimeError(
            f"fio failed (rc {out.returncode}): {out.stderr.strip()[-400:]} {e}"
        ) from e
    if (out.returncode != 0 or job.get("error")) and not (tolerate_errors and job.get("total_err")):
        raise RuntimeError(
            f"fio failed (rc {out.returncode}, error {job.get('error')}): "
            f"{out.stderr.strip()[-400:]}"
        )
    return job


def run(cmd: list[str], log: IO[str], timeout_s: float) -> dict:
    """Runs fio; RuntimeError with fio's last words if it failed."""
    t0 = time.monotonic()
    cpu0 = _children_cpu_s()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    client_cpu_s = _children_cpu_s() - cpu0
    log.write(f"$ {' '.join(cmd)}\n{out.stdout}{out.stderr}")
    job = first_job(cmd, out)
    result: dict = {
        "elapsed_s": round(time.monotonic() - t0, 2),
        "usr_cpu": job.get("usr_cpu"),
        "sys_cpu": job.get("sys_cpu"),
        "client_cpu_s": round(client_cpu_s, 3),
    }
    total_iops = total_bw = 0.0
    total_ios = 0
    for direction in ("read", "write"):
        d = job[direction]
        if not d.get("total_ios") and not d.get("io_bytes"):
            continue
        pct = d.get("lat_ns", {}).get("percentile") or d.get("clat_ns", {}).get("percentile", {})
        result[direction] = {
            "iops": d["iops"],
            "bw_bytes": d["bw_bytes"],
            "p50_us": pct.get("50.000000", 0) / 1000,
            "p99_us": pct.get("99.000000", 0) / 1000,
            "mean_us": d.get("lat_ns", {}).get("mean", 0) / 1000,
            "ios": d.get("total_ios"),
        }
        total_iops += d["iops"]
        total_bw += d["bw_bytes"]
        total_ios += d.get("total_ios") or 0
    result["iops"] = total_iops
    result["mb_per_s"] = total_bw / 1e6
    result["ios"] = total_ios
    sides = [result[d] for d in ("read", "write") if d in result]
    result["p50_us"] = max(s["p50_us"] for s in sides) if sides else 0
    result["p99_us"] = max(s["p99_us"] for s in sides) if sides else 0
    return result

"""Ratios against peers measured in the same run, and zramd's targets.

A ratio compares MB/s (= IOPS at equal block size) of the same dataset and
workload. Targets are reported, never asserted: a shared machine's numbers
move too much for a test to judge them.
"""

from __future__ import annotations

from bench.formats import met_cell
from bench.systems import ZRAM_PEER, ZSTD_PEER


def lookup(results: list[dict], system: str, dataset: str, workload: str) -> dict | None:
    for r in results:
        if r["system"] == system and r["dataset"] == dataset and r["workload"] == workload:
            return r
    return None


def add_ratios(data: dict) -> None:
    """vs_kernel_zram / vs_nbdkit_zstd on each result; ratio_vs_kernel_zram
    and memory_vs_nbdkit_zstd on each storage record."""
    results, storage = data["results"], data["storage"]
    for r in results:
        for peer, key in ((ZRAM_PEER, "vs_kernel_zram"), (ZSTD_PEER, "vs_nbdkit_zstd")):
            p = lookup(results, peer, r["dataset"], r["workload"])
            r[key] = r["mb_per_s"] / p["mb_per_s"] if p and p["mb_per_s"] else None
    for s in storage:
        zram = next(
            (x for x in storage if x["system"] == ZRAM_PEER and x["dataset"] == s["dataset"]), None
        )
        s["ratio_vs_kernel_zram"] = (
            s["ratio"] / zram["ratio"] if zram and zram["ratio"] and s["ratio"] else None
        )
        zstd = next(
            (x for x in storage if x["system"] == ZSTD_PEER and x["dataset"] == s["dataset"]), None
        )
        s["memory_vs_nbdkit_zstd"] = (
            s["bytes_per_page"] / zstd["bytes_per_page"]
            if zstd and zstd["bytes_per_page"] and s["bytes_per_page"] is not None
            else None
        )


# (workload, peer, at least, what)
SPEED_TARGETS = [
    ("randwrite-4k-qd16", ZRAM_PEER, 0.6, "4 KiB randwrite qd16 IOPS vs kernel zram"),
    ("randread-4k-qd16", ZRAM_PEER, 0.5, "4 KiB randread qd16 IOPS vs kernel zram"),
    ("randwrite-4k-qd16", ZSTD_PEER, 5.0, "4 KiB randwrite qd16 IOPS vs nbdkit zstd"),
    ("randread-4k-qd16", ZSTD_PEER, 1.3, "4 KiB randread qd16 IOPS vs nbdkit zstd"),
    ("seqwrite-128k", ZSTD_PEER, 1.0, "128 KiB seq write MB/s vs nbdkit zstd"),
]
OVERHEAD_MAX_BYTES_PER_PAGE = 64
RATIO_WITHIN = 0.03
# Asynchronous compression against its inline twin in the same run: 4 KiB
# QD16 write IOPS at least ASYNC_MIN_IOPS_RATIO of inline's, the QD1 4 KiB
# write p50 no worse, and memory beyond the payload (RSS, the queue
# drained) at most ASYNC_MAX_EXTRA_BYTES_PER_PAGE above inline's.
ASYNC_TWINS = {"zramd-lz4-async": "zramd-lz4", "zramd-zstd-async": "zramd-zstd"}
ASYNC_MIN_IOPS_RATIO = 0.9
ASYNC_MAX_EXTRA_BYTES_PER_PAGE = 8


def evaluate(data: dict) -> list[dict]:
    """One row per zramd system and target: want, measured, met (None: not measured)."""
    targets = []
    res, sto = data["results"], data["storage"]

    def ratio(system: str, workload: str, peer: str) -> float | None:
        a, b = lookup(res, system, "fio", workload), lookup(res, peer, "fio", workload)
        return (a["mb_per_s"] / b["mb_per_s"]) if a and b and b["mb_per_s"] else None

    for s in data["systems"]:
        if s["kind"] != "zramd" or s["skipped"]:
            continue
        n = s["name"]
        for workload, peer, want, what in SPEED_TARGETS:
            v = ratio(n, workload, peer)
            targets.append(
                {
                    "system": n,
                    "target": what,
                    "want": f">= {want:.1f}x",
                    "measured": None if v is None else f"{v:.2f}x",
                    "met": None if v is None else v >= want,
                }
            )
        for rec in (x for x in sto if x["system"] == n):
            v = rec["overhead_bytes_per_page"]
            targets.append(
                {
                    "system": n,
                    "target": f"overhead beyond payload, {rec['dataset']} data (RSS)",
                    "want": f"<= {OVERHEAD_MAX_BYTES_PER_PAGE} B/page",
                    "measured": None if v is None else f"{v:.0f} B/page",
                    "met": None if v is None else v <= OVERHEAD_MAX_BYTES_PER_PAGE,
                }
            )
            if n.startswith("zramd-lz4"):
                v = rec.get("ratio_vs_kernel_zram")
                targets.append(
                    {
                        "system": n,
                        "target": f"compression ratio vs kernel zram lz4, {rec['dataset']} data",
                        "want": f"within {RATIO_WITHIN:.0%}",
                        "measured": None if v is None else f"{(v - 1) * 100:+.1f}%",
                        "met": None if v is None else abs(v - 1) <= RATIO_WITHIN,
                    }
                )
        if n in ASYNC_TWINS:
            targets += async_targets(data, n, ASYNC_TWINS[n])
    return targets


def _row(system: str, target: str, want: str, measured: str | None, met: bool | None) -> dict:
    return {"system": system, "target": target, "want": want, "measured": measured, "met": met}


def async_targets(data: dict, name: str, inline: str) -> list[dict]:
    """``name`` (asynchronous compression) against ``inline``, its inline
    twin, in the same run: the rows of ``ASYNC_TWINS``' targets."""
    if not any(s["name"] == inline and not s["skipped"] for s in data["systems"]):
        return []
    res, rows = data["results"], []
    a, b = (lookup(res, x, "fio", "randwrite-4k-qd16") for x in (name, inline))
    v = a["mb_per_s"] / b["mb_per_s"] if a and b and b["mb_per_s"] else None
    rows.append(
        _row(
            name,
            f"4 KiB randwrite qd16 IOPS vs {inline}",
            f">= {ASYNC_MIN_IOPS_RATIO:.1f}x",
            None if v is None else f"{v:.2f}x",
            None if v is None else v >= ASYNC_MIN_IOPS_RATIO,
        )
    )
    a, b = (lookup(res, x, "fio", "randwrite-4k-qd1") for x in (name, inline))
    v = a["p50_us"] / b["p50_us"] if a and b and a.get("p50_us") and b.get("p50_us") else None
    rows.append(
        _row(
            name,
            f"4 KiB randwrite qd1 p50 latency vs {inline}",
            "<= 1.00x",
            None if v is None else f"{v:.2f}x",
            None if v is None else v <= 1.0,
        )
    )
    for rec in (x for x in data["storage"] if x["system"] == name):
        twin = next(
            (
                x
                for x in data["storage"]
                if x["system"] == inline and x["dataset"] == rec["dataset"]
            ),
            None,
        )
        mine = rec.get("overhead_bytes_per_page")
        theirs = twin.get("overhead_bytes_per_page") if twin else None
        extra = None if mine is None or theirs is None else mine - theirs
        rows.append(
            _row(
                name,
                f"memory beyond payload vs {inline}, {rec['dataset']} data (RSS, queue drained)",
                f"<= +{ASYNC_MAX_EXTRA_BYTES_PER_PAGE} B/page",
                None if extra is None else f"{extra:+.0f} B/page",
                None if extra is None else extra <= ASYNC_MAX_EXTRA_BYTES_PER_PAGE,
            )
        )
    return rows


def markdown(targets: list[dict]) -> list[str]:
    if not targets:
        return []
    lines = [
        "## Targets",
        "",
        "Ratios against peers measured in the same run (see the tables above).",
        "",
        "| system | target | want | measured | met |",
        "|---|---|---|---:|---|",
    ]
    for t in targets:
        lines.append(
            f"| {t['system']} | {t['target']} | {t['want']} | {t['measured'] or '-'} "
            f"| {met_cell(t['met'])} |"
        )
    return lines

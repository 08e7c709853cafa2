"""The table `make vm-test` prints at the end: one row per target, the
swap traffic, timings, compression ratio and the memory the server held at
its peak, after swapoff and after the guest's blkdiscard."""

from __future__ import annotations

from vm.result import Result


def _fmt(v: object, unit: str = "") -> str:
    return "-" if v is None else f"{v}{unit}"


def _mib(nbytes: int | None) -> str:
    return "-" if nbytes is None else f"{nbytes / (1 << 20):.1f}"


def report(results: list[Result]) -> str:
    head = [
        "target",
        "ok",
        "pages out",
        "pages in",
        "hog s",
        "total s",
        "swap-in/s",
        "ratio",
        "peak used MiB",
        "used after swapoff MiB",
        "after blkdiscard MiB",
        "pages per instance",
    ]
    rows = []
    for r in results:
        peak = r.peak.get("mem_used_total") if r.peak else None
        if r.server == "zramd":
            swapoff = (r.after_swapoff or {}).get("mem_used_total")
            final = (r.final or {}).get("mem_used_total")
        elif r.server is None and "zram_mm_stat_after_swapoff" in r.guest:
            swapoff = int(str(r.guest["zram_mm_stat_after_swapoff"]).split(",")[2])
            final = None
        else:  # nbdkit memory: allocated (non-hole) bytes as nbdinfo --map sees them
            swapoff, final = r.allocated_after_swapoff_bytes, r.allocated_after_bytes
        rows.append(
            [
                r.target,
                "PASS" if r.ok else "FAIL",
                _fmt(r.pages_out),
                _fmt(r.pages_in),
                _fmt(r.hog_s),
                _fmt(r.elapsed_s),
                _fmt(r.swap_in_rate),
                _fmt(r.ratio),
                _mib(peak),
                _mib(swapoff),
                _mib(final),
                "/".join(map(str, r.instance_pages)) if r.instance_pages else "-",
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]

    def line(cells: list) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False))

    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])

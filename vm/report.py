"""The table `make vm-test` prints at the end: one row per target, the
swap traffic, timings, compression ratio and the memory the server held at
its peak, after swapoff and after the guest's blkdiscard; then how many
pages it held for swap slots the guest had freed (stored pages over the
guest's swap in use, at the peak of stored pages and at most: vm/held.py)
and its peak memory against the guest zram's mem_used_max in the same run
(the guest-zram result nearest in the list: the one of the same round)."""

from __future__ import annotations

from vm import held
from vm.result import Result


def _fmt(v: object, unit: str = "") -> str:
    return "-" if v is None else f"{v}{unit}"


def _whole(v: float | None) -> int | None:
    return None if v is None else round(v)


def _mib(nbytes: int | None) -> str:
    return "-" if nbytes is None else f"{nbytes / (1 << 20):.1f}"


def memory_vs_guest_zram(results: list[Result], i: int) -> float | None:
    """results[i]'s peak mem_used_max over that of the passing guest-zram
    run nearest to it in the list (rounds run every target in turn), or
    None (no such run, or results[i] is not zramd)."""
    if results[i].server != "zramd":
        return None
    zram = [
        (abs(j - i), r)
        for j, r in enumerate(results)
        if r.server is None and r.ok and r.peak_memory.get("mem_used_max_bytes")
    ]
    if not zram:
        return None
    ref = min(zram, key=lambda x: x[0])[1]
    return held.ratio(
        results[i].peak_memory.get("mem_used_max_bytes"), ref.peak_memory["mem_used_max_bytes"]
    )


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
        "stored/swap used at peak",
        "max",
        "mem_used_max MiB",
        "RSS max MiB",
        "mem vs guest zram",
        "B per swap page",
    ]
    rows = []
    for i, r in enumerate(results):
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
                _fmt((r.held or {}).get("peak_held_ratio")),
                _fmt((r.held or {}).get("max_held_ratio")),
                _mib(r.peak_memory.get("mem_used_max_bytes")),
                _mib(r.peak_memory.get("rss_max_bytes")),
                _fmt(memory_vs_guest_zram(results, i)),
                _fmt(_whole(r.peak_memory.get("bytes_per_swap_page"))),
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]

    def line(cells: list) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False))

    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])

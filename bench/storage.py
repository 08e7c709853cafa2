"""Compression ratio and memory per stored page, from whatever a system
exposes: zram's or zramd's mm_stat-style counters (orig_data_size,
compr_data_size, mem_used_total, same_pages, huge_pages) and/or the RSS
growth of the server's process tree over the fill.

The memory a system needs for the data is its RSS growth for processes (it
counts every allocator and interpreter cost), mm_stat's mem_used_total for
the kernel (the slot table sized at disksize is not in it).
"""

from __future__ import annotations

from bench.systems import PAGE_BYTES, System


def record(
    system: System,
    dataset: str,
    stored_bytes: int,
    stats: dict | None = None,
    rss_delta_bytes: int | None = None,
    rss_after_bytes: int | None = None,
) -> dict:
    rec: dict = {"system": system.name, "dataset": dataset}
    orig = stored_bytes
    if stats:
        rec["stats"] = stats
        orig = stats.get("orig_data_size") or stored_bytes
    pages = orig / PAGE_BYTES
    rec["orig_bytes"] = orig
    rec["pages"] = int(pages)
    compr = stats.get("compr_data_size") if stats else None
    mem_stats = stats.get("mem_used_total") if stats else None
    rec["compr_bytes"] = compr
    rec["mem_used_total_bytes"] = mem_stats
    rec["rss_delta_bytes"] = rss_delta_bytes
    rec["rss_after_bytes"] = rss_after_bytes
    if stats:
        rec["same_pages"] = stats.get("same_pages")
        rec["huge_pages"] = stats.get("huge_pages")
    memory = rss_delta_bytes if rss_delta_bytes is not None else mem_stats
    rec["memory_bytes"] = memory
    rec["memory_source"] = (
        "RSS delta" if rss_delta_bytes is not None else ("mem_used_total" if mem_stats else None)
    )
    rec["ratio"] = orig / compr if compr else None
    rec["memory_ratio"] = orig / memory if memory and memory > 0 else None
    rec["bytes_per_page"] = memory / pages if memory is not None and pages else None
    rec["overhead_bytes_per_page"] = (
        (memory - compr) / pages if memory is not None and compr is not None and pages else None
    )
    rec["stats_overhead_bytes_per_page"] = (
        (mem_stats - compr) / pages
        if mem_stats is not None and compr is not None and pages
        else None
    )
    return rec

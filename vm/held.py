"""Swap slots the guest has freed but the server still holds, and the
server's peak memory against the guest's own zram: pure functions over one
run's samples (no I/O, no threads).

A block device hears that a swap slot is free only through discard, and the
kernel discards freed slots only a whole free swap cluster at a time (with
`swapon --discard=pages` or both); it also keeps a swapped-in page's slot
(the swap-cache copy) until swap is half full. So a server stores at least
the guest's swap in use, and every page beyond it is held for a slot the
guest no longer needs. The guest's own zram hears of each slot the moment it
is freed (swap_slot_free_notify): the reference.

Two sample streams, both stamped on the host's clock (``t_s``, seconds since
the run began):

  swap samples    the guest's ZRAMD-SWAP lines, one a second while the hog
                  runs (vm/guest-init.sh), stamped when the host reads them:
                  ``used_kib`` (SwapTotal - SwapFree), ``cached_kib``
                  (SwapCached), with dev=zram ``zram_orig_bytes`` and
                  ``zram_mem_bytes`` (its mm_stat at the same instant)
  server samples  zramd's stats (vm/servers.py StatsSampler, every 2 s and
                  at each hog pass's end): ``orig_data_size``,
                  ``mem_used_total``, ``rss_bytes`` ...

``pair`` matches each server sample with the swap sample nearest in time
(within ``PAIR_WINDOW_S``); ``held_summary`` reads the pairs at the peak of
stored pages. Invariant of a correct server: at every instant stored pages
>= swap in use minus the slots whose write is still in flight, so the VM
test checks ``MIN_STORED_OVER_SWAP_USED`` at the peak.
"""

from __future__ import annotations

PAGE_BYTES = 4096
# Swap samples arrive once a second, server samples every 2 s (each takes a
# `zramd stats` call): the nearest swap sample is at most about half a
# second away; further means a sample went missing and the pair would mix
# two moments.
PAIR_WINDOW_S = 1.5
# The held ratio's maximum is taken over pairs whose swap in use is at least
# this share of the run's largest: near the start and the end of the hog a
# few hundred pages in use make any ratio large and say nothing.
MAX_RATIO_MIN_USED_SHARE = 0.25
# At the peak the server holds at least this share of the guest's swap in
# use: slots are counted as used when the kernel allocates them, before
# their write reaches the server, so a few in-flight pages may be missing.
MIN_STORED_OVER_SWAP_USED = 0.9
# mm_stat's columns as the guest prints them (comma-joined): mem_used_max.
MM_STAT_MEM_USED_MAX = 4


def zram_server_samples(swap_samples: list[dict]) -> list[dict]:
    """dev=zram: the guest's zram0 as the "server", from the swap samples
    themselves (its mm_stat was read in the same instant as /proc/meminfo)."""
    return [
        {
            "t_s": s["t_s"],
            "orig_data_size": s["zram_orig_bytes"],
            "mem_used_total": s.get("zram_mem_bytes"),
        }
        for s in swap_samples
        if isinstance(s.get("zram_orig_bytes"), int)
    ]


def pair(
    server_samples: list[dict], swap_samples: list[dict], window_s: float = PAIR_WINDOW_S
) -> list[dict]:
    """One row per server sample with a swap sample within ``window_s``:
    t_s, stored_pages, swap_used_pages, swap_cached_pages, held_ratio
    (stored over swap in use; None while no swap is in use)."""
    rows = []
    for s in server_samples:
        if "orig_data_size" not in s or "t_s" not in s or not swap_samples:
            continue
        near = min(swap_samples, key=lambda w: abs(w["t_s"] - s["t_s"]))
        if abs(near["t_s"] - s["t_s"]) > window_s:
            continue
        stored = s["orig_data_size"] // PAGE_BYTES
        used = near["used_kib"] * 1024 // PAGE_BYTES
        rows.append(
            {
                "t_s": s["t_s"],
                "stored_pages": stored,
                "swap_used_pages": used,
                "swap_cached_pages": near.get("cached_kib", 0) * 1024 // PAGE_BYTES,
                "held_ratio": round(stored / used, 3) if used > 0 else None,
            }
        )
    return rows


def held_summary(server_samples: list[dict], swap_samples: list[dict]) -> dict | None:
    """The pairs read at the peak of stored pages, and the largest held
    ratio over the pairs with enough swap in use; None without pairs."""
    rows = pair(server_samples, swap_samples)
    if not rows:
        return None
    peak = max(rows, key=lambda r: r["stored_pages"])
    most_used = max(w["used_kib"] for w in swap_samples) * 1024 // PAGE_BYTES
    big = [
        r
        for r in rows
        if r["held_ratio"] is not None
        and r["swap_used_pages"] >= most_used * MAX_RATIO_MIN_USED_SHARE
    ]
    return {
        "pairs": len(rows),
        "peak_t_s": peak["t_s"],
        "peak_stored_pages": peak["stored_pages"],
        "peak_swap_used_pages": peak["swap_used_pages"],
        "peak_swap_cached_pages": peak["swap_cached_pages"],
        "peak_held_ratio": peak["held_ratio"],
        "peak_held_pages": peak["stored_pages"] - peak["swap_used_pages"],
        "max_held_ratio": max((r["held_ratio"] for r in big), default=None),
        "max_swap_used_pages": most_used,
    }


def held_failure(held: dict | None) -> str | None:
    """Why the stored pages at the peak fall short of the swap in use (the
    server lost pages, or the pairing is broken), or None."""
    if held is None:
        return "no server sample paired with a guest swap sample"
    used, stored = held["peak_swap_used_pages"], held["peak_stored_pages"]
    if stored < used * MIN_STORED_OVER_SWAP_USED:
        return (
            f"at the peak the server stored {stored} pages, less than "
            f"{MIN_STORED_OVER_SWAP_USED:.0%} of the guest's {used} pages of swap in use"
        )
    return None


def zramd_peak_memory(samples: list[dict], final: dict | None) -> dict:
    """zramd's peak: mem_used_max as it counts it (its peak of
    mem_used_total; the sampled maximum where the last stats lack it), the
    largest sampled RSS of its processes, and that RSS less the first
    sample's (``rss_growth_max_bytes``: what storing the guest's pages cost
    in real memory, the interpreter and libraries left out)."""
    used = [s["mem_used_total"] for s in samples if isinstance(s.get("mem_used_total"), int)]
    rss = [s["rss_bytes"] for s in samples if s.get("rss_bytes")]
    mem_used_max = (final or {}).get("mem_used_max") or max(used, default=None)
    return {
        "mem_used_max_bytes": mem_used_max,
        "rss_max_bytes": max(rss, default=None),
        "rss_growth_max_bytes": max(rss) - rss[0] if rss else None,
    }


def guest_zram_mem_used_max(guest: dict) -> int | None:
    """The guest zram's mm_stat mem_used_max, from its line after swapoff."""
    for key in ("zram_mm_stat_after_swapoff", "zram_mm_stat_after_hog"):
        fields = str(guest.get(key, "")).split(",")
        if len(fields) > MM_STAT_MEM_USED_MAX and fields[MM_STAT_MEM_USED_MAX].isdigit():
            return int(fields[MM_STAT_MEM_USED_MAX])
    return None


def ratio(num: int | float | None, den: int | float | None) -> float | None:
    """num / den, rounded to 3 places; None when either is missing or den is 0."""
    if num is None or not den:
        return None
    return round(num / den, 3)

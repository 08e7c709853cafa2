"""What one guest run measured, and the checks that judge it.

``Result`` collects the guest's counters (from console events), the
server's stats samples and the failures; ``measure`` derives the swap
traffic, rates, peak and compression ratio; ``check`` appends a failure
for every acceptance rule that does not hold. A run passes when
``failures`` is empty. Plain data, used by one thread.
"""

from __future__ import annotations

import dataclasses

from vm import held as held_slots

PAGE_BYTES = 4096
# zramd-side acceptance: the hog's pages compress to about a third (lz4) and
# one in 16 is same-filled, so anything under 1.5 means compression is off.
MIN_RATIO = 1.5
# Right after swapoff, with `swapon --discard`, what may stay stored: pages
# still swapped out when swapoff began (the initramfs's tmpfs files and
# such: measured 6-10% of the peak orig_data_size with the defaults).
AFTER_SWAPOFF_MAX_FRACTION = 0.25
# After the guest's teardown (blkdiscard of the whole device): no data, bar
# rounding ...
MAX_LEFT_AFTER_TEARDOWN_BYTES = 1 << 20
# Striped instances at equal swap priority: at the peak, every instance
# holds at least this share of the stored pages (2 instances split evenly
# hold 0.5 each; the kernel hands out swap slots in batches of 64 per
# device, so an even split is near, not at, 0.5).
MIN_INSTANCE_SHARE = 0.25


def max_mem_left_after_teardown_bytes(mem_used_max: int = 0) -> int:
    """... and in memory at most the blocks the page arena keeps when they
    empty: each size class's current block, with its bookkeeping, and the
    table slots of the block ids released since (SPARE_ID_BYTES each; at
    most one per block mapped at the peak, and no more blocks were mapped
    than ``mem_used_max`` pays for at the smallest block size)
    (docs/design.md#page-arena-and-memory-accounting; `zramd compact` gives
    those back too)."""
    from zramd.engine.arena import BLOCK_META_BYTES, CLASS_TABLE, SPARE_ID_BYTES

    smallest_block = min(c.block_bytes + BLOCK_META_BYTES for c in CLASS_TABLE)
    return (
        MAX_LEFT_AFTER_TEARDOWN_BYTES
        + sum(c.block_bytes + BLOCK_META_BYTES for c in CLASS_TABLE)
        + SPARE_ID_BYTES * (mem_used_max // smallest_block + 1)
    )


@dataclasses.dataclass
class Result:
    target: str
    server: str | None
    dev: str
    mem_mib: int  # the workload's guest RAM (the 2x check uses it)
    hog_mib: int
    passes: int
    guest_ram_mib: int = 0  # qemu -m: mem_mib, plus room for guest-zram's store
    instances: int = 1  # zramd --instances: guest swap devices at equal priority
    instance_pages: list | None = None  # pages each instance held at the peak
    ok: bool = False
    failures: list = dataclasses.field(default_factory=list)
    elapsed_s: float = 0.0  # qemu start to exit, host clock
    hog_s: float | None = None  # the hog's run, guest clock
    pages_out: int | None = None  # /proc/vmstat pswpout delta over the hog
    pages_in: int | None = None  # pswpin delta over the hog
    pages_in_swapoff: int | None = None  # pswpin during swapoff
    swap_in_rate: float | None = None  # pages_in / hog_s
    swap_out_rate: float | None = None
    ratio: float | None = None  # orig_data_size / compr_data_size at the peak
    peak: dict | None = None  # server stats sample with the largest orig_data_size
    after_swapoff: dict | None = None  # server stats right after swapoff (kernel discards only)
    final: dict | None = None  # server stats after the guest's blkdiscard and power-off
    allocated_after_swapoff_bytes: int | None = None  # nbdinfo --map data bytes (non-zramd)
    allocated_after_bytes: int | None = None
    guest: dict = dataclasses.field(default_factory=dict)  # ZRAMD-RESULT keys
    hog: dict = dataclasses.field(default_factory=dict)  # HOG-RESULT keys
    samples: list = dataclasses.field(default_factory=list)
    discard: str = "both"  # the guest's swapon discard policy (vm/swapon-prio.c)
    device_size: str = ""  # the swap device's size (zramd/nbdkit --size, zram disksize)
    swap_samples: list = dataclasses.field(default_factory=list)  # ZRAMD-SWAP lines, host t_s
    held: dict | None = None  # vm/held.py held_summary: stored pages vs the guest's swap in use
    # peak memory: mem_used_max_bytes (zramd's, or the guest zram's mm_stat),
    # rss_max_bytes (zramd's processes, sampled), bytes_per_swap_page
    # (mem_used_max over the guest's largest swap in use)
    peak_memory: dict = dataclasses.field(default_factory=dict)
    console_log: str = ""
    server_log: str = ""
    # --request-mix: the sizes the guest sent (vm/mix.py path_mix), per
    # operation the requests the stats filter's histogram left out, and the
    # parsed statsfile the mix file sums over rounds
    request_mix: dict | None = None
    request_coverage: dict | None = None
    request_stats: dict | None = None  # vm/mix.py parse_stats(), summed over instances

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def measure(res: Result) -> None:
    g = res.guest
    if "pswpout_after" in g and "pswpout_before" in g:
        res.pages_out = g["pswpout_after"] - g["pswpout_before"]
        res.pages_in = g["pswpin_after"] - g["pswpin_before"]
    if "pswpin_swapoff" in g and "pswpin_after" in g:
        res.pages_in_swapoff = g["pswpin_swapoff"] - g["pswpin_after"]
    if "hog_end_s" in g and "hog_start_s" in g:
        res.hog_s = round(g["hog_end_s"] - g["hog_start_s"], 2)
        if res.hog_s > 0 and res.pages_in is not None:
            res.swap_in_rate = round(res.pages_in / res.hog_s)
            res.swap_out_rate = round(res.pages_out / res.hog_s)
    with_data = [s for s in res.samples if s.get("orig_data_size", 0) > 0]
    if with_data:
        res.peak = max(with_data, key=lambda s: s["orig_data_size"])
        if res.peak.get("compr_data_size"):
            res.ratio = round(res.peak["orig_data_size"] / res.peak["compr_data_size"], 2)
        if res.peak.get("per_instance"):
            res.instance_pages = [
                s["orig_data_size"] // PAGE_BYTES for s in res.peak["per_instance"]
            ]
    _measure_held(res)


def _measure_held(res: Result) -> None:
    """Stored pages against the guest's swap in use, and peak memory."""
    if res.server is None:  # the guest's own zram, sampled by the guest
        res.held = held_slots.held_summary(
            held_slots.zram_server_samples(res.swap_samples), res.swap_samples
        )
        res.peak_memory = {
            "mem_used_max_bytes": held_slots.guest_zram_mem_used_max(res.guest),
            "rss_max_bytes": None,
        }
    elif res.server == "zramd":
        # the samples taken while the hog ran (not those after swapoff)
        during = [s for s in res.samples if s.get("label") in ("periodic", "pass-end")]
        res.held = held_slots.held_summary(during, res.swap_samples)
        res.peak_memory = held_slots.zramd_peak_memory(res.samples, res.final)
    if res.held and res.peak_memory.get("mem_used_max_bytes"):
        # the guest zram's guest has more RAM and swaps fewer pages: per page
        # of swap in use the two stores compare like for like
        res.peak_memory["bytes_per_swap_page"] = held_slots.ratio(
            res.peak_memory["mem_used_max_bytes"], res.held["max_swap_used_pages"]
        )


def check(res: Result, min_ratio: float = MIN_RATIO) -> None:
    f = res.failures
    g, h = res.guest, res.hog
    if g.get("done_ok") != 1:
        f.append("guest did not finish its scenario (no ZRAMD-DONE ok=1)")
    if not h:
        f.append("hog printed no result")
    elif h.get("ok") != 1 or h.get("bad_pages") != 0:
        f.append(
            f"verification failed: {h.get('bad_pages')} bad pages, {h.get('bad_bytes')} bad bytes"
        )
    if g.get("hog_rc") not in (0, None) and h.get("ok") == 1:
        f.append(f"hog exited with status {g.get('hog_rc')}")
    if res.pages_out is None:
        f.append("no swap counters from the guest")
    else:
        ram_pages = res.mem_mib * (1 << 20) // PAGE_BYTES
        if res.pages_out < 2 * ram_pages:
            f.append(
                f"only {res.pages_out} pages swapped out, less than twice the guest's RAM "
                f"({2 * ram_pages} pages)"
            )
        if res.pages_in <= 0:
            f.append("no page was swapped in")
    if res.server != "zramd":
        return
    if res.instances > 1:
        _check_striping(res)
    why = held_slots.held_failure(res.held)
    if why:
        f.append(why)
    # zramd's side.
    if res.peak is None:
        f.append("zramd never reported orig_data_size > 0 while the guest swapped")
    else:
        if res.ratio is None or res.ratio < min_ratio:
            f.append(f"compression ratio {res.ratio} below {min_ratio}")
        if not res.peak.get("same_pages"):
            f.append("zramd stored no same-filled page (the hog writes one page in 16 same-filled)")
    if g.get("done_ok") != 1:
        return  # the checks below judge the end of a finished scenario
    last = res.final
    if last is None:
        f.append("no zramd stats after the run")
        return
    # Reads: the guest swapped pages in (checked above) and they can only
    # have come from zramd; where zramd counts requests, check its side too.
    for key in ("num_reads", "num_writes", "num_discards"):
        if key in last and not last[key]:
            f.append(f"zramd {key}=0 after the run")
    for key in ("failed_reads", "failed_writes", "invalid_io"):
        if last.get(key):
            f.append(f"zramd {key}={last[key]}")
    _check_discards(res, last)


def _check_discards(res: Result, last: dict) -> None:
    """zramd gave its memory back: after swapoff, and after the teardown."""
    f = res.failures
    # The kernel's own discards (swapon --discard): slots freed while swap is
    # on (the hog exiting) are discarded, so by the end of swapoff zramd must
    # have freed pages and given back most of its peak. Slots still in use
    # when swapoff starts are read back but not discarded (swapoff clears
    # SWP_WRITEOK first): that remainder is what the blkdiscard teardown is for.
    # (notify_free alone proves little: swapon's discard of the whole device
    # already counts every page.)
    a = res.after_swapoff
    if a is None:
        f.append("no zramd stats right after swapoff")
    elif res.peak is not None:
        if a.get("notify_free", 0) <= res.peak.get("notify_free", 0):
            f.append(
                f"zramd freed no page between the peak and swapoff (notify_free "
                f"{res.peak.get('notify_free')} -> {a.get('notify_free')}): discards did not arrive"
            )
        if a.get("orig_data_size", 0) > res.peak["orig_data_size"] * AFTER_SWAPOFF_MAX_FRACTION:
            f.append(
                f"after swapoff zramd still holds orig_data_size={a.get('orig_data_size')}, more "
                f"than {AFTER_SWAPOFF_MAX_FRACTION:.0%} of its peak {res.peak['orig_data_size']}: "
                f"the kernel's discards did not return the memory"
            )
    for key, most in (
        ("orig_data_size", MAX_LEFT_AFTER_TEARDOWN_BYTES),
        (
            "mem_used_total",
            max_mem_left_after_teardown_bytes(last.get("mem_used_max", 0)) * max(1, res.instances),
        ),
    ):
        if last.get(key, 0) > most:
            f.append(
                f"after the guest discarded the whole device zramd still has {key}={last[key]} "
                f"(> {most})"
            )


def _check_striping(res: Result) -> None:
    """Striped instances: the guest enabled one swap device per instance,
    all at one priority, and the kernel's round-robin gave every instance a
    fair share of the pages (docs/design.md#scaling-past-one-core)."""
    f = res.failures
    prios = {k: v for k, v in res.guest.items() if k.startswith("swap_prio_")}
    if len(prios) != res.instances:
        f.append(f"{len(prios)} swap devices in the guest, expected {res.instances}: {prios}")
    elif len(set(prios.values())) != 1:
        f.append(f"swap priorities differ, so the kernel does not stripe: {prios}")
    pages = res.instance_pages
    if not pages or len(pages) != res.instances:
        f.append(f"no per-instance stats at the peak for {res.instances} instances: {pages}")
        return
    total = sum(pages)
    for i, n in enumerate(pages):
        if total == 0 or n < total * MIN_INSTANCE_SHARE:
            f.append(
                f"instance {i} held {n} of {total} pages at the peak, less than "
                f"{MIN_INSTANCE_SHARE:.0%}: swap was not striped (pages per instance {pages})"
            )

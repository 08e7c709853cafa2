"""PNG charts for the report (matplotlib with the Agg backend, imported only
when a chart is drawn: a bench without matplotlib still writes its tables).

Each function takes a section's data, the output directory and a title
line (machine and mode), writes its files and returns their names.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def matrix(data: dict, out: Path, title: str) -> list[str]:
    """iops.png (4 KiB rows), throughput.png (large requests), storage.png."""
    from bench.targets import lookup

    plt = _pyplot()
    systems = [s["name"] for s in data["systems"] if not s["skipped"]]
    results = data["results"]
    # tab20 keeps up to 20 systems apart (the default cycle repeats after 10)
    palette = plt.get_cmap("tab20").colors
    colors = {n: palette[i % len(palette)] for i, n in enumerate(systems)}
    written: list[str] = []

    def grouped(
        path: str,
        groups: list[tuple[str, str]],
        value: Callable[[dict], float],
        ylabel: str,
        heading: str,
    ) -> None:
        fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(groups) + 4), 5.5))
        width = 0.8 / max(1, len(systems))
        for i, name in enumerate(systems):
            xs, ys = [], []
            for g, (dataset, workload) in enumerate(groups):
                r = lookup(results, name, dataset, workload)
                if r and value(r):
                    xs.append(g - 0.4 + width * (i + 0.5))
                    ys.append(value(r))
            ax.bar(xs, ys, width, label=name, color=colors[name])
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(
            [f"{w}\n({d} data)" for d, w in groups], rotation=30, ha="right", fontsize=8
        )
        ax.set_ylabel(ylabel)
        ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3, which="both")
        ax.set_title(f"{heading}: {title}", fontsize=10)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        fig.savefig(out / path, dpi=110)
        plt.close(fig)
        written.append(path)

    small: list[tuple[str, str]] = []
    large: list[tuple[str, str]] = []
    for r in results:
        key = (r["dataset"], r["workload"])
        group = small if r["bs_bytes"] == 4096 else large
        if key not in group:
            group.append(key)
    if small:
        grouped("iops.png", small, lambda r: r["iops"], "IOPS (log scale)", "4 KiB random I/O")
    if large:
        grouped(
            "throughput.png", large, lambda r: r["mb_per_s"], "MB/s (log scale)", "Large requests"
        )
    if data["storage"]:
        _storage(plt, data, systems, out, title)
        written.append("storage.png")
    return written


def _storage(plt, data: dict, systems: list[str], out: Path, title: str) -> None:
    storage = data["storage"]
    datasets = sorted({s["dataset"] for s in storage})
    dcolors = {d: f"C{i}" for i, d in enumerate(datasets)}
    names = [n for n in systems if any(s["system"] == n for s in storage)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.5))
    width = 0.8 / max(1, len(datasets))
    for i, d in enumerate(datasets):
        xs, mem_ratio, xr, payload_ratio, xb, payload, overhead = [], [], [], [], [], [], []
        for k, n in enumerate(names):
            s = next((x for x in storage if x["system"] == n and x["dataset"] == d), None)
            if not s:
                continue
            x = k - 0.4 + width * (i + 0.5)
            if s["memory_ratio"]:
                xs.append(x)
                mem_ratio.append(s["memory_ratio"])
            if s["ratio"]:
                xr.append(x)
                payload_ratio.append(s["ratio"])
            if s["bytes_per_page"] is not None:
                xb.append(x)
                if s["compr_bytes"] is not None and s["pages"]:
                    pay = min(s["compr_bytes"] / s["pages"], s["bytes_per_page"])
                else:
                    pay = s["bytes_per_page"]
                payload.append(pay)
                overhead.append(s["bytes_per_page"] - pay)
        ax1.bar(xs, mem_ratio, width, color=dcolors[d], label=f"{d} data: stored / memory used")
        ax1.scatter(
            xr,
            payload_ratio,
            marker="_",
            s=400,
            color="black",
            zorder=3,
            label="payload ratio (orig / compr_data_size)" if i == 0 else None,
        )
        ax2.bar(
            xb, payload, width, color=dcolors[d], label=f"{d} data: payload (all, where unknown)"
        )
        ax2.bar(
            xb,
            overhead,
            width,
            bottom=payload,
            color=dcolors[d],
            alpha=0.45,
            hatch="//",
            label=f"{d} data: overhead beyond payload",
        )
    ax2.axhline(4096, color="gray", lw=0.8, ls=":")
    for ax in (ax1, ax2):
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    ax1.set_ylabel("compression ratio")
    ax2.set_ylabel("bytes of memory per stored 4 KiB page")
    ax1.set_title("Compression ratio", fontsize=10)
    ax2.set_title("Memory per stored page (RSS growth; mm_stat for kernel zram)", fontsize=10)
    fig.suptitle(f"Storage: {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "storage.png", dpi=110)
    plt.close(fig)


def medians_by_group(
    path: Path,
    groups: list[str],
    series: dict[str, list[dict]],
    ylabel: str,
    heading: str,
    title: str,
) -> None:
    """Grouped bars of medians with min-max error bars.

    series: label -> one stats.spread() dict per group (None entries skipped).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(groups) + 4), 5.5))
    _grouped_spread_bars(ax, list(series.items()))
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"{heading}: {title}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def vm_swap(path: Path, summary: list[dict], ratios: list[dict], title: str) -> None:
    """The vm section: the hog's swap time per target (median, min-max
    bars, colored by who stores the pages) beside the per-round ratios."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.5))
    servers = list(dict.fromkeys(r["server"] for r in summary))
    rows = [r for r in summary if r["hog_s"]["median"] is not None]
    for i, r in enumerate(rows):
        s = r["hog_s"]
        ax1.bar(
            i,
            s["median"],
            0.7,
            yerr=[[s["median"] - s["min"]], [s["max"] - s["median"]]],
            capsize=3,
            color=f"C{servers.index(r['server'])}",
            label=r["server"] if r["server"] not in [x["server"] for x in rows[:i]] else None,
        )
    ax1.set_xticks(range(len(rows)))
    ax1.set_xticklabels([r["target"] for r in rows], rotation=25, ha="right", fontsize=8)
    ax1.set_ylabel("hog swap time, s (median, bars: min-max)")
    ax1.set_title("The hog's time through swap", fontsize=10)
    ax1.grid(axis="y", alpha=0.3)
    ax1.legend(fontsize=8)
    _ratio_bars(
        ax2,
        [r for r in ratios if r["ratio"]["median"] is not None],
        lambda r: f"{r['numerator']} / {r['denominator']}",
        lambda r: "C7",
        "hog-time ratio within a round (median, bars: min-max)",
        "Ratios (below 1: the first is faster)",
    )
    fig.suptitle(f"Swap in a VM guest: {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _grouped_spread_bars(ax, series: list) -> None:
    """Bars in groups: ``series`` is ``[(label, [spread or None per group])]``,
    one colour per label, each bar its median with a min-max error bar."""
    width = 0.8 / max(1, len(series))
    for i, (label, spreads) in enumerate(series):
        xs, ys, lo, hi = [], [], [], []
        for g, s in enumerate(spreads):
            if s is None or s["median"] is None:
                continue
            xs.append(g - 0.4 + width * (i + 0.5))
            ys.append(s["median"])
            lo.append(s["median"] - s["min"])
            hi.append(s["max"] - s["median"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=label, color=f"C{i}")


def _ratio_bars(ax, rows: list[dict], label, color, xlabel: str, title: str, log: bool = False):
    """Horizontal bars of per-round ratios (``row["ratio"]``: median, min,
    max), a dotted line at 1, one labelled row each, first at the top."""
    for i, r in enumerate(rows):
        s = r["ratio"]
        ax.barh(
            i,
            s["median"],
            0.6,
            xerr=[[s["median"] - s["min"]], [s["max"] - s["median"]]],
            capsize=3,
            color=color(r),
        )
    ax.axvline(1.0, color="black", lw=0.8, ls=":")
    if log:
        ax.set_xscale("log")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([label(r) for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)


def cold_series(path: Path, data: dict, title: str) -> None:
    """The cold section: the policy server's memory over the run (beside
    kernel zram's and the no-policy server's), and its promotion rate
    against the target, with the cold age the controller chose."""
    plt = _pyplot()
    samples = data["samples"]
    ts = [s["t_s"] for s in samples]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    ax1.plot(ts, [s["memory_bytes"] / 2**20 for s in samples], "o-", label="zramd, cold policy")
    zram = (data.get("zram") or {}).get("mem_used_total")
    if zram:
        ax1.axhline(zram / 2**20, color="C3", ls="--", label="kernel zram lz4")
    plain = (data.get("plain_end") or {}).get("memory_bytes")
    if plain:
        ax1.axhline(plain / 2**20, color="C2", ls=":", label="zramd, no policy (end)")
    ax1.set_xlabel("s since the trace began")
    ax1.set_ylabel("memory, MiB (RSS above idle; zram: mem_used_total)")
    ax1.set_ylim(bottom=0)
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    ax1.set_title("Memory", fontsize=10)
    ax2.plot(ts, [s["promotion_rate_pct_min"] for s in samples], "o-", color="C1", label="rate")
    ax2.axhline(data["settings"]["target_pct_min"], color="black", ls="--", label="target")
    ax2.set_xlabel("s since the trace began")
    ax2.set_ylabel("promotions, % of stored pages per minute")
    ax2.grid(alpha=0.3)
    age = ax2.twinx()
    age.plot(ts, [s["cold_age_s"] for s in samples], "s:", color="C4", label="cold age")
    age.set_ylabel("cold age, s")
    lines = ax2.get_legend_handles_labels()
    more = age.get_legend_handles_labels()
    ax2.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8)
    ax2.set_title("Promotion rate and cold age", fontsize=10)
    fig.suptitle(f"Cold pages: {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def remote_tier(path: Path, summary: list[dict], swap_ratios: list[dict], title: str) -> None:
    """The remote section: writeback and read-back MB/s per target, the
    p50/p99 of a read of a written-back page (log scale), and the swap
    mix's MB/s with the tier active over no tier (medians, bars: min-max)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.5))
    names = [r["target"] for r in summary]

    def bars(ax, keys: list[tuple[str, str]]) -> None:
        _grouped_spread_bars(ax, [(label, [r[key] for r in summary]) for key, label in keys])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=25, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3, which="both")
        ax.legend(fontsize=8)

    bars(axes[0], [("writeback_mb_s", "writeback"), ("read_mb_s", "read-back, QD1")])
    axes[0].set_ylabel("MB/s")
    axes[0].set_title("Writeback and read-back", fontsize=10)
    bars(axes[1], [("read_p50_ms", "p50"), ("read_p99_ms", "p99")])
    axes[1].set_yscale("log")
    axes[1].set_ylabel("ms per 4 KiB read of a written-back page (log scale)")
    axes[1].set_title("Read latency, client side", fontsize=10)
    _ratio_bars(
        axes[2],
        [r for r in swap_ratios if r["ratio"]["median"] is not None],
        lambda r: f"{r['kind']} {r['path']} {r['operation']}",
        lambda r: "C2" if r["operation"] == "swap-in" else "C1",
        "MB/s, tier active / no tier, within a round (log scale)",
        "Swap mix with the tier active",
        log=True,  # swap-in from a remote is a few % of no tier, swap-out near 1
    )
    fig.suptitle(f"Remote cold tier: {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""The memory section's report: results.md tables, README lines and charts
from the data bench/memory.py measured (results.json "sections"/"memory").

Pure functions of that data, so --render redraws them from a finished run.
"""

from __future__ import annotations

from pathlib import Path

from bench.formats import met_cell, num
from bench.memory import (
    CHURN_PHASES,
    MEM_LIMIT_OVERSHOOT_MAX,
    MIB,
    ZRAMD_SYSTEM,
    MemoryExperiments,
    median_of,
    mib,
    mib_spread,
    phase_row,
)
from bench.systems import by_name


class Memory(MemoryExperiments):
    """The registered section: the experiments plus their report."""

    def markdown(self, data: dict) -> list[str]:
        return markdown(data)

    def plots(self, data: dict, out: Path, title: str) -> list[str]:
        return plots(data, out, title)

    def summary(self, data: dict) -> list[str]:
        return summary(data)


def _x(s: dict | None) -> str:
    if not s or s.get("median") is None:
        return "-"
    if s["n"] <= 1 or s["max"] - s["min"] < 0.005:
        return f"{s['median']:.2f}x"
    return f"{s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f})"


def _churn_table(churn: dict) -> list[str]:
    lines: list[str] = []
    z, k = churn.get("zramd") or [], churn.get("zram") or []
    lines += [
        "| phase | zramd compr | zramd mem_used_total | zramd RSS above idle | zramd memory/compr "
        "| zram compr | zram mem_used_total | zram memory/compr |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, phase in enumerate(CHURN_PHASES):
        zr = z[i] if i < len(z) else {}
        kr = k[i] if i < len(k) else {}
        lines.append(
            f"| {phase} | {mib_spread(zr.get('compr_data_size'))} | "
            f"{mib_spread(zr.get('mem_used_total'))} | {mib_spread(zr.get('rss_above_idle'))} | "
            f"{_x(zr.get('memory_per_compr'))} | {mib_spread(kr.get('compr_data_size'))} | "
            f"{mib_spread(kr.get('mem_used_total'))} | {_x(kr.get('memory_per_compr'))} |"
        )
    errs = {r["compact_error"] for r in z if r.get("compact_error")}
    if errs:
        lines += ["", f"zramd compaction unavailable: {'; '.join(sorted(errs))}."]
    lines.append("")
    return lines


def _mem_limit_table(lim: dict) -> list[str]:
    lines = [
        f"### With --mem-limit {lim['mem_limit_bytes'] >> 20}M",
        "",
        "zramd alone: fill at 50%, rewrite at 80% then 20% compressible (writes past the limit "
        "fail with ENOSPC and fio goes on), trim everything, compact. Peak = the highest VmRSS "
        "sampled every 20 ms during the phase, above idle.",
        "",
        "| phase | compr | mem_used_total | RSS above idle | peak RSS above idle | peak / "
        "mem_limit | ENOSPC writes |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in lim["phases"]:
        lines.append(
            f"| {p['phase']} | {mib(p['compr_data_size'])} | {mib(p['mem_used_total'])} | "
            f"{mib(p['rss_above_idle'])} | {mib(p.get('peak_rss_above_idle'))} | "
            f"{num(p.get('peak_per_limit'), '.3f')} | {p.get('fio', {}).get('errors', '-')} |"
        )
    lines += [
        "",
        f"VmHWM above idle over the whole run: {mib(lim['hwm_above_idle'])} MiB "
        f"({lim['hwm_per_limit']:.3f}x the limit).",
        "",
    ]
    return lines


def _footprint_table(fp: dict, s: dict) -> list[str]:
    lines = [
        "### Fixed footprint",
        "",
        f"VmRSS of the nbdkit process before anything is stored, MiB, median of "
        f"{s['footprint_rounds']} start(s) (min-max). 2 clients: two libnbd connections, one "
        "read each.",
        "",
        "| server | idle | 2 clients connected |",
        "|---|---:|---:|",
    ]
    for name, label in (
        ("plain", "1 GiB device"),
        ("swap", "1 GiB device, --swap"),
        ("plain 4G", "4 GiB device"),
    ):
        lines.append(
            f"| {label} | {mib_spread(fp['rss'].get(name + ' idle'))} | "
            f"{mib_spread(fp['rss'].get(name + ' 2 clients'))} |"
        )
    if fp.get("table_bytes_per_device_page") is not None:
        lines += [
            "",
            f"Per-page tables: {fp['table_bytes_per_device_page']:.1f} bytes per device page "
            f"(idle VmRSS at 4 GiB minus 1 GiB, per page).",
        ]
    if fp.get("swap_skipped"):
        lines += ["", f"--swap not measured: {fp['swap_skipped']}."]
    lines.append("")
    return lines


def _sweep_table(sweep: dict) -> list[str]:
    lines = [
        "### Compression ratio against kernel zram",
        "",
        f"{sweep['size_bytes'] >> 20} MiB written (fio, 128 KiB, `buffer_compress_percentage` as "
        "given; or the swap-like corpus) onto a device of that size, then trimmed and compacted "
        "before the next point. ratio = orig_data_size / compr_data_size (payload) and "
        "orig_data_size / mem_used_total (memory); vs = zramd / kernel zram.",
        "",
        "| data | zramd orig/compr | zram orig/compr | vs | zramd orig/mem_used | zram "
        "orig/mem_used | vs | zramd huge pages | zram huge pages |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in sweep["points"]:
        row = sweep["rows"][p]
        z, k = row.get("zramd") or {}, row.get("zram") or {}
        vs_c, vs_m = row.get("ratio_compr_vs_zram"), row.get("ratio_mem_vs_zram")
        lines.append(
            f"| {p} | {num(z.get('ratio_compr'), '.3f')} | {num(k.get('ratio_compr'), '.3f')} | "
            f"{'-' if vs_c is None else f'{(vs_c - 1) * 100:+.1f}%'} | "
            f"{num(z.get('ratio_mem'), '.3f')} | {num(k.get('ratio_mem'), '.3f')} | "
            f"{'-' if vs_m is None else f'{(vs_m - 1) * 100:+.1f}%'} | {num(z.get('huge_pages'))} "
            f"| {num(k.get('huge_pages'))} |"
        )
    lines.append("")
    return lines


def _targets_table(targets: list[dict]) -> list[str]:
    lines = [
        "### Memory targets",
        "",
        "| target | want | measured | met |",
        "|---|---|---|---|",
    ]
    for t in targets:
        lines.append(
            f"| {t['target']} | {t['want']} | {t['measured'] or '-'} | {met_cell(t['met'])} |"
        )
    lines.append("")
    return lines


def markdown(data: dict) -> list[str]:
    s = data["settings"]
    lines = ["## Memory: zramd against kernel zram", ""]
    churn = (data.get("churn") or {}).get("summary") or {}
    zramd_args = " ".join(by_name(ZRAMD_SYSTEM).args)
    lines += [
        f"A {s['disksize_bytes'] >> 20} MiB device each (zramd `{zramd_args}`, inline; kernel "
        f"zram lz4); fill {s['fill_bytes'] >> 20} MiB at 50% compressible (fio, 128 KiB), rewrite "
        "as many bytes in random 4 KiB writes at 20%, trim a random half of the pages, compact, "
        "trim everything, compact again; the same fio data for both (fixed seeds). **memory** is "
        "what the data really costs: zramd's VmRSS above its idle VmRSS (the nbdkit process), "
        f"kernel zram's mem_used_total (zsmalloc's pages). MiB, median of {s['rounds']} round(s) "
        "(min-max where they differ).",
        "",
    ]
    if churn:
        lines += _churn_table(churn)
    lim = data.get("mem_limit")
    if lim:
        lines += _mem_limit_table(lim)
    fp = data.get("footprint")
    if fp:
        lines += _footprint_table(fp, s)
    sweep = data.get("sweep")
    if sweep:
        lines += _sweep_table(sweep)
    if data.get("targets"):
        lines += _targets_table(data["targets"])
    notes = [f"- {k}: skipped: {v}" for k, v in data.get("skipped", {}).items()]
    notes += [f"- {k}: failed: {v}" for k, v in data.get("errors", {}).items()]
    if notes:
        lines += ["Skipped or failed:", "", *notes, ""]
    return lines


def summary(data: dict) -> list[str]:
    out = []
    comp = phase_row(data, "zramd", "compacted")
    zcomp = phase_row(data, "zram", "compacted")
    if comp and median_of(comp["memory_per_compr"]) is not None:
        out.append(
            f"Memory after fill, rewrite, half trim and compaction: zramd's RSS above idle is "
            f"{median_of(comp['memory_per_compr']):.2f}x its compressed payload"
            + (
                f", kernel zram's mem_used_total {median_of(zcomp['memory_per_compr']):.2f}x"
                if zcomp and median_of(zcomp["memory_per_compr"])
                else ""
            )
            + "."
        )
    fp = (data.get("footprint") or {}).get("rss") or {}
    if fp.get("plain idle"):
        swap = fp.get("swap idle")
        out.append(
            f"Idle RSS (1 GiB device): {fp['plain idle']['median'] / MIB:.1f} MiB"
            + (f", with --swap {swap['median'] / MIB:.1f} MiB" if swap else "")
            + "."
        )
    met = [t for t in data.get("targets", []) if t["met"] is not None]
    if met:
        out.append(
            f"Memory targets met: {sum(t['met'] for t in met)} of {len(met)} "
            f"(docs/bench/results.md, section Memory)."
        )
    return out


def _churn_chart(plt, churn: dict, out: Path, title: str) -> str:
    series = []
    if "zramd" in churn:
        series += [
            ("zramd RSS above idle", "zramd", "rss_above_idle", "C0", None),
            ("zramd mem_used_total", "zramd", "mem_used_total", "C0", "//"),
            ("zramd compr_data_size", "zramd", "compr_data_size", "C0", ".."),
        ]
    if "zram" in churn:
        series += [
            ("zram mem_used_total", "zram", "mem_used_total", "C1", None),
            ("zram compr_data_size", "zram", "compr_data_size", "C1", ".."),
        ]
    fig, ax = plt.subplots(figsize=(12, 5.5))
    width = 0.8 / len(series)
    for i, (label, kind, key, color, hatch) in enumerate(series):
        xs, ys, lo, hi = [], [], [], []
        for g, row in enumerate(churn[kind]):
            sp = row.get(key)
            if not sp or sp["median"] is None:
                continue
            xs.append(g - 0.4 + width * (i + 0.5))
            ys.append(sp["median"] / MIB)
            lo.append((sp["median"] - sp["min"]) / MIB)
            hi.append((sp["max"] - sp["median"]) / MIB)
        ax.bar(
            xs,
            ys,
            width,
            yerr=[lo, hi],
            capsize=2,
            label=label,
            color=color,
            alpha=1.0 if hatch is None else 0.55,
            hatch=hatch,
            edgecolor="black",
            linewidth=0.3,
        )
    ax.set_xticks(range(len(CHURN_PHASES)))
    ax.set_xticklabels(CHURN_PHASES, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("MiB")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"Memory per phase, zramd vs kernel zram (lz4): {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=110)
    plt.close(fig)
    return "memory.png"


def _mem_limit_chart(plt, lim: dict, out: Path, title: str) -> str:
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ts = [t for t, _ in lim["samples"]]
    ax.plot(ts, [v / MIB for _, v in lim["samples"]], lw=1, label="zramd VmRSS above idle")
    ax.axhline(lim["mem_limit_bytes"] / MIB, color="C3", ls="--", lw=1, label="mem_limit")
    ax.axhline(
        lim["mem_limit_bytes"] * MEM_LIMIT_OVERSHOOT_MAX / MIB,
        color="C3",
        ls=":",
        lw=1,
        label=f"mem_limit x {MEM_LIMIT_OVERSHOOT_MAX}",
    )
    for p in lim["phases"][1:]:  # each phase from its start
        if p.get("t_start") is not None:
            ax.axvline(p["t_start"], color="gray", lw=0.6, ls=":")
            ax.text(
                p["t_start"],
                ax.get_ylim()[1] * 0.98,
                " " + p["phase"],
                fontsize=7,
                va="top",
                rotation=90,
                color="gray",
            )
    ax.set_xlabel("seconds")
    ax.set_ylabel("MiB")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"RSS under --mem-limit {lim['mem_limit_bytes'] >> 20}M: {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "memory_limit.png", dpi=110)
    plt.close(fig)
    return "memory_limit.png"


def _sweep_chart(plt, sweep: dict, out: Path, title: str) -> str:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    pts = sweep["points"]
    for ax, key, label in (
        (ax1, "ratio_compr", "orig / compr_data_size"),
        (ax2, "ratio_mem", "orig / mem_used_total"),
    ):
        for kind, color, marker in (("zramd", "C0", "o"), ("zram", "C1", "s")):
            name = "zramd" if kind == "zramd" else "kernel zram lz4"
            xs = [i for i, p in enumerate(pts) if (sweep["rows"][p].get(kind) or {}).get(key)]
            line = [i for i in xs if pts[i] != "corpus"]
            if line:  # the fio points as a line, the corpus as its own point
                ax.plot(
                    line,
                    [sweep["rows"][pts[i]][kind][key] for i in line],
                    marker=marker,
                    color=color,
                    label=name,
                    alpha=0.8,
                )
            for i in xs:
                if pts[i] == "corpus":
                    ax.scatter(
                        [i],
                        [sweep["rows"][pts[i]][kind][key]],
                        marker=marker,
                        color=color,
                        zorder=3,
                    )
        ax.set_xticks(range(len(pts)))
        ax.set_xticklabels(pts, fontsize=8)
        ax.set_xlabel("fio buffer_compress_percentage, or the swap-like corpus")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(plt.matplotlib.ticker.NullFormatter())
        ax.set_yticks([1, 1.5, 2, 3, 4, 6, 8])
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        ax.set_title(label, fontsize=10)
    fig.suptitle(f"Compression ratio: {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "memory_ratio.png", dpi=110)
    plt.close(fig)
    return "memory_ratio.png"


def plots(data: dict, out: Path, title: str) -> list[str]:
    from bench.plots import _pyplot

    plt = _pyplot()
    written = []
    churn = (data.get("churn") or {}).get("summary") or {}
    if churn:
        written.append(_churn_chart(plt, churn, out, title))
    lim = data.get("mem_limit")
    if lim and lim.get("samples"):
        written.append(_mem_limit_chart(plt, lim, out, title))
    sweep = data.get("sweep")
    if sweep:
        written.append(_sweep_chart(plt, sweep, out, title))
    return written

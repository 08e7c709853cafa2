"""Medians and spreads over rounds, and the number formats the report uses.

A shared machine's numbers move by 30-50% between minutes, so sections that
repeat a measurement over rounds report the median with the min-max spread.
"""

from __future__ import annotations

import statistics


def spread(values: list[float]) -> dict:
    """{"median", "min", "max", "n"} of the non-None values (None fields when empty)."""
    vs = [v for v in values if v is not None]
    if not vs:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(vs), "min": min(vs), "max": max(vs), "n": len(vs)}


def per_round_ratio(jobs: list[dict], peers: list[dict], key: str = "iops") -> dict:
    """spread() of ``job[key] / peer[key]`` over the rounds both lists have
    (each a job per round, ``"round"`` its number): the steadier number on
    a shared machine, both halves from the same few seconds."""
    by_round = {p["round"]: p for p in peers}
    return spread(
        [
            j[key] / by_round[j["round"]][key]
            for j in jobs
            if j["round"] in by_round and by_round[j["round"]][key]
        ]
    )


def met_cell(met: bool | None) -> str:
    """A target table's "met" cell: yes, **no**, or n/a when not measured."""
    return "n/a" if met is None else ("yes" if met else "**no**")


def num(v: float | None, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def tenths(v: float | None) -> str:
    """One decimal: µs per request, MB/s, load averages."""
    return num(v, ".1f")


def times(v: float | None) -> str:
    """A ratio: 0.56x."""
    return "-" if v is None else f"{v:.2f}x"


def kilo(v: float | None) -> str:
    """IOPS the way the tables print them: 80k, 7.5k, 950."""
    if v is None:
        return "-"
    if v >= 1_000_000:
        return f"{v / 1e6:.2f}M"
    if v >= 10_000:
        return f"{v / 1000:.0f}k"
    if v >= 1000:
        return f"{v / 1000:.1f}k"
    return f"{v:.0f}"


def with_spread(s: dict, fmt=kilo) -> str:
    """median (min-max), or the single value when there is one round."""
    if s["median"] is None:
        return "-"
    if s["n"] <= 1 or s["min"] == s["max"]:
        return fmt(s["median"])
    return f"{fmt(s['median'])} ({fmt(s['min'])}-{fmt(s['max'])})"


def outcome_lines(data: dict) -> list[str]:
    """A section's closing markdown lines: each skipped system with its
    reason, then each error."""
    lines = [f"\n- {name}: skipped: {why}" for name, why in data.get("skipped", {}).items()]
    return lines + [f"\n- failed: {err}" for err in data.get("errors", [])]

"""How the report prints numbers: counts, tenths, ratios (0.56x), IOPS
(80k), a median with its spread, a target's met cell, and the closing lines
of a section. Pure functions of their arguments; no state.
"""

from __future__ import annotations


def row(cells) -> str:
    """One markdown table row: | a | b |."""
    return "| " + " | ".join(cells) + " |"


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

"""Medians and spreads over rounds (their formats: bench/formats.py).

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

"""The registry of bench sections, in the order a run measures and reports
them. A section is any object with:

    name: str                                  results.json key, --sections value
    title: str
    estimate_s(ctx) -> float                   for the progress line at the start
    run(ctx: Context) -> dict                  measure; must be JSON-serialisable
    derive(data) -> None                       optional: add what is computed from the
                                               measurements (ratios, medians); rerun by
                                               --render
    markdown(data) -> list[str]                its part of results.md
    plots(data, out: Path, title) -> list[str] PNG files written into out (may be [])
    summary(data) -> list[str]                 lines for README's generated block

Adding one: a module next to this one, and a line in SECTIONS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from bench.backing import BackingEncryption
from bench.baseline import Baseline
from bench.context import Context
from bench.cpu import ServerCpu
from bench.matrix import Matrix
from bench.memory_report import Memory
from bench.scaling import ConnectionScaling
from bench.scrapes import ScrapeCost


class Section(Protocol):
    name: str
    title: str

    def estimate_s(self, ctx: Context) -> float: ...

    def run(self, ctx: Context) -> dict: ...

    def markdown(self, data: dict) -> list[str]: ...

    def plots(self, data: dict, out: Path, title: str) -> list[str]: ...

    def summary(self, data: dict) -> list[str]: ...


SECTIONS: list[Section] = [
    Matrix(),
    ConnectionScaling(),
    ServerCpu(),
    Baseline(),
    BackingEncryption(),
    ScrapeCost(),
    Memory(),
]


def by_names(names: list[str]) -> list[Section]:
    """The sections named (all when none); SystemExit naming an unknown one."""
    if not names:
        return list(SECTIONS)
    known = {s.name: s for s in SECTIONS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return [s for s in SECTIONS if s.name in names]

#!/usr/bin/env python3
"""zramd benchmark suite, the command line: zramd against its peers, side by
side on the same machine, the same data and the same client.

    .venv/bin/python bench/run.py            # default run, about 40 minutes; publishes
    .venv/bin/python bench/run.py --quick    # the whole pipeline in about two minutes
    .venv/bin/python bench/run.py --systems 'zramd-*,kernel-zram-lz4' --sections matrix --runtime 10
    .venv/bin/python bench/run.py --list

What runs: the sections in SECTIONS below (how to add a system or a
section: bench/__init__.py). Outputs in --out (default
bench/results/<timestamp>/, gitignored): results.json, results.md, PNG
charts, logs/. A default run (no --quick, --out or selection) also
*publishes*: it replaces docs/bench/ with its results and charts and
rewrites README.md's generated block, the only places benchmark numbers
live in the repository.

Numbers drift between runs and machines (on a shared machine, a lot):
compare within one run. Nothing here asserts timings.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))  # run as a script: make the bench package importable

from bench import machine, report  # noqa: E402
from bench.backing import BackingEncryption  # noqa: E402
from bench.baseline import Baseline  # noqa: E402
from bench.cold import ColdPages  # noqa: E402
from bench.context import Context, Progress  # noqa: E402
from bench.cpu import ServerCpu  # noqa: E402
from bench.matrix import Matrix  # noqa: E402
from bench.memory_report import Memory  # noqa: E402
from bench.remote import RemoteTier  # noqa: E402
from bench.scaling import ConnectionScaling  # noqa: E402
from bench.scrapes import ScrapeCost  # noqa: E402
from bench.servers import find_zramd  # noqa: E402
from bench.swap import SwapMix  # noqa: E402
from bench.systems import FIO_DATA_OPTIONS, SYSTEMS, WORKLOADS  # noqa: E402
from bench.vm_section import VmSwap  # noqa: E402

# The sections, in the order a run measures and reports them: each has a
# name (results.json key, --sections value) and a title, run(ctx) -> data,
# and derive, markdown, plots and summary of that data (bench/__init__.py).
SECTIONS = [
    Matrix(),
    ConnectionScaling(),
    ServerCpu(),
    Baseline(),
    BackingEncryption(),
    ScrapeCost(),
    Memory(),
    SwapMix(),
    VmSwap(),
    ColdPages(),
    RemoteTier(),
]


def by_names(names: list[str]) -> list:
    """The sections named (all when none); SystemExit naming an unknown one."""
    known = [s.name for s in SECTIONS]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return [s for s in SECTIONS if not names or s.name in names]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="zramd benchmark suite (see the module docstring)")
    add = p.add_argument
    add("--quick", action="store_true", help="tiny region and short jobs: the pipeline (CI)")
    add("--out", help="output directory (default bench/results/<timestamp>/)")
    add("--sections", help=f"comma-separated (default all: {','.join(s.name for s in SECTIONS)})")
    add("--systems", help="comma-separated names or globs, e.g. 'zramd-*,kernel-zram-lz4'")
    add("--workloads", help="matrix workload globs, e.g. 'randread-*,corpus/*' (fills always run)")
    add("--datasets", default="fio,corpus", help="matrix datasets: fio,corpus (default both)")
    add("--size-mib", type=int, help="region written per system (default 256, quick 16)")
    add("--runtime", type=float, help="seconds per timed job (default 4, quick 0.5)")
    add("--ramp", type=float, help="matrix: ramp seconds before each job (default 1, quick 0)")
    add("--rounds", type=int, help="rounds of the interleaved sections (default 3, quick 1)")
    add("--corpus-dir", default=str(BENCH_DIR / "corpus"), help="where the corpus is kept")
    add("--regenerate-corpus", action="store_true")
    add("--zramd", help="the zramd CLI (default: next to this Python, or .venv/bin/zramd)")
    add(
        "--swap-mix",
        metavar="FILE",
        help="swap section: the request-size mix (default bench/swap_mix.json)",
    )
    add("--baseline", metavar="REV", help="baseline section: the commit to compare with")
    add(
        "--zram-lock",
        default=os.environ.get("ZRAMD_BENCH_ZRAM_LOCK"),
        help="hold flock(2) on this file while using kernel zram (default "
        "$ZRAMD_BENCH_ZRAM_LOCK; for machines whose zram others use too)",
    )
    add(
        "--publish",
        action=argparse.BooleanOptionalAction,
        help="replace docs/bench/ and README's block with this run (default: only a full "
        "default run); with --sections, only those sections' parts",
    )
    add("--render", metavar="DIR", help="re-render DIR/results.json without measuring")
    add("--list", action="store_true", help="list sections, systems and workloads, then exit")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The options, with the defaults that depend on --quick filled in."""
    p = build_parser()
    a = p.parse_args(argv)
    given = ("systems", "workloads", "sections", "out", "size_mib", "runtime", "ramp", "rounds")
    selected = a.datasets != "fio,corpus" or any(getattr(a, k) for k in (*given, "baseline"))
    a.sections = [x for x in (a.sections or "").split(",") if x]
    a.systems = [x for x in (a.systems or "").split(",") if x]
    a.workloads = [x for x in (a.workloads or "").split(",") if x]
    a.datasets = [x for x in a.datasets.split(",") if x]
    a.region_bytes = (a.size_mib or (16 if a.quick else 256)) << 20
    a.runtime_s = a.runtime if a.runtime is not None else (0.5 if a.quick else 4.0)
    a.ramp_s = a.ramp if a.ramp is not None else (0.0 if a.quick else 1.0)
    a.rounds = a.rounds or (1 if a.quick else 3)
    if a.rounds < 1:
        p.error("--rounds must be at least 1")
    a.publish_explicit = a.publish
    if a.publish is None:
        a.publish = not a.quick and not selected
    if a.out is None:
        a.out = str(BENCH_DIR / "results" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    return a


def list_all() -> None:
    for s in SECTIONS:
        print(f"section  {s.name:<20} {s.title}")
    for system in SYSTEMS:
        print(f"system   {system.name:<20} {system.description}")
    for w in WORKLOADS:
        print(
            f"workload {w.dataset:<6} {w.name:<18} rw={w.rw} bs={w.bs_bytes} iodepth={w.iodepth}"
            f"{' (fill)' if w.fill else ''}"
        )


def measure(a: argparse.Namespace, sections: list, out: Path) -> dict:
    """Runs the sections; the report (see bench/report.py)."""
    progress = Progress()
    zramd = find_zramd(a.zramd)
    started = datetime.datetime.now()
    rep: dict = {"meta": machine.info(zramd), "sections": {}, "charts": {}, "errors": {}}
    with tempfile.TemporaryDirectory(prefix="zramd-bench-") as tmp:
        ctx = Context(
            args=a, out=out, logs=out / "logs", tmp=Path(tmp), zramd=zramd, progress=progress
        )
        progress(f"zramd bench: sections {', '.join(s.name for s in sections)}; out {out}")
        for section in sections:
            progress(f"== {section.title}")
            try:
                rep["sections"][section.name] = section.run(ctx)
            except (SystemExit, KeyboardInterrupt):
                raise
            except Exception as e:  # one broken section must not cost the others' results
                traceback.print_exc()
                rep["errors"][section.name] = f"{type(e).__name__}: {e}"
                progress(f"{section.name} FAILED: {e}")
    progress(f"done in {progress.elapsed():.0f} s")
    rep["meta"].update(
        started=started.isoformat(timespec="seconds"),
        duration_s=round(progress.elapsed(), 1),
        loadavg_at_end=os.getloadavg(),
        quick=a.quick,
        region_bytes=a.region_bytes,
        runtime_s=a.runtime_s,
        ramp_s=a.ramp_s,
        rounds=a.rounds,
        fio_data_options=FIO_DATA_OPTIONS,
    )
    return rep


def render(rep: dict, sections: list, out: Path, publish: bool) -> None:
    """Charts, results.json and results.md in out; docs/bench and README if publishing."""
    title = report.title_line(rep["meta"])
    for section in sections:
        if section.name in rep["sections"]:
            section.derive(rep["sections"][section.name])
            try:
                rep["charts"][section.name] = section.plots(
                    rep["sections"][section.name], out, title
                )
            except ImportError as e:
                print(f"charts skipped: matplotlib missing ({e}); install the bench extra")
    md = report.write(rep, sections, out)
    print()
    print(md)
    if publish:
        report.publish(rep, out, SECTIONS)  # a run of some sections is merged in
        print(f"published: {report.DOCS_BENCH} and README.md's bench block", flush=True)
    print(f"results: {out}", flush=True)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(sys.argv[1:] if argv is None else argv)
    if a.list:
        list_all()
        return 0
    if a.render:
        # Re-render a finished run (after a change to the tables or charts).
        out = Path(a.render)
        try:
            rep = json.loads((out / "results.json").read_text())
        except (OSError, ValueError) as e:
            raise SystemExit(f"--render {out}: no readable results.json ({e})") from None
        sections = [s for s in SECTIONS if s.name in rep["sections"] or s.name in rep["errors"]]
        render(rep, sections, out, publish=bool(a.publish_explicit))
        return 0
    sections = by_names(a.sections)
    if not shutil.which("fio"):
        raise SystemExit("missing tool: fio (make setup installs it)")
    out = Path(a.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    rep = measure(a, sections, out)
    render(rep, sections, out, a.publish)
    return 1 if rep["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

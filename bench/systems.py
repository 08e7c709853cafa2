"""The systems the bench compares and the workloads it runs on them.

Data structure: two tables, ``SYSTEMS`` and ``WORKLOADS``, of frozen
dataclasses; names are unique in each (sections and results key on them).

A system's ``kind`` says how it runs:
  "zramd"   ``zramd serve --socket SOCK --size SIZE <args>``
  "nbdkit"  ``nbdkit -f -U SOCK <args>`` ({size} and {null_plugin} expand)
  "zram"    the kernel's zram, ``args = (algorithm,)``, fio libaio on /dev/zramN
``stores=False``: the system keeps no data (no corpus dataset, no storage
stats). Adding a zramd mode or a peer is one line here.
"""

from __future__ import annotations

import dataclasses
import fnmatch

PAGE_BYTES = 4096

FIO_DATA_OPTIONS = ["--buffer_compress_percentage=50"]


@dataclasses.dataclass(frozen=True)
class System:
    name: str
    kind: str
    args: tuple[str, ...]
    description: str
    stores: bool = True


SYSTEMS: list[System] = [
    System("zramd-lz4", "zramd", ("--algorithm", "lz4"), "zramd, lz4, inline compression"),
    System(
        "zramd-zstd",
        "zramd",
        ("--algorithm", "zstd"),
        "zramd, zstd (default level), inline compression",
    ),
    System("zramd-none", "zramd", ("--algorithm", "none"), "zramd, no compression"),
    System(
        "zramd-lz4-async",
        "zramd",
        ("--algorithm", "lz4", "--compress", "async", "--workers", "1"),
        "zramd, lz4, async compression (stable writes, 1 worker)",
    ),
    System(
        "zramd-lz4-async2",
        "zramd",
        ("--algorithm", "lz4", "--compress", "async", "--workers", "2"),
        "zramd, lz4, async compression (stable writes, 2 workers)",
    ),
    System(
        "zramd-zstd-async",
        "zramd",
        ("--algorithm", "zstd", "--compress", "async"),
        "zramd, zstd (default level), async compression (stable writes, default workers)",
    ),
    System(
        "zramd-lz4-hybrid",
        "zramd",
        ("--algorithm", "lz4", "--compress", "hybrid", "--workers", "1"),
        "zramd, lz4, hybrid: async for requests >= 64 KiB, inline below",
    ),
    System(
        "zramd-lz4-xxh3",
        "zramd",
        ("--algorithm", "lz4", "--checksum", "xxh3"),
        "zramd, lz4, inline, per-page xxh3 checksums",
    ),
    System(
        "zramd-lz4-nopin",
        "zramd",
        ("--algorithm", "lz4", "--no-pin-thread-state"),
        "zramd, lz4, inline, thread state not pinned",
    ),
    System(
        "nbdkit-memory", "nbdkit", ("memory", "{size}"), "nbdkit memory plugin (C, uncompressed)"
    ),
    System(
        "nbdkit-zstd",
        "nbdkit",
        ("memory", "{size}", "allocator=zstd"),
        "nbdkit memory allocator=zstd (C, compressed)",
    ),
    System(
        "nbdkit-null",
        "nbdkit",
        ("null", "{size}"),
        "nbdkit null plugin (C): transport ceiling",
        stores=False,
    ),
    System(
        "python-null",
        "nbdkit",
        ("--threads", "1", "python", "{null_plugin}", "size={size}"),
        "null Python plugin, --threads 1: Python ceiling",
        stores=False,
    ),
    System(
        "python-null-pinned",
        "nbdkit",
        ("--threads", "1", "python", "{null_plugin}", "size={size}", "pin=1"),
        "null Python plugin, --threads 1, thread state kept",
        stores=False,
    ),
    System(
        "python-lz4-list",
        "nbdkit",
        ("--threads", "1", "python", "{null_plugin}", "size={size}", "pin=1", "keep=lz4"),
        "least Python store: lz4 pages in a list, --threads 1, thread state kept",
    ),
    System("kernel-zram-lz4", "zram", ("lz4",), "kernel zram, lz4 (fio libaio, direct)"),
]

ZRAM_PEER = "kernel-zram-lz4"
ZSTD_PEER = "nbdkit-zstd"
PYTHON_CEILING = "python-null-pinned"
C_CEILING = "nbdkit-null"
LZ4_STORE_CEILING = "python-lz4-list"


@dataclasses.dataclass(frozen=True)
class Workload:
    """A fio job shape. A "fill" writes the whole region once (and is
    measured); the others are time based on the filled region."""

    name: str
    dataset: str  # "fio" or "corpus"
    rw: str  # fio rw=, or "corpus-fill"
    bs_bytes: int
    iodepth: int
    rwmixread: int = 0
    fill: bool = False


WORKLOADS: list[Workload] = [
    Workload("seqwrite-128k", "fio", "write", 128 << 10, 16, fill=True),
    Workload("randwrite-4k-qd1", "fio", "randwrite", 4096, 1),
    Workload("randwrite-4k-qd16", "fio", "randwrite", 4096, 16),
    Workload("randread-4k-qd1", "fio", "randread", 4096, 1),
    Workload("randread-4k-qd16", "fio", "randread", 4096, 16),
    Workload("randrw70-4k-qd1", "fio", "randrw", 4096, 1, rwmixread=70),
    Workload("randrw70-4k-qd16", "fio", "randrw", 4096, 16, rwmixread=70),
    Workload("seqread-128k", "fio", "read", 128 << 10, 16),
    Workload("fill-256k", "corpus", "corpus-fill", 256 << 10, 1, fill=True),
    Workload("randread-4k-qd1", "corpus", "randread", 4096, 1),
    Workload("randread-4k-qd16", "corpus", "randread", 4096, 16),
]

FILL_WORKLOAD = WORKLOADS[0]


def by_name(name: str) -> System:
    for s in SYSTEMS:
        if s.name == name:
            return s
    raise KeyError(name)


def select(patterns: list[str], candidates: list[System] | None = None) -> list[System]:
    """The systems matching any of the globs (all when there are none)."""
    pool = SYSTEMS if candidates is None else candidates
    return [s for s in pool if not patterns or any(fnmatch.fnmatch(s.name, p) for p in patterns)]


def size_arg(nbytes: int) -> str:
    """A size as zramd and nbdkit take it: "256M" where it is whole MiB."""
    if nbytes % (1 << 20) == 0:
        return f"{nbytes >> 20}M"
    return str(nbytes)

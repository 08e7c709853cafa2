"""What every section of a bench run gets: the parsed arguments, where to
write (out/, out/logs/), a private temporary directory for sockets (short
paths: Unix socket names are limited to 108 bytes), the zramd CLI and the
progress printer. One thread drives a run; nothing here is locked.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path


class Progress:
    """Prints "[elapsed] message" lines as the run goes (flushed at once)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def __call__(self, msg: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {msg}", flush=True)


@dataclasses.dataclass
class Context:
    args: argparse.Namespace
    out: Path
    logs: Path
    tmp: Path
    zramd: str | None
    progress: Progress

    @property
    def cores(self) -> int:
        return os.cpu_count() or 1

    @property
    def region_bytes(self) -> int:
        return self.args.region_bytes

    def fio_timeout_s(self) -> float:
        return max(300.0, 20 * (self.args.runtime_s + self.args.ramp_s))

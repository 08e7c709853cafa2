"""The guest console protocol: what vm/guest-init.sh and vm/hog.c print on
the serial console, turned into events. Pure functions and one small
buffer class; no I/O beyond reading the console file, no threads.

Lines (one per event, ``key=value`` words after the tag):

    ZRAMD-PHASE <name>           a scenario step began or ended (e.g. swapped-off)
    ZRAMD-RESULT k=v ...         guest measurements (vmstat counters, timings)
    ZRAMD-FAIL <why>             the guest's scenario failed
    ZRAMD-DONE ok=0|1            the scenario finished
    ZRAMD-SWAP t=S used_kib=N .. the guest's swap in use, every second of the hog
    HOG-PASS pass=N action=A ... one pass of the hog finished
    HOG-STAT pass=N file=F ...   a stats file the hog sampled after a pass;
                                 for the guest's own zram, the mm_stat numbers
    HOG-MISMATCH pass=N page=P   a page did not read back as written
    HOG-RESULT ok=0|1 ...        the hog's verdict

Everything else (kernel messages) parses to None.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from zramd.engine.store import MM_STAT_FIELDS  # zram's mm_stat columns, one list

_ZRAM_MM_STAT = "/zram0/mm_stat "


def kv(text: str) -> dict[str, int | float | str]:
    """key=value words, values as int, else float, else str."""
    out: dict[str, int | float | str] = {}
    for m in re.finditer(r"(\w+)=(\S*)", text):
        v = m.group(2)
        try:
            out[m.group(1)] = int(v)
        except ValueError:
            try:
                out[m.group(1)] = float(v)
            except ValueError:
                out[m.group(1)] = v
    return out


@dataclasses.dataclass(frozen=True)
class Phase:
    name: str


@dataclasses.dataclass(frozen=True)
class GuestResult:
    values: dict


@dataclasses.dataclass(frozen=True)
class Progress:
    """The guest's watchdog line while the hog runs: seconds, swap counters."""

    values: dict


@dataclasses.dataclass(frozen=True)
class SwapSample:
    """The guest's swap in use (SwapTotal - SwapFree, KiB), SwapCached, and
    with dev=zram its zram0's orig_data_size and mem_used_total (bytes)."""

    values: dict


@dataclasses.dataclass(frozen=True)
class GuestFail:
    line: str


@dataclasses.dataclass(frozen=True)
class Done:
    ok: int | float | str | None


@dataclasses.dataclass(frozen=True)
class HogPass:
    values: dict


@dataclasses.dataclass(frozen=True)
class GuestZramStat:
    """The guest's own zram0 mm_stat, sampled by the hog after a pass."""

    pass_no: int | float | str | None
    mm_stat: dict


@dataclasses.dataclass(frozen=True)
class HogMismatch:
    line: str


@dataclasses.dataclass(frozen=True)
class HogResult:
    values: dict


Event = (
    Phase
    | GuestResult
    | Progress
    | SwapSample
    | GuestFail
    | Done
    | HogPass
    | GuestZramStat
    | HogMismatch
    | HogResult
)


def parse_line(line: str) -> Event | None:
    line = line.strip("\r")
    tag, _, rest = line.partition(" ")
    if tag == "ZRAMD-PHASE":
        return Phase(rest)
    if tag == "ZRAMD-RESULT":
        return GuestResult(kv(rest))
    if tag == "ZRAMD-PROGRESS":
        return Progress(kv(rest))
    if tag == "ZRAMD-SWAP":
        values = kv(rest)
        return SwapSample(values) if isinstance(values.get("used_kib"), int) else None
    if tag == "ZRAMD-FAIL":
        return GuestFail(line)
    if tag == "ZRAMD-DONE":
        return Done(kv(rest).get("ok"))
    if tag == "HOG-PASS":
        return HogPass(kv(rest))
    if tag == "HOG-STAT":
        if _ZRAM_MM_STAT not in line:
            return None  # other stats files: nothing to record
        nums = line.split(_ZRAM_MM_STAT, 1)[1].split()
        if len(nums) < len(MM_STAT_FIELDS) or not all(n.isdigit() for n in nums):
            return None  # "unreadable", or a truncated line
        return GuestZramStat(
            kv(rest).get("pass"), dict(zip(MM_STAT_FIELDS, map(int, nums), strict=False))
        )
    if tag == "HOG-MISMATCH":
        return HogMismatch(line)
    if tag == "HOG-RESULT":
        return HogResult(kv(rest))
    return None


class ConsoleReader:
    """Reads a growing console file; returns each complete line once.

    A line without its newline yet stays buffered until the next read.
    """

    def __init__(self, path: Path):
        self.path = path
        self._pos = 0
        self._pending = ""

    def feed(self, text: str) -> list[str]:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        return [line.strip("\r") for line in lines]

    def read(self) -> list[str]:
        with open(self.path, "rb") as f:
            f.seek(self._pos)
            chunk = f.read()
        self._pos += len(chunk)
        return self.feed(chunk.decode(errors="replace"))

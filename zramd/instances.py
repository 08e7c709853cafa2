"""Striped instances: N independent devices served by N nbdkit processes.

One device's Python work runs under one GIL, so it never uses more than one
core; N devices in N processes can (docs/design.md#scaling-past-one-core).
The kernel stripes swap over them when they are enabled at equal priority,
as it did over the one-zram-device-per-CPU set-ups of old.

Data structures:

- ``split_bytes(total, n)``: how a size is shared out in whole 4 KiB pages.
  Instance ``i`` gets ``total_pages // n`` pages, the first
  ``total_pages % n`` instances one page more, and instance 0 also any
  sub-page tail; the parts always add up to ``total`` exactly.
- ``instance_settings(settings, n)``: one ``Settings`` per instance, each
  field split as its option row's ``split`` says (``split_value``; the
  kinds are options.SPLITS, so no list of fields lives here).  Today: socket
  ``PATH`` becomes ``PATH.0 ... PATH.{n-1}``, control socket ``CTL`` becomes
  ``CTL.0 ...`` (the default ``PATH.ctl`` so becomes ``PATH.0.ctl``), TCP
  port ``P`` becomes ``P ... P+n-1``; size, mem_limit, backing size and the
  watermarks are split in pages; the backing file and final-stats paths get
  the same ``.i`` suffix.  ``n == 1`` returns the settings unchanged.
- ``discover(control_path)``: the control sockets of every running instance
  of a base path: the path itself if it exists, then ``BASE.i.ctl`` in index
  order.  The naming convention is the instance list; nothing else is
  written (a file could go stale, a socket that is gone cannot).
- ``aggregate(stats_list)``: counters summed exactly, equal strings kept,
  differing ones listed.  Not summed: a knob that is not split over the
  instances (its option row has no ``split``: ``recompress_after``,
  ``cold_target``, ``writeback_batch_pages``, ...) is kept where the
  instances agree and listed where they differ, like a string; a rate or a
  share (``WEIGHTED_MEANS``) is the instances' mean weighted by what it is
  a share of; an age or a latency percentile (``LARGEST``) is the largest.

``Stripe`` supervises the N ``Server`` objects: start all (in parallel,
stopping those started if one fails), wait until every one has stopped,
stop all.  An instance that dies is reported, and the others keep serving:
they may hold the only copy of swapped-out pages.

Locking: a Stripe is driven by one thread (``request_stop`` may come from a
signal handler in that thread); its watcher threads only wait on their
process and then put its index on a queue.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import queue
import re
import threading
import time
from typing import Any

from .options import BY_NAME, OPTIONS, Option
from .settings import ConfigError, Settings
from .units import PAGE_SIZE, format_size


def parse_instances(text: str) -> int:
    """The --instances value: its option row's parser and check (1..MAX_INSTANCES)."""
    return BY_NAME["instances"].from_text(text)


def split_bytes(total: int, n: int) -> list[int]:
    """``total`` shared out over ``n`` instances in whole pages (see the
    module docstring); the parts add up to ``total``."""
    pages, tail = divmod(total, PAGE_SIZE)
    base, extra = divmod(pages, n)
    parts = [(base + (1 if i < extra else 0)) * PAGE_SIZE for i in range(n)]
    parts[0] += tail
    return parts


def suffixed(path: str | None, index: int) -> str | None:
    return None if path is None else f"{path}.{index}"


def split_count(value: int | None, n: int) -> list[int | None]:
    """A page count shared out like sizes are (None stays None)."""
    if value is None:
        return [None] * n
    base, extra = divmod(value, n)
    return [base + (1 if i < extra else 0) for i in range(n)]


def split_value(opt: Option, value: Any, n: int) -> list[Any]:
    """The parts of one option's value over ``n`` instances, as its row's
    ``split`` says (options.SPLITS); ConfigError when it cannot be split."""
    if opt.split is None or n == 1:
        return [value] * n
    if opt.split == "pages":
        # 0 means "none" (or "the default"): a part of 0 would silently
        # mean no limit, so every part must hold a page at least.
        if value and value < n * PAGE_SIZE:
            raise ConfigError(
                f"{opt.label} {format_size(value)} is too small for {n} instances "
                f"(at least one {PAGE_SIZE}-byte page each)"
            )
        return split_bytes(value, n) if value else [0] * n
    if opt.split == "count":
        return split_count(value, n)
    if opt.split == "suffix":
        return [suffixed(value, i) for i in range(n)]
    if opt.split == "control":
        return [None if value is None else instance_control_path(value, i) for i in range(n)]
    if opt.split == "port":
        if value is None:
            return [None] * n
        if value + n - 1 > 65535:
            raise ConfigError(f"ports {value}..{value + n - 1} for {n} instances go past 65535")
        return [value + i for i in range(n)]
    raise ValueError(f"no splitter for {opt.split!r}")  # options.SPLITS and this disagree


def instance_settings(settings: Settings, n: int) -> list[Settings]:
    """One Settings per instance (``settings`` must have its defaults filled
    in and be valid), each field split as its option row says.  Raises
    ConfigError when a value cannot be split."""
    if n == 1:
        return [settings]
    parts = {
        opt.field: split_value(opt, getattr(settings, opt.field), n)
        for opt in OPTIONS
        if opt.split is not None
    }
    return [
        dataclasses.replace(settings, **{field: each[i] for field, each in parts.items()})
        for i in range(n)
    ]


def instance_control_path(control_path: str, index: int) -> str:
    """``X.ctl`` -> ``X.I.ctl`` (so that ``PATH.I``'s default control socket
    is ``PATH.I.ctl``); any other name gets ``.I`` appended."""
    if control_path.endswith(".ctl"):
        return f"{control_path[:-4]}.{index}.ctl"
    return f"{control_path}.{index}"


def discover(control_path: str) -> list[tuple[str, str]]:
    """``[(name, control socket)]`` of every instance of ``control_path``:
    the path itself if it exists, then its numbered instances in index
    order.  Names are the NBD socket paths where the convention gives them."""
    found = []
    if os.path.exists(control_path):
        found.append((_name(control_path), control_path))
    stem, tail = (
        (control_path[:-4], ".ctl") if control_path.endswith(".ctl") else (control_path, "")
    )
    pattern = re.compile(re.escape(stem) + r"\.(\d+)" + re.escape(tail) + "$")
    numbered = []
    for path in glob.glob(glob.escape(stem) + ".*" + tail):
        m = pattern.match(path)
        if m:
            numbered.append((int(m.group(1)), path))
    for _, path in sorted(numbered):
        found.append((_name(path), path))
    return found


def _name(control_path: str) -> str:
    return control_path[:-4] if control_path.endswith(".ctl") else control_path


# Stats that are a share of something: the device's value is the
# instances' mean weighted by that something (another stats key).
WEIGHTED_MEANS = {
    "promotion_rate_pct_min": "orig_data_size",  # percent of the pages stored, per minute
    "bd_pack_fill_percent": "bd_blocks",  # percent of the packed blocks' bytes in use
}
# Stats where the device's value is the largest instance's: the cold age
# the slowest controller waits, and latency percentiles (the whole
# device's percentile is at most the largest of its instances').
LARGEST = frozenset(
    {
        "cold_age_s",
        "remote_read_latency_p50_seconds",
        "remote_read_latency_p99_seconds",
        "remote_write_latency_p50_seconds",
        "remote_write_latency_p99_seconds",
    }
)
# Knobs every instance holds whole (no split in their option row): kept
# when the instances agree, listed when they differ, never summed.
UNSPLIT_KNOBS = frozenset(
    opt.runtime.stat
    for opt in OPTIONS
    if opt.runtime is not None and opt.runtime.stat is not None and opt.split is None
)


def _weighted_mean(stats_list: list[dict], key: str, weight: str) -> float:
    weights = [s.get(weight) or 0 for s in stats_list]
    values = [s.get(key) or 0 for s in stats_list]
    if not sum(weights):
        return max(values)
    return sum(v * w for v, w in zip(values, weights, strict=True)) / sum(weights)


def aggregate(stats_list: list[dict]) -> dict:
    """The instances' stats as one device's: numbers summed exactly (also
    ``mem_limit``, ``disksize`` and ``mem_used_max``, which then is the sum
    of each instance's peak), except the knobs, shares, ages and latencies
    above; a text field the instances agree on is kept, one they differ on
    becomes the list of their values."""
    out: dict = {}
    keys = list(dict.fromkeys(k for s in stats_list for k in s))
    for key in keys:
        values = [s.get(key) for s in stats_list]
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numbers and key in WEIGHTED_MEANS:
            out[key] = _weighted_mean(stats_list, key, WEIGHTED_MEANS[key])
        elif numbers and key in LARGEST:
            out[key] = max(v for v in values if v is not None)
        elif key in UNSPLIT_KNOBS:
            out[key] = values[0] if all(v == values[0] for v in values) else values
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            out[key] = sum(values)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[key] = sum(values)
        elif all(v == values[0] for v in values):
            out[key] = values[0]
        else:
            out[key] = values
    out["instances"] = len(stats_list)
    return out


STOP_GRACE_SECONDS = 1.0


# How often the waiting main thread wakes up to run signal handlers (a bound
# on how late a Ctrl-C or SIGTERM is acted on).
SIGNAL_POLL_S = 0.5
# A stop that has not ended the instances by then (a forced stop whose
# control request could not get through, so nbdkit waits for its clients)
# is finished by Server.stop: one more forced control request, then SIGKILL.
STOP_WAIT_SECONDS = 10.0


class Stripe:
    """N Servers started, watched and stopped together."""

    def __init__(self, servers):
        self.servers = list(servers)
        self._exited: queue.Queue[int] = queue.Queue()
        self._watchers: list[threading.Thread] = []
        self.stopping = False
        self.stopping_at = 0.0
        self.died: list[tuple[int, int]] = []  # (index, status) of instances that died

    def start(self) -> Stripe:
        """Launch every instance, then wait until all serve; if any fails,
        stop the others and raise its error, naming the instance.  nbdkit
        is launched from this thread (its --exit-with-parent follows the
        launching thread), and the instances start side by side."""
        errors: list[tuple[int, Exception]] = []
        for i, srv in enumerate(self.servers):
            try:
                srv.launch()
            except Exception as exc:  # reported below, naming the instance
                errors.append((i, exc))
                break
        if not errors:
            for i, srv in enumerate(self.servers):
                try:
                    srv.wait_ready()
                except Exception as exc:
                    errors.append((i, exc))
        if errors:
            for srv in self.servers:
                srv.stop()
            i, first = errors[0]
            if len(self.servers) > 1:
                raise type(first)(f"instance {i}: {first}") from None
            raise first
        for i, srv in enumerate(self.servers):
            t = threading.Thread(target=self._watch, args=(i, srv), name=f"watch-{i}", daemon=True)
            t.start()
            self._watchers.append(t)
        return self

    def _watch(self, index, server) -> None:
        server.wait()
        self._exited.put(index)

    def request_stop(self, force: bool = True) -> str | None:
        """Begin stopping every instance (safe in a signal handler).  Without
        ``force``, refuse (and return why) if any instance is in use: all
        go, or none (docs/design.md#security)."""
        if not force:
            # A client that has just hung up may not be closed in nbdkit yet:
            # ask again for up to STOP_GRACE_SECONDS before refusing.
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            while True:
                reasons = [(i, srv.check_stop()) for i, srv in enumerate(self.servers)]
                reasons = [(i, why) for i, why in reasons if why]
                if not reasons or time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
            if reasons:
                if len(self.servers) == 1:
                    return reasons[0][1]
                return "; ".join(f"instance {i}: {why}" for i, why in reasons)
        if not self.stopping:
            self.stopping_at = time.monotonic()
        self.stopping = True
        for srv in self.servers:
            srv.request_stop()
        return None

    def wait(self, on_death=None) -> None:
        """Return when every instance has exited.  An instance that exits
        while no stop was requested is recorded in ``died``, its sockets are
        removed, and ``on_death(index, status)`` is called; the others go on.
        Also returns STOP_WAIT_SECONDS after a stop began that has not ended
        them all: the caller's ``stop()`` then forces the rest."""
        remaining = len(self.servers)
        while remaining:
            # Wake up now and then: CPython runs signal handlers only in the
            # main thread, and a SIGTERM the kernel hands to another thread
            # (a watcher, the metrics server) does not interrupt this wait.
            try:
                index = self._exited.get(timeout=SIGNAL_POLL_S)
            except queue.Empty:
                if self.stopping and time.monotonic() - self.stopping_at > STOP_WAIT_SECONDS:
                    return  # the caller's stop() ends what is left
                continue
            remaining -= 1
            if not self.stopping:
                server = self.servers[index]
                status = server.stop()  # already exited: removes its sockets
                if status == 0:  # stopped through its control socket (zramd stop)
                    continue
                self.died.append((index, status))
                if on_death is not None:
                    on_death(index, status)

    def stop(self) -> None:
        self.stopping = True
        for srv in self.servers:
            srv.request_stop()
        for srv in self.servers:
            srv.stop()

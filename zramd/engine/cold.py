"""Cold pages: background recompression (and writeback) of pages nobody
reads, and the controller that picks how old "cold" is.

Why and how the numbers were chosen: docs/design.md#cold-pages.

Data structure
--------------
``ColdController`` is pure: it holds the cold age (``age_s``), the
promotion rate it measured (``rate_pct_min``, an exponentially weighted
mean over ``RATE_WINDOW_S``), the last promotion count and time it saw,
and a state word.  ``update(now_s, promotions, pages_stored)`` takes the
time and the counters as arguments, so the unit tests drive it with a
synthetic clock.  A *promotion* is a read of a cold page (recompressed, or
written back: the store counts them in ``_load``); the *working set* is
the pages stored (``pages_stored``), and the rate is promotions per minute
in percent of it, Google's far-memory measure (Lagar-Cavilla et al.,
ASPLOS 2019).

``ColdSweeper`` owns one thread (``zramd-cold``).  A *pass* walks the slot
table ``WINDOW_PAGES`` slots at a time: ``scan.aged`` picks the window's
primary-codec pages older than the cold age, ``scan.recompress`` (batch
form) compresses them again ``BATCH_PAGES`` at a time, then the thread
sleeps so that it works at most ``DUTY`` of the time.  With a backing file
a pass ends by marking pages older than the writeback age idle
(``scan.mark_idle``, ``MARK_WINDOW_PAGES`` slots at a time) and asking
the writeback thread for an ``idle`` run (``Writeback.request``).  Between
passes it sleeps half the cold age (``_period``).

Invariants
----------
- the cold age is never below the floor (``--recompress-after``, or
  ``DEFAULT_FLOOR_S`` when only ``--cold-target`` is set);
- with the policy off, a target of 0 (no rate is low enough) or no page
  stored, the thread does no scan: it waits for a setting to change or
  sleeps a whole period, so an impossible target never spins;
- a page is only ever installed through ``store.commit`` (scan.py), which
  compares content under the store's lock: a page rewritten during its
  recompression keeps the new data.

Locking
-------
``_cond`` (its own lock) guards the settings, the thread handle and the
counters of this module; the sweeper holds it only to read or bump them,
never around a scan or a codec call.  The store's lock is taken by the
store itself, once per page (``commit``).  Lock order: ``_cond`` is never
held while calling into the store or the writeback engine.
"""

from __future__ import annotations

import math
import os
import threading
import time

from ..units import PAGE_SIZE
from . import scan

# docs/design.md#cold-pages: the far-memory paper's defaults.
DEFAULT_TARGET_PCT_MIN = 0.2  # promotions per minute, percent of the pages stored
DEFAULT_FLOOR_S = 120.0  # youngest cold age when only --cold-target is given
MAX_AGE_S = 24 * 3600.0  # the controller never waits longer than a day
RATE_WINDOW_S = 60.0  # the promotion rate's averaging time
CONTROL_INTERVAL_S = 10.0  # the controller steps at most this often
GAIN = 0.5  # age *= (rate / target) ** GAIN per step ...
MAX_STEP = 2.0  # ... by at most this factor either way
# With both tiers, pages are written back at this multiple of the cold age.
WRITEBACK_AGE_FACTOR = 2.0
# The sweep's shape (docs/design.md#cold-pages, "Cost").
WINDOW_PAGES = 256  # slots one scan.aged call looks at (its loop holds the GIL)
MARK_WINDOW_PAGES = 4096  # slots one scan.mark_idle call walks (about 0.4 ms)
BATCH_PAGES = 64  # pages one scan.recompress call takes
DUTY = 0.2  # the sweeper works at most this share of its wall time
MIN_PAUSE_S = 0.001  # the least it sleeps between batches
# The thread's nice value: on a busy machine the request threads get the
# CPU first (docs/design.md#cold-pages, "Cost").
SWEEPER_NICE = 19
MIN_PERIOD_S = 0.5  # pass period bounds: half the cold age, within these
MAX_PERIOD_S = 30.0
WRITEBACK_TIMEOUT_S = 600.0


class ColdController:
    """Adapts the cold age so that the promotion rate sits at the target;
    see the module docstring.  No locking: one owner (the sweeper)."""

    def __init__(self, target_pct_min: float, floor_s: float, now_s: float):
        self.target_pct_min = target_pct_min
        self.floor_s = floor_s
        self.age_s = floor_s
        self.rate_pct_min = 0.0
        self.state = "starting"
        self._last_s = now_s
        self._last_promotions: int | None = None

    def set_limits(self, target_pct_min: float, floor_s: float) -> None:
        """New settings: the age starts again from the floor."""
        self.target_pct_min = target_pct_min
        self.floor_s = floor_s
        self.age_s = min(MAX_AGE_S, floor_s)

    def update(self, now_s: float, promotions: int, pages_stored: int) -> float | None:
        """One step at ``now_s`` with the store's promotion count (ever) and
        its pages stored; returns the cold age to act on, or None when
        nothing should be made cold (``state`` says why).  The age moves at
        most once per ``CONTROL_INTERVAL_S``; calls in between only answer."""
        if self._last_promotions is None:
            self._last_promotions, self._last_s = promotions, now_s
            return self._verdict(pages_stored)
        dt = now_s - self._last_s
        if dt < CONTROL_INTERVAL_S:
            return self._verdict(pages_stored)
        fresh = max(0, promotions - self._last_promotions)
        self._last_promotions, self._last_s = promotions, now_s
        rate = fresh * 60.0 * 100.0 / dt / pages_stored if pages_stored else 0.0
        weight = 1.0 - math.exp(-dt / RATE_WINDOW_S)
        self.rate_pct_min += weight * (rate - self.rate_pct_min)
        verdict = self._verdict(pages_stored)
        if verdict is None:
            return None
        ratio = self.rate_pct_min / self.target_pct_min
        step = min(MAX_STEP, max(1 / MAX_STEP, ratio**GAIN))
        self.age_s = min(MAX_AGE_S, max(self.floor_s, self.age_s * step))
        self.state = "at ceiling" if self.age_s >= MAX_AGE_S else "tracking"
        return self.age_s

    def _verdict(self, pages_stored: int) -> float | None:
        if self.target_pct_min <= 0:
            self.state = "impossible target"  # no age keeps the rate at 0
            return None
        if not pages_stored:
            self.state = "no pages"
            return None
        self.state = "tracking"
        return self.age_s


class ColdSweeper:
    """The background thread; see the module docstring.  ``clock`` (seconds,
    monotonic) is injectable for tests; ``sweep`` may be called directly."""

    def __init__(
        self,
        store,
        writeback=None,
        recompress_after_s: float = 0,
        cold_target_pct: float | None = None,
        clock=time.monotonic,
    ):
        self.store = store
        self.writeback = writeback
        self._clock = clock
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._started = self._stopping = False
        self._changed = False
        self.recompress_after_s = recompress_after_s
        self.cold_target_pct = cold_target_pct
        self.controller = ColdController(*self._limits(), clock())
        self.passes = 0
        self.swept_pages = 0  # pages a pass tried to recompress
        self.superseded = 0  # recompressions dropped: the page changed meanwhile
        self.writeback_runs = 0
        self.no_candidates = False
        self.cold_age_s: float | None = None
        self.last_error: str | None = None

    # -- settings --------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self.recompress_after_s > 0 or self.cold_target_pct is not None

    def _limits(self) -> tuple[float, float]:
        target = DEFAULT_TARGET_PCT_MIN if self.cold_target_pct is None else self.cold_target_pct
        floor = self.recompress_after_s if self.recompress_after_s > 0 else DEFAULT_FLOOR_S
        return target, float(floor)

    def set_recompress_after(self, seconds: float) -> None:
        """``zramd set recompress_after``: the floor of the cold age (0 with no
        --cold-target: off)."""
        if seconds < 0:
            raise ValueError("recompress_after must not be negative")
        with self._cond:
            self.recompress_after_s = seconds
            self._reconfigure_locked()

    def set_cold_target(self, pct_min: float | None) -> None:
        if pct_min is not None and not 0 <= pct_min <= 100:
            raise ValueError("cold_target must be 0..100")
        with self._cond:
            self.cold_target_pct = pct_min
            self._reconfigure_locked()

    def _reconfigure_locked(self) -> None:
        self.controller.set_limits(*self._limits())
        self._changed = True
        self._cond.notify_all()
        if self._started and self.enabled and self._thread is None:
            self._spawn_locked()

    # -- life cycle --------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            self._started = True
            if self.enabled and self._thread is None:
                self._spawn_locked()

    def _spawn_locked(self) -> None:
        self._thread = threading.Thread(target=self._run, name="zramd-cold", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _wait(self, seconds: float | None) -> bool:
        """Sleep ``seconds`` (None: until a setting changes); False once
        stopping."""
        with self._cond:
            if not self._stopping and not self._changed:
                self._cond.wait(seconds)
            self._changed = False
            return not self._stopping

    def _pause(self, seconds: float) -> None:
        """Sleep between batches; a stop or a new setting ends it early."""
        with self._cond:
            if not self._stopping and not self._changed:
                self._cond.wait(seconds)

    # -- the thread --------------------------------------------------------
    def _run(self) -> None:
        try:  # this thread only (Linux: a thread id is a process id here)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SWEEPER_NICE)
        except (OSError, AttributeError):
            pass  # not Linux, or not allowed: the duty cycle still bounds it
        while True:
            with self._cond:
                enabled = self.enabled
                self._changed = False  # this loop acts on the settings as they are now
            if not enabled:
                if not self._wait(None):
                    return
                continue
            age = self._control()
            if age is None:  # an impossible target waits for a new setting
                impossible = self.controller.state == "impossible target"
                if not self._wait(None if impossible else self._period(self.controller.floor_s)):
                    return
                continue
            try:
                found = self.sweep(age)
            except Exception as exc:  # a codec or backing error: say it, go on
                with self._cond:
                    self.last_error = f"{type(exc).__name__}: {exc}"
                found = 0
            with self._cond:
                self.no_candidates = found == 0
            if not self._wait(self._period(age)):
                return

    @staticmethod
    def _period(age_s: float) -> float:
        """Seconds between passes: half the cold age, within bounds."""
        return min(MAX_PERIOD_S, max(MIN_PERIOD_S, age_s / 2))

    def promotions(self) -> int:
        return self.store.promoted_recompressed + self.store.promoted_backed

    def _control(self) -> float | None:
        """A controller step (it moves the age at most once per
        CONTROL_INTERVAL_S): the cold age to sweep at, or None."""
        now = self._clock()
        with self._cond:
            self.cold_age_s = self.controller.update(
                now, self.promotions(), self.store.pages_stored
            )
            return self.cold_age_s

    def sweep(self, age_s: float) -> int:
        """One pass at cold age ``age_s``; returns the candidates found (pages
        recompressed, tried or written back)."""
        store = self.store
        found = 0
        if store.recomp_codecs:
            for start in range(0, store.nr_pages, WINDOW_PAGES):
                if self._stopping or self._changed:
                    return found  # a new setting: start again (not a whole pass)
                if start:  # a long pass steps the controller too
                    age_s = self._control() or age_s
                pairs = scan.aged(store, age_s, start, start + WINDOW_PAGES)
                for first in range(0, len(pairs), BATCH_PAGES):
                    if self._stopping or self._changed:
                        return found
                    t0 = time.monotonic()
                    done = scan.recompress(store, batch=pairs[first : first + BATCH_PAGES])
                    found += done["recompressed"] + done["incompressible"]
                    with self._cond:
                        self.swept_pages += done["recompressed"] + done["incompressible"]
                        self.superseded += done["skipped"]
                    work = time.monotonic() - t0
                    self._pause(max(MIN_PAUSE_S, work * (1 - DUTY) / DUTY))
        if self.writeback is not None and not self._stopping:
            factor = WRITEBACK_AGE_FACTOR if store.recomp_codecs else 1.0
            idle = 0
            for start in range(0, store.nr_pages, MARK_WINDOW_PAGES):
                if self._stopping or self._changed:
                    return found
                # a window at a time: a whole-table walk holds the GIL 23 ms a GiB
                idle = scan.mark_idle(store, age_s * factor, start, start + MARK_WINDOW_PAGES)
                self._pause(MIN_PAUSE_S)
            if idle:
                done = self.writeback.request("idle", timeout=WRITEBACK_TIMEOUT_S)
                found += done.get("written", 0)
                with self._cond:
                    self.writeback_runs += 1
        with self._cond:
            self.passes += 1
        return found

    # -- stats -------------------------------------------------------------
    def state(self) -> str:
        if not self.enabled:
            return "off"
        if self.controller.target_pct_min <= 0:
            return "impossible target"  # known before the first step
        c = self.controller.state
        if c != "tracking":
            return c
        return "no candidates" if self.no_candidates else "sweeping"

    def stats(self) -> dict:
        store = self.store
        with self._cond:
            return {
                "cold_state": self.state(),
                "recompress_after": self.recompress_after_s,
                # the target in force (0.2 by default), and the age: 0 when off
                "cold_target": self.controller.target_pct_min if self.enabled else 0,
                "cold_age_s": (self.cold_age_s or 0) if self.enabled else 0,
                "promotion_rate_pct_min": round(self.controller.rate_pct_min, 6),
                "cold_recompressed_bytes": store.recompressed_bytes,
                "cold_backed_bytes": store.bd_count * PAGE_SIZE,
                "cold_passes": self.passes,
                "cold_swept_pages": self.swept_pages,
                "cold_superseded": self.superseded,
                "cold_writeback_runs": self.writeback_runs,
                "cold_last_error": self.last_error,
            }

"""The kernel's zram as the bench's physical-limit peer.

``ZramDevice`` gets a device of its own: it hot_adds a new one where the
kernel offers /sys/class/zram-control, else it uses zram0 only if it is
unused (disksize 0), and never touches a device that is in use. setup()
resets it, sets comp_algorithm (before disksize, as zram requires) and
disksize; teardown() resets it and hot_removes what it added.

Locking: other users of the machine's zram devices (tests, other benches)
may share a lock file; with ``lock_path`` set, the device is held under an
exclusive flock(2) on it from setup() to teardown().
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import IO

from bench.servers import SkipSystem
from zramd.engine.store import MM_STAT_FIELDS  # zram's mm_stat columns, one list

ZRAM_CONTROL = Path("/sys/class/zram-control")


class ZramDevice:
    def __init__(self, algorithm: str, size_bytes: int, lock_path: str | None = None):
        self.algorithm = algorithm
        self.size_bytes = size_bytes
        self.lock_path = lock_path
        self.index: int | None = None
        self.added = False
        self._lock: IO[bytes] | None = None

    @staticmethod
    def unavailable() -> str | None:
        """None if usable, else the reason it is not."""
        if not Path("/sys/block/zram0").exists() and not ZRAM_CONTROL.exists():
            return "kernel has no zram (no /sys/block/zram0; modprobe zram if it is a module)"
        if os.geteuid() != 0:
            return "kernel zram needs root"
        return None

    @property
    def sys(self) -> Path:
        return Path(f"/sys/block/zram{self.index}")

    @property
    def dev(self) -> str:
        return f"/dev/zram{self.index}"

    def setup(self) -> None:
        reason = self.unavailable()
        if reason:
            raise SkipSystem(reason)
        if self.lock_path:
            fd = os.open(
                self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
            self._lock = os.fdopen(fd, "r+b")
            fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            self._setup_device()
        except BaseException:
            self.teardown()
            raise

    def _setup_device(self) -> None:
        try:
            self.index = int((ZRAM_CONTROL / "hot_add").read_text())
            self.added = True
        except OSError:
            self.index = 0
            if int(self.sys.joinpath("disksize").read_text()) != 0:
                self.index = None
                raise SkipSystem(
                    "/dev/zram0 is in use (disksize set) and no new device can be added; "
                    "not touching it"
                ) from None
        try:
            (self.sys / "reset").write_text("1")
            algorithms = (
                (self.sys / "comp_algorithm").read_text().replace("[", "").replace("]", "").split()
            )
            if self.algorithm not in algorithms:
                raise SkipSystem(
                    f"kernel zram has no {self.algorithm} (has: {' '.join(algorithms)})"
                )
            (self.sys / "comp_algorithm").write_text(self.algorithm)
            (self.sys / "disksize").write_text(str(self.size_bytes))
        except OSError as e:
            raise SkipSystem(f"kernel zram not writable: {e}") from e
        deadline = time.monotonic() + 5
        while not os.path.exists(self.dev) and time.monotonic() < deadline:
            time.sleep(0.05)

    def mm_stat(self) -> dict[str, int]:
        values = [int(v) for v in (self.sys / "mm_stat").read_text().split()]
        return dict(zip(MM_STAT_FIELDS, values, strict=False))

    def teardown(self) -> None:
        if self.index is not None:
            try:
                (self.sys / "reset").write_text("1")
            except OSError:
                pass
            if self.added:
                try:
                    (ZRAM_CONTROL / "hot_remove").write_text(str(self.index))
                except OSError:
                    pass
            self.index = None
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

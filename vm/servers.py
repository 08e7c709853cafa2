"""The NBD server under test, and a thread sampling its stats.

``TargetServer`` runs one server process on a Unix socket: kind "zramd"
(`zramd serve`, foreground, stops on SIGTERM; with ``instances`` > 1
`--instances N` on SOCK.0 ... SOCK.N-1; ``serve_args`` appended, e.g.
`--compress async`) or "nbdkit-memory" (`nbdkit -f -U
SOCK memory SIZE`). One thread (the run's) starts and stops it.

``StatsSampler`` is a daemon thread calling ``TargetServer.stats()`` (and
reading the server's RSS) every interval and when poked (a hog pass ended);
the run's thread also samples directly at fixed moments. Locking:
``samples`` and ``errors`` are only appended to (list.append is atomic
under the GIL) and read after stop() has joined the thread, except the
direct sample() calls, which append too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from vm.guest import ROOT
from zramd import process

DEFAULT_DEVICE_SIZE = "1G"
STATS_INTERVAL_S = 2.0


def log(msg: str) -> None:
    print(msg, flush=True)


def zramd_command() -> list[str]:
    """The zramd CLI: $ZRAMD_CLI if set, else the project's venv."""
    if os.environ.get("ZRAMD_CLI"):
        return os.environ["ZRAMD_CLI"].split()
    return [str(ROOT / ".venv" / "bin" / "zramd")]


def zramd_available() -> tuple[bool, str]:
    cmd = zramd_command()
    try:
        p = subprocess.run(cmd + ["serve", "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"{' '.join(cmd)} serve --help: {e}"
    if p.returncode != 0:
        return (
            False,
            f"{' '.join(cmd)} serve --help failed: {(p.stderr or p.stdout).strip()[-400:]}",
        )
    return True, ""


class TargetServer:
    """The NBD server under test, on a Unix socket: start, stats, stop."""

    def __init__(
        self,
        kind: str,
        sock: Path,
        log_path: Path,
        size: str = DEFAULT_DEVICE_SIZE,
        instances: int = 1,
        serve_args: tuple[str, ...] = (),
    ):
        if serve_args and kind != "zramd":
            raise ValueError(f"serve arguments {serve_args} are for zramd, not {kind}")
        self.kind = kind
        self.sock = sock
        self.log_path = log_path
        self.size = size
        self.instances = instances
        self.serve_args = tuple(serve_args)
        self.server: process.ServerProcess | None = None

    def command(self) -> list[str]:
        if self.kind == "zramd":
            striped = ["--instances", str(self.instances)] if self.instances > 1 else []
            return zramd_command() + [
                "serve",
                "--socket",
                str(self.sock),
                "--size",
                self.size,
                *striped,
                *self.serve_args,
            ]
        if self.kind == "nbdkit-memory":
            return ["nbdkit", "-f", "-U", str(self.sock), "memory", self.size]
        raise ValueError(f"unknown server kind {self.kind}")

    def start(self, timeout_s: float = 60) -> None:
        """Returns once every socket is there (zramd's control sockets too: its
        stats come up just after the NBD socket); RuntimeError with the log's tail."""
        self.server = process.ServerProcess(
            self.command(), self.sockets(), self.log_path, control=self.kind == "zramd", cwd=ROOT
        )
        self.server.start(timeout_s)

    @property
    def proc(self) -> subprocess.Popen | None:
        return None if self.server is None else self.server.proc

    def sockets(self) -> list[Path]:
        """The NBD sockets: SOCK, or SOCK.0 ... SOCK.N-1 for striped instances."""
        if self.instances == 1:
            return [self.sock]
        return [Path(f"{self.sock}.{i}") for i in range(self.instances)]

    def alive(self) -> bool:
        return self.server is not None and self.server.alive()

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    def stats(self) -> dict | None:
        """zramd's counters (zram names), or None for servers without any.
        Striped instances: their sum, plus ``per_instance``, each one's."""
        if self.kind != "zramd":
            return None
        per = ["--per-instance"] if self.instances > 1 else []
        doc = json.loads(self._zramd("stats", "--json", *per, timeout_s=30))
        if not per:
            return doc
        return dict(doc["total"], per_instance=[i["stats"] for i in doc["instances"]])

    def compact(self) -> None:
        """zramd's `compact` (every instance); a no-op for other servers."""
        if self.kind == "zramd":
            self._zramd("compact", timeout_s=120)

    def _zramd(self, command: str, *args: str, timeout_s: float) -> str:
        """``zramd COMMAND --socket SOCK ARGS``: its stdout, or RuntimeError."""
        p = subprocess.run(
            zramd_command() + [command, "--socket", str(self.sock), *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if p.returncode != 0:
            raise RuntimeError(f"zramd {command} failed: {(p.stderr or p.stdout).strip()[-300:]}")
        return p.stdout

    def allocated_bytes(self) -> int | None:
        """Bytes the server reports as data (not holes) via nbdinfo --map, if available."""
        if not shutil.which("nbdinfo"):
            return None
        uri = f"nbd+unix:///?socket={self.sock}"
        p = subprocess.run(
            ["nbdinfo", "--map", "--totals", "--json", uri],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if p.returncode != 0:
            log(f"nbdinfo --map failed: {p.stderr.strip()[-300:]}")
            return None
        try:
            rows = json.loads(p.stdout)
        except ValueError:
            log(f"nbdinfo --map: unexpected output {p.stdout[:300]!r}")
            return None
        # --totals --json: [{"size": N, "percent": P, "type": T, "description": "..."}]
        # type bit 0 = hole; anything without it holds data.
        return sum(r["size"] for r in rows if not (r.get("type", 0) & 1))

    def rss_bytes(self) -> dict[str, int]:
        """VmRSS now: of the whole process tree (``zramd serve`` and its
        nbdkit processes), and of the nbdkit processes alone (where the
        pages live)."""
        if self.server is None:
            return {}
        return {
            "rss_bytes": self.server.rss_bytes(),
            "nbdkit_rss_bytes": process.rss_bytes(self.server.nbdkit_pids()),
        }

    def nbdkit_pids(self) -> list[int]:
        """The server's nbdkit processes: the process itself, or the
        children of ``zramd serve`` (one per instance)."""
        return [] if self.server is None else self.server.nbdkit_pids()

    def thread_states(self) -> str:
        """One line per nbdkit thread: name, state, kernel wait channel and
        syscall number (what a stalled server waits on, without a debugger)."""
        lines = []
        for pid in self.nbdkit_pids():
            for task in sorted(Path(f"/proc/{pid}/task").glob("*"), key=lambda t: int(t.name)):
                try:
                    comm = (task / "comm").read_text().strip()
                    state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
                    wchan = (task / "wchan").read_text().strip() or "-"
                    syscall = (task / "syscall").read_text().split()[0]
                except (OSError, IndexError):
                    continue
                lines.append(
                    f"  nbdkit {pid} thread {task.name} {comm}: state {state}, "
                    f"wchan {wchan}, syscall {syscall}"
                )
        return "\n".join(lines)

    def dump_stacks(self) -> int:
        """Ask each zramd nbdkit process for its Python threads' stacks
        (SIGUSR1: written to its log); returns how many were asked."""
        if self.kind != "zramd":
            return 0  # SIGUSR1 would kill a server that does not handle it
        pids = self.nbdkit_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGUSR1)
            except OSError:
                pass
        return len(pids)

    def stop(self, timeout_s: float = 20) -> int | None:
        return None if self.server is None else self.server.stop(timeout_s)

    def __enter__(self) -> TargetServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class StatsSampler(threading.Thread):
    """Samples server stats every `interval_s` and when poked (hog pass ends)."""

    def __init__(self, server: TargetServer, t0: float, interval_s: float = STATS_INTERVAL_S):
        super().__init__(name="stats", daemon=True)
        self.server, self.t0, self.interval_s = server, t0, interval_s
        self.samples: list[dict] = []
        self.errors: list[str] = []
        self._poke = threading.Event()
        self._halt = threading.Event()

    def poke(self) -> None:
        self._poke.set()

    def sample(self, label: str = "") -> dict | None:
        """The server's stats and RSS, stamped (``t_s``) with the middle of
        the `zramd stats` call that read them (seconds since ``t0``)."""
        start = time.monotonic()
        try:
            s = self.server.stats()
        except Exception as e:  # recorded, judged by the checks
            self.errors.append(str(e))
            return None
        if s is not None:
            t_s = (start + time.monotonic()) / 2 - self.t0
            s = dict(s, **self.server.rss_bytes(), t_s=round(t_s, 2), label=label)
            self.samples.append(s)
        return s

    def run(self) -> None:
        while not self._halt.is_set():
            self._poke.wait(self.interval_s)
            if self._halt.is_set():
                break
            label = "pass-end" if self._poke.is_set() else "periodic"
            self._poke.clear()
            self.sample(label)

    def stop(self) -> None:
        self._halt.set()
        self._poke.set()
        self.join(30)

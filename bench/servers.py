"""NBD server processes for the bench: zramd serve (which runs nbdkit itself)
or nbdkit directly, each on Unix sockets in a private temporary directory.

``ServerProcess`` owns one process group: start() returns once every socket
it waits for exists (nbdkit listens right after bind()), stop() sends
SIGTERM, then SIGKILL to every descendant after 10 s, and removes the
sockets. Its log file collects stdout and stderr. Not thread-safe: one
bench thread drives it.

CPU time: ``cpu_seconds()`` sums utime+stime (zramd/process.py, which also
finds the nbdkit processes and reads RSS for the CLI, vm/ and the tests) over
the nbdkit processes of the tree (the whole tree where none is called nbdkit);
a process's counters include its exited threads, so the difference over a
job is the server's work for that job.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from bench.systems import System, size_arg
from zramd import process
from zramd.server import plugin_environment

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
NULL_PLUGIN = BENCH_DIR / "null_plugin.py"


class SkipSystem(Exception):
    """The system cannot run here; the message says why."""


def find_zramd(explicit: str | None) -> str | None:
    """The zramd CLI: explicit, next to this Python, in .venv, or on PATH."""
    if explicit:
        return explicit
    for candidate in (Path(sys.executable).parent / "zramd", ROOT / ".venv" / "bin" / "zramd"):
        if candidate.exists():
            return str(candidate)
    return shutil.which("zramd")


def zramd_serve_has(zramd: str, option: str) -> bool:
    """Whether this zramd's `serve` knows an option (e.g. --instances)."""
    try:
        out = subprocess.run([zramd, "serve", "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return option in out.stdout


def server_command(
    system: System, sock: str, region_bytes: int, zramd: str | None, extra: tuple[str, ...] = ()
) -> list[str]:
    """The command line serving `system` on `sock`; SkipSystem if it cannot run."""
    size = size_arg(region_bytes)
    if system.kind == "zramd":
        if not zramd:
            raise SkipSystem("zramd CLI not found (run `make setup`, or pass --zramd PATH)")
        return [zramd, "serve", "--socket", sock, "--size", size, *system.args, *extra]
    if system.kind == "nbdkit":
        if not shutil.which("nbdkit"):
            raise SkipSystem("nbdkit not installed")
        args = [a.format(size=size, null_plugin=NULL_PLUGIN) for a in system.args]
        return ["nbdkit", "-f", "-U", sock, *args, *extra]
    raise ValueError(f"{system.name}: kind {system.kind!r} is not an NBD server")


def display_command(cmd: list[str]) -> str:
    """A command line for reports: paths inside the checkout relative to it,
    the zramd CLI as `zramd` (no machine's paths in published results)."""
    shown = []
    for arg in map(str, cmd):
        if arg.endswith("/zramd") and os.path.isabs(arg):
            arg = "zramd"
        shown.append(arg.replace(f"{ROOT}/", ""))
    return " ".join(shown)


class ServerProcess:
    """An NBD server process and the sockets it listens on."""

    def __init__(self, cmd: list[str], sockets: list[str], log_path: Path):
        self.cmd = cmd
        self.sockets = sockets
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    @property
    def uris(self) -> list[str]:
        return [f"nbd+unix:///?socket={s}" for s in self.sockets]

    def start(self, timeout_s: float = 30) -> None:
        self._log = open(self.log_path, "ab")
        self._log.write(f"$ {' '.join(map(str, self.cmd))}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            self.cmd,
            env=plugin_environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_tail()}")
            if all(os.path.exists(s) for s in self.sockets):
                time.sleep(0.1)
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"server did not listen on {' '.join(self.sockets)} within {timeout_s} s: "
            f"{self.log_tail()}"
        )

    def log_tail(self, nbytes: int = 600) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - nbytes))
                return f.read().decode(errors="replace").strip().replace("\n", " | ")
        except OSError:
            return ""

    def pids(self) -> list[int]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        return process.descendants(self.proc.pid)

    def rss_bytes(self) -> int:
        return process.rss_bytes(self.pids())

    def cpu_seconds(self) -> float:
        """utime+stime of the nbdkit processes (the whole tree if none is nbdkit)."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        chosen = process.nbdkit_pids(self.proc.pid) or self.pids()
        return sum(process.cpu_seconds(pid) for pid in chosen)

    def stop(self) -> None:
        if self.proc is None:
            return
        process.stop(self.proc, 10)
        self.proc = None
        if self._log:
            self._log.close()
        for s in self.sockets:
            try:
                os.unlink(s)
            except FileNotFoundError:
                pass


def zramd_stats(zramd: str, sock: str) -> dict:
    out = subprocess.run(
        [zramd, "stats", "--socket", sock, "--json"], capture_output=True, text=True, timeout=30
    )
    if out.returncode != 0:
        raise RuntimeError(f"zramd stats failed: {out.stderr.strip() or out.stdout.strip()}")
    return json.loads(out.stdout)


def zramd_stats_settled(zramd: str, sock: str, timeout_s: float = 5.0) -> dict:
    """Stats once they stop changing (asynchronous modes may lag the flush)."""
    deadline = time.monotonic() + timeout_s
    prev = zramd_stats(zramd, sock)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        cur = zramd_stats(zramd, sock)
        if cur == prev:
            return cur
        prev = cur
    return prev

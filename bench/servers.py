"""NBD server processes for the bench: zramd serve (which runs nbdkit itself)
or nbdkit directly, each on Unix sockets in a private temporary directory.

Starting, waiting, RSS, CPU time and stopping are zramd/process.py's
``ServerProcess`` (shared with the CLI, vm/ and the tests): start() returns
once every socket exists (nbdkit listens right after bind()), stop() sends
SIGTERM, then SIGKILL to every descendant after 10 s. ``cpu_seconds()`` sums
utime+stime over the nbdkit processes of the tree; a process's counters
include its exited threads, so the difference over a job is the server's
work for that job. Here: the command lines, the zramd CLI, its stats.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

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


def server_process(
    cmd: list[str], sockets: list[str], log_path: Path, control: bool = False
) -> process.ServerProcess:
    """A server for the bench (zramd/process.py): ready once every socket
    exists, and 0.1 s more (nbdkit listens right after bind())."""
    return process.ServerProcess(
        cmd, sockets, log_path, env=plugin_environment(), control=control, settle_seconds=0.1
    )


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

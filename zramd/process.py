"""Server processes as /proc shows them: the nbdkit process under a
``zramd serve`` (or the process itself when it is nbdkit), its memory
(VmRSS, VmHWM, VmLck) and CPU time (utime+stime), and stopping a server
process (SIGTERM, then SIGKILL to its whole tree).

One helper for the CLI, the bench (bench/servers.py, bench/memory.py), the
VM harness (vm/servers.py) and the tests (tests/e2e/servectl.py), so they all
measure the same process the same way.

Data structure: none; every call reads /proc afresh, and a process that is
gone reads as absent (empty list, None, 0), never an exception. No locking:
nothing here holds state.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
NBDKIT_COMM = "nbdkit"


def _stat_fields(pid: int) -> tuple[str, list[str]] | None:
    """(comm, the fields after comm: [0] is field 3, state) of a process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()


def state(pid: int) -> str:
    """The process's state letter (R, S, T, ...); "Z" for a zombie or a gone process."""
    fields = _stat_fields(pid)
    return "Z" if fields is None else fields[1][0]


def descendants(pid: int) -> list[int]:
    """pid and every process below it, parents before their children."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1][1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def nbdkit_pids(pid: int) -> list[int]:
    """The nbdkit processes of a server: pid itself when it is nbdkit, else
    the nbdkit processes below it (one per instance of ``zramd serve``)."""
    return sorted(p for p in descendants(pid) if (_stat_fields(p) or ("",))[0] == NBDKIT_COMM)


def wait_nbdkit_pid(pid: int, timeout_seconds: float = 10) -> int:
    """The first nbdkit process of a server, waiting for it to be started."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        found = nbdkit_pids(pid)
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise RuntimeError(f"no nbdkit process under {pid}")
        time.sleep(0.05)


def status_bytes(pid: int, keys: tuple[str, ...] = ("VmRSS", "VmHWM", "VmLck")) -> dict[str, int]:
    """The named kB lines of /proc/PID/status, in bytes ({} if it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in keys:
                    out[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def rss_bytes(pids: list[int]) -> int:
    """The summed VmRSS of pids, in bytes (0 for the gone ones)."""
    return sum(status_bytes(pid, ("VmRSS",)).get("VmRSS", 0) for pid in pids)


def cpu_seconds(pid: int) -> float:
    """utime+stime of one process, all its threads; 0 if it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[1][11]) + int(fields[1][12])) / CLOCK_TICKS_PER_SECOND


def stop(proc: subprocess.Popen, timeout_seconds: float) -> int:
    """SIGTERM, and after timeout_seconds SIGKILL to proc and every process
    below it; its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_seconds)
        except subprocess.TimeoutExpired:
            for pid in reversed(descendants(proc.pid)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
    return proc.returncode

"""Server processes: starting one (``launch``: a session of its own, stdin
closed) and waiting until it is ready (``wait_paths``: its sockets exist),
and, as /proc shows them, the nbdkit process under a ``zramd serve`` (or the
process itself when it is nbdkit), its memory (VmRSS, VmHWM, VmLck) and CPU
time (utime+stime), and stopping it (SIGTERM, then SIGKILL to its whole tree).
``ServerProcess`` puts these together for one server with a log file.

One helper for the CLI (zramd/server.py), the bench (bench/servers.py), the
VM harness (vm/servers.py) and the tests (tests/e2e/servectl.py), so they all
start, wait for and measure the same process the same way.

Data structure: the functions hold no state; every call reads /proc afresh,
and a process that is gone reads as absent (empty list, None, 0), never an
exception. ``ServerProcess`` owns its Popen and log file; one thread drives
it (no locking).
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import IO

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


def launch(
    cmd: list[str], log: IO | int | None, stdout: IO | int | None = None, **popen
) -> subprocess.Popen:
    """Starts cmd in a session of its own (a signal to its group reaches the
    whole tree, a terminal's Ctrl-C none of it), stdin from /dev/null, stderr
    to log and stdout there too unless given; ``popen``: env, cwd, text."""
    return subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=log if stdout is None else stdout,
        stderr=log,
        start_new_session=True,
        **popen,
    )


def wait_paths(
    proc: subprocess.Popen, paths: list[str], timeout_seconds: float, poll_seconds: float = 0.05
) -> str | None:
    """Waits until every path exists (``zramd serve`` binds its NBD
    socket(s), then its control socket; nbdkit writes its pidfile once it
    listens). None then; else why not: the process exited, or the time ran out."""
    deadline = time.monotonic() + timeout_seconds
    while not all(os.path.exists(p) for p in paths):
        if proc.poll() is not None:
            return f"exited with status {proc.returncode}"
        if time.monotonic() > deadline:
            return f"no {' and '.join(map(str, paths))} within {timeout_seconds:.0f} s"
        time.sleep(poll_seconds)
    return None


class ServerProcess:
    """One NBD server process with its log (stdout and stderr, after a ``$
    cmd`` line): start() returns once every socket exists (with ``control``,
    each one's zramd control socket SOCK.ctl too, bound just after it),
    stop() signals it and its tree and removes the sockets it left."""

    def __init__(
        self,
        cmd: list[str],
        sockets: list[str],
        log_path: Path,
        env: dict | None = None,
        control: bool = False,
        settle_seconds: float = 0.0,
        **popen,
    ):
        self.cmd, self.sockets, self.log_path = cmd, [str(p) for p in sockets], log_path
        self.ready = self.sockets + ([f"{s}.ctl" for s in self.sockets] if control else [])
        self.env, self.popen, self.settle_seconds = env, popen, settle_seconds
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    @property
    def uris(self) -> list[str]:
        return [f"nbd+unix:///?socket={s}" for s in self.sockets]

    def start(self, timeout_seconds: float = 30) -> ServerProcess:
        self._log = open(self.log_path, "ab")
        self._log.write(f"$ {' '.join(map(str, self.cmd))}\n".encode())
        self._log.flush()
        self.proc = launch(self.cmd, self._log, env=self.env, **self.popen)
        why = wait_paths(self.proc, self.ready, timeout_seconds)
        if why:
            self.stop()
            raise RuntimeError(f"server {why}: {self.log_tail()}")
        time.sleep(self.settle_seconds)
        return self

    def log_tail(self, nbytes: int = 600) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - nbytes))
                return f.read().decode(errors="replace").strip().replace("\n", " | ")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> list[int]:
        return descendants(self.proc.pid) if self.proc is not None and self.alive() else []

    def nbdkit_pids(self) -> list[int]:
        return nbdkit_pids(self.proc.pid) if self.proc is not None and self.alive() else []

    def rss_bytes(self) -> int:
        return rss_bytes(self.pids())

    def cpu_seconds(self) -> float:
        """utime+stime of the nbdkit processes (the whole tree if none is nbdkit)."""
        return sum(cpu_seconds(pid) for pid in self.nbdkit_pids() or self.pids())

    def stop(self, timeout_seconds: float = 10) -> int | None:
        if self.proc is None:
            return None
        returncode = stop(self.proc, timeout_seconds)
        if self._log:
            self._log.close()
        for path in self.ready:  # what a killed server leaves behind
            try:
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)
            except FileNotFoundError:
                pass
        return returncode

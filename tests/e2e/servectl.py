"""Helpers for the tests that run ``zramd serve`` as a user does (a real
process, its banner, its signals): importable as ``servectl``."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time

from zramd import process

ZRAMD = [sys.executable, "-m", "zramd.cli"]
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
# Debian's nbdsh/nbdinfo scripts need the system Python (python3-libnbd).
SYSTEM_ENV = dict(os.environ, PATH="/usr/bin:/bin:/usr/sbin:/sbin")


class Serve:
    """One ``zramd serve`` process: stdout (the banner) read until ready,
    stderr to a file (never a pipe nobody reads)."""

    def __init__(self, workdir: str, *args: str, env: dict | None = None, name: str = "serve"):
        self.stderr_path = os.path.join(workdir, f"{name}.stderr")
        self._stderr = open(self.stderr_path, "w")
        self.proc = process.launch(ZRAMD + ["serve", *args], self._stderr,
                                   stdout=subprocess.PIPE, text=True, env=env)
        lines = []
        for line in self.proc.stdout:
            lines.append(line)
            if "Stop with Ctrl-C" in line:
                break
        self.banner = "".join(lines)

    @property
    def ready(self) -> bool:
        return "Stop with Ctrl-C" in self.banner

    def stderr(self) -> str:
        with open(self.stderr_path) as f:
            return f.read()

    def nbdkit_pid(self) -> int:
        found = process.nbdkit_pids(self.proc.pid)
        assert found, "no nbdkit child"
        return found[0]

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


def wait_gone(pid: int, timeout: float = 30) -> None:
    """Wait for a process that is not our child to exit."""
    deadline = time.monotonic() + timeout
    while process.state(pid) != "Z":
        assert time.monotonic() < deadline, f"process {pid} still running"
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_psk(path: str, user: str = "alice") -> str:
    """A PSK file as psktool writes it (32 random bytes in hex), mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{user}:{secrets.token_hex(32)}\n")
    return path


def stale_socket(path: str) -> None:
    """Leave a Unix socket at ``path`` that nobody listens on (what kill -9 leaves)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen()
    s.close()

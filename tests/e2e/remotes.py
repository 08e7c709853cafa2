"""Real NBD servers for the remote tier's tests (importable as ``remotes``):
``nbdkit memory`` (with filters, on a Unix socket or TCP with TLS-PSK) and
``qemu-storage-daemon`` exporting a qcow2 file.  Each ``Remote`` can be
killed with SIGKILL and started again on the same address: a fresh, empty
export, as a memory server that restarted."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

START_TIMEOUT_S = 20.0
PSK_USER = "zramd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_psk(path: str) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{PSK_USER}:{os.urandom(32).hex()}\n")
    return path


class Remote:
    """One NBD server process the test owns.

    ``kind``: "memory" (nbdkit memory SIZE) or "qcow2" (qemu-storage-daemon).
    ``filters``: nbdkit filters with their parameters, e.g.
    ``[("error", {"error-pread-rate": "100%", ...})]``.  ``tls``: serve
    over TCP on loopback with TLS-PSK required (nbdkit only).  ``netns``:
    run inside that network namespace, listening on ``address``."""

    def __init__(self, workdir: str, name: str = "remote", kind: str = "memory",
                 size: str = "64M", filters=(), tls: bool = False,
                 netns: str | None = None, address: str = "127.0.0.1",
                 threads: int | None = None):
        tool = "nbdkit" if kind == "memory" else "qemu-storage-daemon"
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed")
        self.workdir, self.name, self.kind, self.size = workdir, name, kind, size
        self.filters, self.tls, self.netns, self.address = list(filters), tls, netns, address
        self.threads = threads
        self.socket_path = os.path.join(workdir, f"{name}.sock")
        self.pid_file = os.path.join(workdir, f"{name}.pid")
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.port = free_port() if (tls or netns) else None
        self.psk_file = write_psk(os.path.join(workdir, f"{name}.psk")) if tls else None
        self.proc: subprocess.Popen | None = None
        if kind == "qcow2":
            self.image = os.path.join(workdir, f"{name}.qcow2")

    # -- the address ---------------------------------------------------------
    @property
    def uri(self) -> str:
        if self.tls:
            return (f"nbds://{PSK_USER}@{self.address}:{self.port}/"
                    f"?tls-psk-file={self.psk_file}")
        if self.port is not None:
            return f"nbd://{self.address}:{self.port}/"
        export = "exp" if self.kind == "qcow2" else ""
        return f"nbd+unix:///{export}?socket={self.socket_path}"

    # -- life cycle ----------------------------------------------------------
    def _command(self) -> list[str]:
        if self.kind == "qcow2":
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", self.image, self.size],
                           check=True)
            return ["qemu-storage-daemon",
                    "--blockdev", f"driver=file,node-name=file,filename={self.image},"
                                  "discard=unmap",
                    "--blockdev", "driver=qcow2,node-name=disk,file=file,discard=unmap",
                    "--nbd-server", f"addr.type=unix,addr.path={self.socket_path}",
                    "--export", "type=nbd,id=exp,node-name=disk,name=exp,writable=on",
                    "--pidfile", self.pid_file]
        cmd = ["nbdkit", "-f", "-P", self.pid_file]
        if self.threads is not None:
            cmd += ["--threads", str(self.threads)]
        if self.port is not None:
            cmd += ["-i", self.address, "-p", str(self.port)]
        else:
            cmd += ["-U", self.socket_path]
        if self.tls:
            cmd += ["--tls=require", f"--tls-psk={self.psk_file}"]
        for name, _ in self.filters:
            cmd.append(f"--filter={name}")
        cmd += ["memory", self.size]
        for _, params in self.filters:
            cmd += [f"{k}={v}" for k, v in params.items()]
        return cmd

    def start(self) -> Remote:
        for path in (self.pid_file, self.socket_path):
            if os.path.exists(path):
                os.unlink(path)
        cmd = self._command()
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._ready():
            if self.proc.poll() is not None:
                with open(self.log_path) as f:
                    raise RuntimeError(f"{cmd[0]} exited: {f.read()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[0]} did not start")
            time.sleep(0.02)
        return self

    def _ready(self) -> bool:
        if not os.path.exists(self.pid_file):
            return False
        if self.port is None:
            return os.path.exists(self.socket_path)
        return True

    def kill(self) -> None:
        """SIGKILL: everything the export held is gone."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None
        if self.kind == "qcow2" and os.path.exists(self.image):
            os.unlink(self.image)

    def restart(self) -> Remote:
        self.kill()
        return self.start()

    def __enter__(self) -> Remote:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


class Pause:
    """nbdkit's pause filter, driven through its control socket."""

    def __init__(self, path: str):
        self.path = path

    @property
    def filter(self):
        return ("pause", {"pause-control": self.path})

    def _send(self, command: bytes) -> None:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(self.path)
            s.sendall(command)
            assert s.recv(1) == command.upper()

    def pause(self) -> None:
        self._send(b"p")

    def resume(self) -> None:
        self._send(b"r")

"""Run nbdkit with the zramd plugin as a subprocess.

``Server`` (after ovirt-imageio's helper-process wrapper) builds nbdkit's
command line from ``Settings``, starts it, waits for its socket with a
monotonic deadline, and stops it with SIGTERM, then SIGKILL.  The CLI, the
tests and the benchmarks all use it.  nbdkit runs in the foreground (``-f``)
with ``--exit-with-parent``, so it never outlives whoever started it.

nbdkit's stderr is forwarded line by line by a reader thread (to ``log_file``
or our stderr) and its tail is kept, so that a server that dies during start
reports nbdkit's own words.  The thread blocks in ``readline`` (C).

Locking: a Server is used by one thread at a time (``stop`` may come from a
signal handler in that thread); the reader thread only appends to a deque.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time

from .config import ConfigError, Settings
from .control import ControlError, call, unix_socket_in_use

log = logging.getLogger("zramd.server")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN_PATH = os.environ.get("ZRAMD_PLUGIN") or os.path.join(REPO_ROOT, "plugin", "zramd_plugin.py")
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0


class ServerError(RuntimeError):
    """nbdkit could not be started, or died; the message says why."""


def embedded_python_version(nbdkit: str = "nbdkit") -> str:
    """The Python version nbdkit's python plugin embeds, e.g. '3.11.1'."""
    try:
        out = subprocess.run(
            [nbdkit, "python", "--dump-plugin"], capture_output=True, text=True, check=True
        ).stdout
    except FileNotFoundError:
        raise ServerError(
            f"{nbdkit} not found: install nbdkit and nbdkit-plugin-python (make setup does)"
        ) from None
    except subprocess.CalledProcessError as exc:
        raise ServerError(f"nbdkit has no python plugin: {exc.stderr.strip()}") from None
    for line in out.splitlines():
        if line.startswith("python_version="):
            return line.split("=", 1)[1]
    raise ServerError("nbdkit python --dump-plugin did not say which Python it embeds")


def check_python_version(nbdkit: str = "nbdkit") -> None:
    embedded = embedded_python_version(nbdkit)
    ours = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if ".".join(embedded.split(".")[:2]) != ours:
        raise ServerError(
            f"nbdkit embeds Python {embedded} but zramd runs on Python {ours}: "
            f"rebuild the venv with python{'.'.join(embedded.split('.')[:2])}"
        )


def check_endpoint_free(settings: Settings) -> None:
    """Refuse a socket path or TCP port another server holds, with one line."""
    if settings.socket_path and unix_socket_in_use(settings.socket_path):
        raise ConfigError(f"socket {settings.socket_path} is in use by another server")
    # (a stale NBD socket is replaced by nbdkit; a stale control socket we remove)
    if settings.control_path and os.path.exists(settings.control_path):
        if unix_socket_in_use(settings.control_path):
            raise ConfigError(f"control socket {settings.control_path} is in use by another server")
        os.unlink(settings.control_path)
    if settings.port is not None:
        family = socket.AF_INET6 if ":" in settings.address else socket.AF_INET
        probe = socket.socket(family, socket.SOCK_STREAM)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((settings.address, settings.port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port {settings.port} on {settings.address} is already in use"
                ) from None
            raise ConfigError(
                f"cannot listen on {settings.address}:{settings.port}: {exc.strerror}"
            ) from None
        finally:
            probe.close()


def check_backing_file(settings: Settings) -> None:
    """Refuse an unwritable backing file, or one another zramd holds."""
    if not settings.backing_file:
        return
    from .backing import BackingError, check_backing

    try:
        check_backing(settings.backing_file, settings.backing_size_bytes or settings.size_bytes)
    except BackingError as exc:
        raise ConfigError(exc.strerror) from None


class Server:
    """One nbdkit process serving one zramd export.  Not started on creation."""

    def __init__(
        self,
        settings: Settings,
        nbdkit: str = "nbdkit",
        log_file=None,
    ):
        self.settings = settings.with_defaults().validate()
        self.nbdkit = nbdkit
        self.log_file = log_file
        self.proc: subprocess.Popen | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=40)
        self._reader: threading.Thread | None = None
        # nbdkit writes its pidfile once it accepts connections: our
        # readiness signal, without probe connections (which nbdkit logs).
        self._rundir = tempfile.mkdtemp(prefix="zramd-")
        self._pidfile = os.path.join(self._rundir, "nbdkit.pid")

    # -- addresses -------------------------------------------------------
    @property
    def socket_path(self) -> str | None:
        return self.settings.socket_path

    @property
    def control_path(self) -> str:
        return self.settings.control_path

    @property
    def uri(self) -> str:
        s = self.settings
        if s.socket_path:
            return f"nbd+unix:///?socket={os.path.abspath(s.socket_path)}"
        host = f"[{s.address}]" if ":" in s.address else s.address
        return f"nbd://{host}:{s.port}/"

    # -- command line ----------------------------------------------------
    def command(self) -> list[str]:
        s = self.settings
        cmd = [
            self.nbdkit,
            "-f",
            "--exit-with-parent",
            "--threads",
            str(s.threads),
            "-P",
            self._pidfile,
        ]
        if s.socket_path:
            cmd += ["-U", s.socket_path]
        else:
            cmd += ["-p", str(s.port), "-i", s.address]
        if s.verbose:
            cmd.append("-v")
        # --swap is not passed on: the plugin locks memory itself, without
        # populating nbdkit's unused buffers (zramd/swap.py).
        cmd += ["python", PLUGIN_PATH] + s.plugin_params()
        return cmd

    def environment(self) -> dict:
        """Our environment, with the package and its dependencies importable
        by nbdkit's embedded interpreter
        (docs/design.md#architecture-where-a-request-goes)."""
        env = dict(os.environ)
        paths = [REPO_ROOT, sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        return env

    # -- life cycle ------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> Server:
        return self.launch().wait_ready(timeout)

    def launch(self) -> Server:
        """Check the settings against the system and start nbdkit, without
        waiting for it.  Call it from a thread that outlives the server:
        ``--exit-with-parent`` is the parent *thread's* death signal."""
        check_python_version(self.nbdkit)
        check_endpoint_free(self.settings)
        check_backing_file(self.settings)
        log.debug("starting %s", " ".join(self.command()))
        self.proc = subprocess.Popen(
            self.command(),
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        self._reader = threading.Thread(
            target=self._forward_stderr, name="nbdkit-stderr", daemon=True
        )
        self._reader.start()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT_SECONDS) -> Server:
        """Wait until the launched nbdkit serves (or raise why not)."""
        deadline = time.monotonic() + timeout
        proc = self._started()
        while not self._ready():
            if proc.poll() is not None:
                if self._reader is not None:
                    self._reader.join(2)
                raise ServerError(self._failure_reason())
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"nbdkit did not start listening within {timeout:.0f}s")
            time.sleep(0.02)
        return self

    def _ready(self) -> bool:
        s = self.settings
        return os.path.exists(self._pidfile) and (
            not s.control_path or os.path.exists(s.control_path)
        )

    def _started(self) -> subprocess.Popen:
        if self.proc is None:
            raise ServerError("nbdkit was not started")
        return self.proc

    def _forward_stderr(self) -> None:
        stream = self._started().stderr
        assert stream is not None  # stderr=PIPE
        for line in stream:
            self._tail.append(line.rstrip("\n"))
            out = self.log_file or sys.stderr
            try:
                out.write(line)
                out.flush()
            except ValueError:  # closed log file at shutdown
                pass

    def _failure_reason(self) -> str:
        errors = [line for line in self._tail if "error" in line.lower()]
        lines = errors or list(self._tail)
        detail = lines[-1].strip() if lines else "no message"
        return f"nbdkit exited with status {self._started().returncode}: {detail}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def request_stop(self) -> None:
        """Begin stopping, without waiting (safe in a signal handler).

        nbdkit 1.32 on SIGTERM waits for connected clients to hang up (its
        connection threads sit in a read() the signal does not interrupt),
        so first ask the plugin to end client connections itself.
        """
        if not self.running():
            return
        try:
            call(self.settings.control_path, "shutdown", timeout=2)
        except ControlError:
            pass
        if self.running():
            self._started().send_signal(signal.SIGTERM)

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int | None:
        """Stop nbdkit (then SIGKILL after ``timeout``); remove the sockets.
        Idempotent."""
        proc = self.proc
        if proc is None:
            return None
        self.request_stop()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("nbdkit did not stop within %.0fs: killing it", timeout)
            proc.kill()
            proc.wait()
        if self._reader is not None:
            self._reader.join(2)
        for path in (self.settings.socket_path, self.settings.control_path, self._pidfile):
            if path:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        try:
            os.rmdir(self._rundir)
        except OSError:
            pass
        return proc.returncode

    def wait(self) -> int:
        return self._started().wait()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def __enter__(self) -> Server:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

"""Run nbdkit with the zramd plugin as a subprocess.

``Server`` (after ovirt-imageio's helper-process wrapper) builds nbdkit's
command line from ``Settings``, claims the socket paths (a stale socket is
removed, anything else refuses the start: ``sockets``), starts nbdkit, waits
for its sockets with a monotonic deadline, and stops it through the control
socket, then SIGTERM, then SIGKILL.  The CLI, the tests and the benchmarks all use it.

nbdkit runs in the foreground (``-f``) in its own process group (a Ctrl-C
reaches only the wrapper, which decides whether to stop), with umask 077
(its Unix socket is ``srwx------``), and with ``--exit-with-parent`` unless
serving swap (then it outlives a dead wrapper: docs/design.md#security).
Its stderr is a plain file descriptor, the log file or our own stderr,
never a pipe we read: a stalled wrapper cannot block a request that logs.

Locking: a Server is used by one thread at a time (``request_stop`` may come
from a signal handler in that thread).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time

from . import sockets
from .config import ConfigError, Settings
from .control import ControlError, call
from .tls import TLSError, check_certificates, nbd_uri, psk_username

log = logging.getLogger("zramd.server")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN_PATH = os.environ.get("ZRAMD_PLUGIN") or os.path.join(REPO_ROOT, "plugin", "zramd_plugin.py")
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0


def plugin_environment() -> dict:
    """Our environment, with this package and this interpreter's packages
    (lz4, ...) importable by nbdkit's embedded Python, which starts from
    the system's paths (docs/design.md#architecture-where-a-request-goes)."""
    env = dict(os.environ)
    paths = [REPO_ROOT, sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


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
    """Claim the socket paths (a stale socket is removed; a live one, or
    anything that is not a socket, refuses the start) and refuse a TCP port
    another server holds, with one line."""
    try:
        if settings.socket_path:
            sockets.claim_socket_path(settings.socket_path, "socket")
        if settings.control_path:
            sockets.claim_socket_path(settings.control_path, "control socket")
    except sockets.PathError as exc:
        raise ConfigError(str(exc)) from None
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


def check_tls(settings: Settings) -> None:
    """The TLS credentials exist and nobody else can read them (tls.py)."""
    try:
        if settings.tls_psk:
            psk_username(settings.tls_psk)
        if settings.tls_certificates:
            check_certificates(settings.tls_certificates, settings.tls_verify_peer)
    except TLSError as exc:
        raise ConfigError(str(exc)) from None


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

    def __init__(self, settings: Settings, nbdkit: str = "nbdkit", log_file=None):
        """``log_file``: where nbdkit's stderr goes, an open file or a path
        (appended to); None: our own stderr."""
        self.settings = settings.with_defaults().validate()
        self.nbdkit = nbdkit
        self.log_file = log_file
        self.proc: subprocess.Popen | None = None
        self._log_fd: int | None = None  # our descriptor for nbdkit's stderr
        self._log_offset: int | None = 0  # where this run's lines begin
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
        return nbd_uri(
            socket_path=s.socket_path,
            address=s.address,
            port=s.port,
            tls=s.tls_mode() == "require",
            psk_file=s.tls_psk,
            psk_user=s.tls_user(),
            certificates=s.tls_certificates,
        )

    # -- command line ----------------------------------------------------
    def command(self) -> list[str]:
        s = self.settings
        cmd = [self.nbdkit, "-f", "--threads", str(s.threads), "-P", self._pidfile]
        if not s.swap:  # serving swap, nbdkit outlives a dead wrapper
            cmd.append("--exit-with-parent")
        if s.socket_path:
            cmd += ["-U", s.socket_path]
        else:
            cmd += ["-p", str(s.port), "-i", s.address]
        if s.tls_mode() != "off":
            cmd.append(f"--tls={s.tls_mode()}")
        if s.tls_psk:
            cmd.append(f"--tls-psk={os.path.abspath(s.tls_psk)}")
        if s.tls_certificates:
            cmd.append(f"--tls-certificates={os.path.abspath(s.tls_certificates)}")
        if s.tls_verify_peer:
            cmd.append("--tls-verify-peer")
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
        env = plugin_environment()
        env.pop("NOTIFY_SOCKET", None)  # readiness is the wrapper's to signal
        return env

    # -- life cycle ------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> Server:
        return self.launch().wait_ready(timeout)

    def launch(self) -> Server:
        """Check the settings against the system and start nbdkit, without
        waiting for it.  Call it from a thread that outlives the server:
        ``--exit-with-parent`` is the parent *thread's* death signal."""
        check_python_version(self.nbdkit)
        check_tls(self.settings)
        check_endpoint_free(self.settings)
        check_backing_file(self.settings)
        log.debug("starting %s", " ".join(self.command()))
        self._open_log()
        self.proc = subprocess.Popen(
            self.command(),
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log_fd,
            umask=0o077,
            process_group=0,
        )
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT_SECONDS) -> Server:
        """Wait until the launched nbdkit serves (or raise why not)."""
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self._started().poll() is not None:
                raise ServerError(self._failure_reason())
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"nbdkit did not start listening within {timeout:.0f}s")
            time.sleep(0.02)
        return self

    def _open_log(self) -> None:
        """The descriptor nbdkit's stderr gets (None: inherit ours)."""
        target = self.log_file
        if target is None:
            self._log_fd = None
            return
        if isinstance(target, (str, os.PathLike)):
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            self._log_fd = os.open(target, flags, 0o600)
        else:
            target.flush()
            self._log_fd = os.dup(target.fileno())
        try:
            self._log_offset = os.lseek(self._log_fd, 0, os.SEEK_END)
        except OSError:
            self._log_offset = None

    def _ready(self) -> bool:
        s = self.settings
        return os.path.exists(self._pidfile) and (
            not s.control_path or os.path.exists(s.control_path)
        )

    def _tail(self) -> list[str]:
        """This run's lines of nbdkit's stderr, if they went to a file (read
        through /proc: our descriptor may be write-only)."""
        fd = self._log_fd
        if fd is None or self._log_offset is None or not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        try:
            with open(f"/proc/self/fd/{fd}", "rb") as f:
                end = os.fstat(f.fileno()).st_size
                f.seek(max(self._log_offset, end - 8192))
                return f.read().decode(errors="replace").splitlines()
        except OSError:
            return []

    def _failure_reason(self) -> str:
        tail = self._tail()
        errors = [line for line in tail if "error" in line.lower()]
        lines = errors or tail
        detail = lines[-1].strip() if lines else "its message is above"
        return f"nbdkit exited with status {self._started().returncode}: {detail}"

    def _started(self) -> subprocess.Popen:
        if self.proc is None:
            raise ServerError("nbdkit was not started")
        return self.proc

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_stop(self) -> str | None:
        """Why a stop without force would be refused (clients connected and
        pages stored), or None.  Changes nothing."""
        if not self.running():
            return None
        try:
            call(self.settings.control_path, "stop", timeout=2, check=True)
        except ControlError as exc:
            if str(exc).startswith("in use"):
                return str(exc)
        return None

    def request_stop(self, force: bool = True) -> str | None:
        """Begin stopping, without waiting (safe in a signal handler).
        Returns None, or why the server refuses (only without ``force``:
        clients connected and pages stored, docs/design.md#security).

        nbdkit 1.32 on SIGTERM waits for connected clients to hang up (its
        connection threads sit in a read() the signal does not interrupt),
        so the plugin ends client connections itself (control "stop").
        """
        if not self.running():
            return None
        try:
            call(self.settings.control_path, "stop", timeout=2, force=force)
        except ControlError as exc:
            if not force and str(exc).startswith("in use"):
                return str(exc)
        if self.running():
            self._started().send_signal(signal.SIGTERM)
        return None

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
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None
        # Only sockets are removed: a stop never deletes anything else.
        for path in (self.settings.socket_path, self.settings.control_path):
            if path and sockets.socket_state(path) == "stale":
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        try:
            os.unlink(self._pidfile)
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

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

from . import cgroup, process, sockets
from .control import ControlError, call
from .settings import ConfigError, Settings
from .tls import TLSError, check_certificates, nbd_uri, psk_username
from .units import PAGE_SIZE, format_size

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


def nbdkit_versions(nbdkit: str = "nbdkit") -> str:
    """One line for ``zramd --version``: nbdkit's version and the Python its
    python plugin embeds, or why they are unknown (never raises)."""
    try:
        out = subprocess.run(
            [nbdkit, "--version"], capture_output=True, text=True, check=True, timeout=30
        ).stdout.split()
        nbdkit_text = f"nbdkit {out[1]}" if len(out) > 1 else "nbdkit (unknown version)"
    except (OSError, subprocess.SubprocessError):
        return f"{nbdkit}: not found (install nbdkit and nbdkit-plugin-python: make setup does)"
    try:
        embedded = embedded_python_version(nbdkit)
    except ServerError as exc:
        return f"{nbdkit_text}, {exc}"
    return f"{nbdkit_text}, python plugin embedding Python {embedded}"


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
    """Refuse an unwritable backing file, or one another zramd holds; for a
    remote tier, a PSK file others can read (its connection is made by the
    plugin, engine/remote.py)."""
    from .engine.backing import BackingError

    if settings.backing_uri:
        from urllib.parse import parse_qs, urlsplit

        for psk_file in parse_qs(urlsplit(settings.backing_uri).query).get("tls-psk-file", []):
            try:
                psk_username(psk_file)
            except TLSError as exc:
                raise ConfigError(f"backing URI: {exc}") from None
        from .engine.remote import probe

        try:
            probe(settings.backing_uri, settings.backing_timeout_s)
        except BackingError as exc:
            raise ConfigError(exc.strerror) from None
    if not settings.backing_file:
        return
    from .engine.backing import check_backing

    try:
        check_backing(settings.backing_file, settings.backing_size_bytes or settings.size_bytes)
    except BackingError as exc:
        raise ConfigError(exc.strerror) from None


STOP_CHECK_TIMEOUT_SECONDS = 2.0

# What the wrapper and each nbdkit need besides the stored pages (the
# interpreters, request buffers, the store's tables), and a sixteenth of the
# bound for what else runs there: docs/design.md#memory-cgroups.
HEADROOM_PER_PROCESS_BYTES = 32 * 1024 * 1024


def memory_headroom_bytes(bound_bytes: int, instances: int) -> int:
    """How far below the memory bound the default mem_limit stays."""
    return HEADROOM_PER_PROCESS_BYTES * (instances + 1) + bound_bytes // 16


def memory_bound(cgroup_limit_bytes: int | None, ram_bytes: int) -> tuple[int, str]:
    """The memory a server may use, and what sets it: its cgroup's limit or
    the machine's RAM, whichever is smaller."""
    if cgroup_limit_bytes is not None and cgroup_limit_bytes < ram_bytes:
        return cgroup_limit_bytes, f"the cgroup memory limit {format_size(cgroup_limit_bytes)}"
    return ram_bytes, f"the machine's RAM ({format_size(ram_bytes)})"


def memory_advice(
    settings: Settings, mem_limit_given: bool, cgroup_limit_bytes: int | None, ram_bytes: int
) -> tuple[int | None, str | None]:
    """(the mem_limit to use, a warning line or None).  A device that can
    outgrow its memory bound (``memory_bound``) without a mem_limit gets one
    a headroom below the bound, so that writes fail with ENOSPC before the
    kernel's OOM killer takes every stored page; a mem_limit that was given
    (0 too) is kept, with a warning if it leaves less than the headroom."""
    s = settings
    bound, what = memory_bound(cgroup_limit_bytes, ram_bytes)
    headroom = memory_headroom_bytes(bound, s.instances)
    if mem_limit_given:
        used = s.mem_limit_bytes or s.size_bytes
        if used + headroom <= bound:
            return s.mem_limit_bytes, None
        which = (
            f"mem_limit {format_size(s.mem_limit_bytes)}"
            if s.mem_limit_bytes
            else (f"no mem_limit (device {format_size(s.size_bytes)})")
        )
        return s.mem_limit_bytes, (
            f"{which} leaves less than {format_size(headroom)} of {what}: the kernel's OOM "
            f"killer may kill the server, and every stored page with it, before a write "
            f"fails with ENOSPC"
        )
    if s.mem_limit_bytes or s.size_bytes + headroom <= bound:
        return s.mem_limit_bytes, None
    limit = (bound - headroom) // PAGE_SIZE * PAGE_SIZE
    if limit < s.instances * PAGE_SIZE:
        return 0, (
            f"{what} leaves no room for the device after {format_size(headroom)} of headroom: "
            f"the kernel's OOM killer may kill the server; give --mem-limit"
        )
    return limit, (
        f"no mem_limit given and the device ({format_size(s.size_bytes)}) can outgrow {what}: "
        f"using mem_limit {format_size(limit)}, {format_size(bound - limit)} below it, so that "
        f"writes fail with ENOSPC instead of an OOM kill (--mem-limit overrides)"
    )


def stop_refusal(control_path: str, timeout: float = STOP_CHECK_TIMEOUT_SECONDS, check=False):
    """Ask the server at ``control_path`` to stop without force (``check``:
    only whether it would); return None if it agreed, or why not.  Fail
    safe: only the server's own "not in use" is a yes; no answer (too many
    control clients, a timeout, a malformed reply) counts as in use, with a
    line that says so (docs/design.md#security)."""
    try:
        result = call(control_path, "stop", timeout=timeout, check=check)
    except ControlError as exc:
        if str(exc).startswith("in use"):
            return str(exc)
        return cannot_tell(str(exc))
    if check and result != {"in_use": False}:
        return cannot_tell(f"unexpected reply {str(result)[:80]!r}")
    return None


def cannot_tell(why: str) -> str:
    return (
        f"cannot tell whether it is in use ({why}), so assuming it is; "
        f"force with `zramd stop --force`"
    )


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
        # nbdkit's memory cgroup and its OOM-kill count when it started:
        # was a SIGKILL the OOM killer's (oom_kill_reason)?
        self._memory_cgroup: cgroup.MemoryCgroup | None = None
        self._oom_kills_at_start: int | None = None

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
        self._memory_cgroup = cgroup.memory_cgroup(self.proc.pid)
        if self._memory_cgroup is not None:
            self._oom_kills_at_start = self._memory_cgroup.oom_kills()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT_SECONDS) -> Server:
        """Wait until the launched nbdkit serves (or raise why not)."""
        control = self.settings.control_path
        paths = [self._pidfile] + ([control] if control else [])
        if process.wait_paths(self._started(), paths, timeout, poll_seconds=0.02) is None:
            return self
        if self._started().poll() is not None:
            raise ServerError(self._failure_reason())
        self.stop()
        raise ServerError(f"nbdkit did not start listening within {timeout:.0f}s")

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
        pages stored, or no answer: ``stop_refusal``), or None.  Changes
        nothing."""
        if not self.running():
            return None
        return stop_refusal(self.settings.control_path, check=True)

    def request_stop(self, force: bool = True) -> str | None:
        """Begin stopping, without waiting (safe in a signal handler).
        Returns None, or why the server refuses (only without ``force``:
        clients connected and pages stored, or the control socket did not
        say that it is not in use; docs/design.md#security).

        nbdkit 1.32 on SIGTERM waits for connected clients to hang up (its
        connection threads sit in a read() the signal does not interrupt),
        so the plugin ends client connections itself (control "stop").
        """
        if not self.running():
            return None
        if force:
            try:
                call(self.settings.control_path, "stop", timeout=2, force=True)
            except ControlError:
                pass  # SIGTERM below stops it all the same
        else:
            why_not = stop_refusal(self.settings.control_path)
            if why_not:
                return why_not
        if self.running():
            self._started().send_signal(signal.SIGTERM)
        return None

    def oom_kill_reason(self) -> str | None:
        """After nbdkit died by SIGKILL: "was killed by the kernel's OOM
        killer (...)" when the kernel log names its pid or its memory
        cgroup counted a kill since the start; else None."""
        proc = self.proc
        if proc is None or proc.returncode != -signal.SIGKILL:
            return None
        memory = self._memory_cgroup
        kills = memory.oom_kills() if memory is not None else None
        start = self._oom_kills_at_start
        by_cgroup = kills is not None and start is not None and kills > start
        if not by_cgroup and not cgroup.oom_kill_in_kernel_log(proc.pid, cgroup.kernel_log_lines()):
            return None
        limit = memory.limit_bytes() if memory is not None else None
        where = (
            f"cgroup memory limit {format_size(limit)} reached"
            if limit is not None
            else "the machine ran out of memory"
        )
        return f"was killed by the kernel's OOM killer ({where}); set mem_limit below it"

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

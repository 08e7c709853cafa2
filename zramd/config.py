"""Validated settings, shared by the CLI (``zramd serve``) and the plugin.

``Settings`` is a plain dataclass.  The CLI builds it from options and checks
it before starting nbdkit, so bad options fail with one clear line; it then
passes the device part to the plugin as nbdkit ``key=value`` parameters
(``plugin_params``), which the plugin parses back with the same checks
(``from_plugin_params``).  No state, no locking.
"""

from __future__ import annotations

import dataclasses
import os

from .checksums import make_checksum
from .codecs import make_codec
from .device import DEFAULT_PENDING_LIMIT_BYTES, MODES
from .tls import TLS_MODES, TLSError, check_certificates, psk_username
from .units import format_size, parse_device_size, parse_size

DEFAULT_SIZE = "1G"
DEFAULT_ALGORITHM = "lz4"
# One request thread per connection is the fast shape for a GIL-bound plugin:
# 16 threads were 3-5x slower than 1 (design.md section 4).
DEFAULT_THREADS = 1
MAX_THREADS = 64
# Compression mode and workers, from `make bench` (device.py has the numbers):
# inline beats async 3x on 4 KiB writes and 1.6x on 128 KiB writes here, and
# a second worker made async no faster (24k vs 28k IOPS, 302 vs 302 MB/s).
DEFAULT_COMPRESS_MODE = "inline"
DEFAULT_WORKERS = 1
MAX_WORKERS = 64
FAULTS = ("no-stable-writes",)


class ConfigError(ValueError):
    """A bad setting; the message is one line naming the problem."""


def _bool(value: str, key: str) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key} must be on or off, not {value!r}")


def default_socket_path() -> str:
    """``$XDG_RUNTIME_DIR/zramd.sock`` if set, else ``./zramd.sock``."""
    base = os.environ.get("XDG_RUNTIME_DIR") or os.getcwd()
    return os.path.join(base, "zramd.sock")


@dataclasses.dataclass
class Settings:
    # the device (passed to the plugin)
    size_bytes: int = parse_device_size(DEFAULT_SIZE)
    algorithm: str = DEFAULT_ALGORITHM
    level: int | None = None
    mem_limit_bytes: int = 0
    control_path: str | None = None
    pin_thread_state: bool = True
    compress_mode: str = DEFAULT_COMPRESS_MODE
    workers: int = DEFAULT_WORKERS
    pending_limit_bytes: int = DEFAULT_PENDING_LIMIT_BYTES
    checksum: str = "none"
    fault_inject: str | None = None
    unlock_fault_injection: bool = False
    backing_file: str | None = None
    backing_size_bytes: int = 0          # 0: the device size
    high_watermark_bytes: int = 0        # 0: no automatic writeback
    low_watermark_bytes: int = 0         # 0 with a high mark: 3/4 of it
    recomp_algorithm: str | None = None
    recomp_level: int | None = None
    final_stats_path: str | None = None  # JSON of the last stats, written at exit
    log_file: str | None = None          # None: stderr (docs/design.md#running-as-a-service)
    # the server (nbdkit's own options)
    socket_path: str | None = None
    port: int | None = None
    address: str = "127.0.0.1"
    threads: int = DEFAULT_THREADS
    verbose: bool = False
    swap: bool = False
    # who may reach the device (docs/design.md#security)
    tls: str | None = None               # off|on|require; None: require with credentials
    tls_psk: str | None = None           # nbdkit --tls-psk FILE
    tls_certificates: str | None = None  # nbdkit --tls-certificates DIR
    tls_verify_peer: bool = False
    insecure_tcp: bool = False           # TCP without TLS, asked for explicitly
    # the wrapper process
    pid_file: str | None = None          # written once the sockets listen
    force_stop: bool = False             # SIGTERM stops even while in use

    def validate(self) -> "Settings":
        """Check every field; raise ConfigError naming the first bad one."""
        try:
            make_codec(self.algorithm, self.level)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.size_bytes <= 0 or self.size_bytes % 4096:
            raise ConfigError(f"size must be a positive whole number of 4096-byte pages, "
                              f"not {self.size_bytes}")
        if self.mem_limit_bytes < 0:
            raise ConfigError("mem_limit must not be negative")
        if self.compress_mode not in MODES:
            raise ConfigError(f"unknown compression mode {self.compress_mode!r} "
                              f"(choose from {', '.join(MODES)})")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"workers must be 1..{MAX_WORKERS}, not {self.workers}")
        if self.pending_limit_bytes < 4096:
            raise ConfigError("pending_limit must be at least one page (4096)")
        try:
            make_checksum(self.checksum)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.recomp_algorithm is not None or self.recomp_level is not None:
            try:
                make_codec(self.recomp_algorithm or "zstd", self.recomp_level)
            except ValueError as exc:
                raise ConfigError(f"recompression: {exc}") from None
        if self.high_watermark_bytes or self.low_watermark_bytes:
            if not self.backing_file:
                raise ConfigError("watermarks need a backing file (--backing-file)")
            if self.low_watermark_bytes > self.high_watermark_bytes:
                raise ConfigError("the low watermark must not be above the high watermark")
        if self.backing_size_bytes and self.backing_size_bytes % 4096:
            raise ConfigError("backing size must be a whole number of 4096-byte pages")
        if self.fault_inject is not None:
            if self.fault_inject not in FAULTS:
                raise ConfigError(f"unknown fault {self.fault_inject!r} (known: {', '.join(FAULTS)})")
            if not self.unlock_fault_injection:
                raise ConfigError(f"fault injection {self.fault_inject} corrupts data on purpose: "
                                  f"it is refused unless explicitly unlocked "
                                  f"(--unlock-fault-injection)")
            if self.compress_mode == "inline":
                raise ConfigError(f"fault injection {self.fault_inject} needs async or hybrid "
                                  f"compression")
        if self.port is not None:
            if self.socket_path is not None:
                raise ConfigError("give either a Unix socket or a TCP port, not both")
            if not 1 <= self.port <= 65535:
                raise ConfigError(f"port must be 1..65535, not {self.port}")
        self._validate_tls()
        if not 1 <= self.threads <= MAX_THREADS:
            raise ConfigError(f"threads must be 1..{MAX_THREADS}, not {self.threads}")
        for label, path in (("socket", self.socket_path), ("control socket", self.control_path),
                            ("pid file", self.pid_file)):
            if path is not None:
                parent = os.path.dirname(os.path.abspath(path))
                if not os.path.isdir(parent):
                    raise ConfigError(f"{label} directory does not exist: {parent}")
                if not os.access(parent, os.W_OK | os.X_OK):
                    raise ConfigError(f"{label} directory is not writable: {parent}")
        return self

    def tls_mode(self) -> str:
        """nbdkit's --tls: require when credentials are given, unless told."""
        if self.tls is not None:
            return self.tls
        return "require" if (self.tls_psk or self.tls_certificates) else "off"

    def tls_user(self) -> str | None:
        """The first PSK username (for URIs), or None."""
        return psk_username(self.tls_psk) if self.tls_psk else None

    def _validate_tls(self) -> None:
        """TLS credentials exist and are private; TCP only with TLS required
        unless --insecure-tcp (docs/design.md#security)."""
        mode = self.tls_mode()
        if mode not in TLS_MODES:
            raise ConfigError(f"tls must be one of {', '.join(TLS_MODES)}, not {mode!r}")
        if self.tls_psk and self.tls_certificates:
            raise ConfigError("give either --tls-psk or --tls-certificates, not both")
        if mode != "off" and not (self.tls_psk or self.tls_certificates):
            raise ConfigError(f"--tls={mode} needs --tls-psk FILE or --tls-certificates DIR")
        if mode == "off" and (self.tls_psk or self.tls_certificates):
            raise ConfigError("--tls=off with TLS credentials: drop one of them")
        if self.tls_verify_peer and not self.tls_certificates:
            raise ConfigError("--tls-verify-peer needs --tls-certificates DIR "
                              "(client certificates)")
        try:
            if self.tls_psk:
                psk_username(self.tls_psk)
            if self.tls_certificates:
                check_certificates(self.tls_certificates, self.tls_verify_peer)
        except TLSError as exc:
            raise ConfigError(str(exc)) from None
        if self.insecure_tcp and self.port is None:
            raise ConfigError("--insecure-tcp applies only with --port")
        if self.port is not None and mode != "require" and not self.insecure_tcp:
            raise ConfigError("TCP serves the device to anyone who can reach the port: give "
                              "--tls-psk FILE or --tls-certificates DIR (TLS required), or "
                              "--insecure-tcp to serve it without TLS")

    def with_defaults(self) -> "Settings":
        """Fill in the socket and control paths the user left out."""
        s = dataclasses.replace(self)
        if s.port is None and s.socket_path is None:
            s.socket_path = default_socket_path()
        if s.control_path is None:
            s.control_path = (s.socket_path or os.path.join(
                os.environ.get("XDG_RUNTIME_DIR") or os.getcwd(), f"zramd-{s.port}.sock")) + ".ctl"
        return s

    def low_watermark(self) -> int:
        return self.low_watermark_bytes or self.high_watermark_bytes * 3 // 4

    def plugin_params(self) -> list[str]:
        """The device part as nbdkit ``key=value`` plugin parameters."""
        params = [f"size={self.size_bytes}", f"algorithm={self.algorithm}",
                  f"mem_limit={self.mem_limit_bytes}",
                  f"pin_thread_state={'on' if self.pin_thread_state else 'off'}"]
        if self.level is not None:
            params.append(f"level={self.level}")
        params += [f"threads={self.threads}",
                   f"compress={self.compress_mode}", f"workers={self.workers}",
                   f"pending_limit={self.pending_limit_bytes}", f"checksum={self.checksum}"]
        if self.fault_inject:
            params.append(f"fault_inject={self.fault_inject}")
        if self.backing_file:
            params += [f"backing_file={os.path.abspath(self.backing_file)}",
                       f"backing_size={self.backing_size_bytes or self.size_bytes}"]
        if self.high_watermark_bytes:
            params += [f"high_watermark={self.high_watermark_bytes}",
                       f"low_watermark={self.low_watermark()}"]
        if self.recomp_algorithm or self.recomp_level is not None:
            params.append(f"recomp_algorithm={self.recomp_algorithm or 'zstd'}")
            if self.recomp_level is not None:
                params.append(f"recomp_level={self.recomp_level}")
        if self.unlock_fault_injection:
            params.append("unlock_fault_injection=on")
        if self.control_path:
            params.append(f"control={self.control_path}")
        if self.swap:
            params.append("swap=on")
        if self.final_stats_path:
            params.append(f"final_stats={os.path.abspath(self.final_stats_path)}")
        if self.log_file:
            params.append(f"log_file={os.path.abspath(self.log_file)}")
        return params


PLUGIN_KEYS = ("size", "algorithm", "level", "mem_limit", "control", "pin_thread_state", "swap",
               "threads", "compress", "workers", "pending_limit", "checksum", "fault_inject",
               "unlock_fault_injection", "backing_file", "backing_size", "high_watermark",
               "low_watermark", "recomp_algorithm", "recomp_level", "final_stats", "log_file")


def from_plugin_params(params: dict[str, str]) -> Settings:
    """Parse nbdkit plugin parameters back into Settings (same checks)."""
    unknown = set(params) - set(PLUGIN_KEYS)
    if unknown:
        raise ConfigError(f"unknown parameter {sorted(unknown)[0]!r} "
                          f"(known: {', '.join(PLUGIN_KEYS)})")
    s = Settings()
    try:
        if "size" in params:
            s.size_bytes = parse_device_size(params["size"])
        if "mem_limit" in params:
            s.mem_limit_bytes = parse_size(params["mem_limit"])
        if "pending_limit" in params:
            s.pending_limit_bytes = parse_size(params["pending_limit"])
        for key, field in (("backing_size", "backing_size_bytes"),
                           ("high_watermark", "high_watermark_bytes"),
                           ("low_watermark", "low_watermark_bytes")):
            if key in params:
                setattr(s, field, parse_size(params[key]))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    s.algorithm = params.get("algorithm", s.algorithm)
    if "level" in params:
        s.level = parse_int(params["level"], "level")
    s.control_path = params.get("control")
    s.compress_mode = params.get("compress", s.compress_mode)
    if "workers" in params:
        s.workers = parse_int(params["workers"], "workers")
    if "threads" in params:
        s.threads = parse_int(params["threads"], "threads")
    s.checksum = params.get("checksum", s.checksum)
    s.backing_file = params.get("backing_file")
    s.final_stats_path = params.get("final_stats")
    s.log_file = params.get("log_file")
    s.recomp_algorithm = params.get("recomp_algorithm")
    if "recomp_level" in params:
        s.recomp_level = parse_int(params["recomp_level"], "recomp_level")
    s.fault_inject = params.get("fault_inject")
    if "unlock_fault_injection" in params:
        s.unlock_fault_injection = _bool(params["unlock_fault_injection"], "unlock_fault_injection")
    if "swap" in params:
        s.swap = _bool(params["swap"], "swap")
    if "pin_thread_state" in params:
        s.pin_thread_state = _bool(params["pin_thread_state"], "pin_thread_state")
    return s.validate()


def parse_int(text: str, key: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a whole number, not {text!r}") from None


def describe(settings: Settings) -> str:
    """One line for logs: '1G lz4, no mem_limit'."""
    algo = make_codec(settings.algorithm, settings.level).describe()
    limit = format_size(settings.mem_limit_bytes) if settings.mem_limit_bytes else "no"
    mode = settings.compress_mode
    if mode != "inline":
        mode += f" ({settings.workers} workers)"
    return f"{format_size(settings.size_bytes)} {algo}, {limit} mem_limit, {mode} compression"

"""Validated settings, shared by the CLI (``zramd serve``) and the plugin.

``Settings`` is a plain dataclass whose fields come from the option table
(options.py: one row per option, its type and default).  The CLI builds it
from options and checks it before starting nbdkit, so bad options fail with
one clear line; it then passes the device part to the plugin as nbdkit
``key=value`` parameters (``plugin_params``), which the plugin parses back
with the same checks (``from_plugin_params``).  ``validate`` runs each
row's own check, then the checks across options (``CROSS_CHECKS``).
No state, no locking.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from .engine.backing import BackingError
from .engine.codecs import make_codec, make_codecs
from .engine.remote import check_uri
from .options import (
    BY_PLUGIN_KEY,
    DEFAULT_ADDRESS,
    FAULTS,
    OPTIONS,
    PLUGIN_KEYS,
    ConfigError,
    Option,
    parse_metrics_address,
)
from .units import PAGE_SIZE, format_size

__all__ = [
    "ConfigError",
    "FAULTS",
    "OPTIONS",
    "PLUGIN_KEYS",
    "Settings",
    "describe",
    "from_plugin_params",
    "default_socket_path",
]

T = TypeVar("T")


def default_socket_path() -> str:
    """``$XDG_RUNTIME_DIR/zramd.sock`` if set, else ``./zramd.sock``."""
    base = os.environ.get("XDG_RUNTIME_DIR") or os.getcwd()
    return os.path.join(base, "zramd.sock")


def _fields_from(options: tuple[Option, ...]) -> Callable[[type[T]], type[T]]:
    """Make the decorated class a dataclass with one field per option row."""

    def decorate(cls: type[T]) -> type[T]:
        annotations = dict(cls.__dict__.get("__annotations__", {}))
        for opt in options:
            python = opt.type.python
            annotations[opt.field] = python if opt.default is not None else python | None
            setattr(cls, opt.field, opt.default)
        cls.__annotations__ = annotations
        return dataclasses.dataclass(cls)

    return decorate


# Checks across options, run by Settings.validate after each option's own
# check, in this order; each raises ConfigError with one line.
CROSS_CHECKS: list[Callable[[Settings], None]] = []


def cross_check(func: Callable[[Settings], None]) -> Callable[[Settings], None]:
    CROSS_CHECKS.append(func)
    return func


@_fields_from(OPTIONS)
class Settings:
    """One field per row of options.OPTIONS (name: the row's ``field``)."""

    if TYPE_CHECKING:  # the fields are made from the table at import time
        __dataclass_fields__: ClassVar[dict[str, Any]]

        def __init__(self, **values: Any) -> None: ...
        def __getattr__(self, name: str) -> Any: ...
        def __setattr__(self, name: str, value: Any) -> None: ...

    def validate(self) -> Settings:
        """Check every field; raise ConfigError naming the first bad one."""
        for opt in OPTIONS:
            opt.check_value(getattr(self, opt.field))
        for check in CROSS_CHECKS:
            check(self)
        return self

    def with_defaults(self) -> Settings:
        """Fill in the socket and control paths the user left out."""
        s = dataclasses.replace(self)
        if s.port is None and s.socket_path is None:
            s.socket_path = default_socket_path()
        if s.control_path is None:
            s.control_path = (
                s.socket_path
                or os.path.join(
                    os.environ.get("XDG_RUNTIME_DIR") or os.getcwd(), f"zramd-{s.port}.sock"
                )
            ) + ".ctl"
        return s

    def tls_mode(self) -> str:
        """nbdkit's --tls: require when credentials are given, unless told."""
        if self.tls is not None:
            return self.tls
        return "require" if (self.tls_psk or self.tls_certificates) else "off"

    def tls_user(self) -> str | None:
        """The first PSK username (for URIs), or None."""
        from .tls import psk_username

        return psk_username(self.tls_psk) if self.tls_psk else None

    def low_watermark(self) -> int:
        return self.low_watermark_bytes or self.high_watermark_bytes * 3 // 4

    def plugin_params(self) -> list[str]:
        """The device part as nbdkit ``key=value`` plugin parameters: every
        option with a plugin key whose value is not its default."""
        return [
            f"{opt.plugin_key}={opt.to_text(getattr(self, opt.field))}"
            for opt in OPTIONS
            if opt.plugin_key and getattr(self, opt.field) not in (None, opt.default)
        ]


def from_plugin_params(params: dict[str, str]) -> Settings:
    """Parse nbdkit plugin parameters back into Settings (same checks)."""
    unknown = set(params) - set(PLUGIN_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown parameter {sorted(unknown)[0]!r} (known: {', '.join(PLUGIN_KEYS)})"
        )
    values = {
        BY_PLUGIN_KEY[key].field: BY_PLUGIN_KEY[key].from_text(text) for key, text in params.items()
    }
    return Settings(**values).validate()


def plugin_help() -> str:
    """nbdkit's config_help: every plugin parameter, one per line."""
    lines = []
    for opt in OPTIONS:
        if opt.plugin_key:
            value = (
                "|".join(opt.choices)
                if opt.choices
                else ("on|off" if opt.type.python is bool else opt.metavar or opt.type.name.upper())
            )
            lines.append(f"{opt.plugin_key}={value}  {opt.help_text()}")
    return "\n".join(lines)


# -- checks across options (one value alone is the row's own check) ------------
@cross_check
def _codecs(s: Settings) -> None:
    try:
        make_codec(s.algorithm, s.level)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if s.recomp_algorithm is not None or s.recomp_level is not None:
        try:
            make_codecs(s.recomp_algorithm or "zstd", s.recomp_level)
        except ValueError as exc:
            raise ConfigError(f"recompression: {exc}") from None


@cross_check
def _cold_pages(s: Settings) -> None:
    # a target of 0 makes nothing cold (docs/design.md#cold-pages): it needs nothing
    on = s.recompress_after_s > 0 or bool(s.cold_target_pct)
    if on and not (s.recomp_algorithm or s.recomp_level is not None or s.backing_file):
        raise ConfigError(
            "recompress_after and cold_target need a secondary algorithm "
            "(--recomp-algorithm) or a backing file (--backing-file)"
        )


@cross_check
def _device_size(s: Settings) -> None:
    if s.size_bytes <= 0 or s.size_bytes % PAGE_SIZE:
        raise ConfigError(
            f"size must be a positive whole number of {PAGE_SIZE}-byte pages, not {s.size_bytes}"
        )
    if s.mem_limit_bytes < 0:
        raise ConfigError("mem_limit must not be negative")


@cross_check
def _watermarks(s: Settings) -> None:
    if s.high_watermark_bytes or s.low_watermark_bytes:
        if not (s.backing_file or s.backing_uri):
            raise ConfigError("watermarks need a backing file (--backing-file or --backing-uri)")
        if s.low_watermark_bytes > s.high_watermark_bytes:
            raise ConfigError("the low watermark must not be above the high watermark")


@cross_check
def _backing_encrypt(s: Settings) -> None:
    if s.backing_encrypt and not (s.backing_file or s.backing_uri):
        raise ConfigError(
            "backing file encryption needs a backing file (--backing-file or --backing-uri)"
        )


@cross_check
def _backing_uri(s: Settings) -> None:
    """A remote tier (engine/remote.py) instead of a backing file, never both."""
    if not s.backing_uri:
        return
    if s.backing_file:
        raise ConfigError("give either --backing-file or --backing-uri, not both")
    if s.instances > 1:
        raise ConfigError("--backing-uri serves one instance: striped instances would share it")
    try:
        check_uri(s.backing_uri)
    except BackingError as exc:
        raise ConfigError(exc.strerror) from None


@cross_check
def _writeback_compressed(s: Settings) -> None:
    if s.writeback_compressed and not (s.backing_file or s.backing_uri):
        raise ConfigError(
            "compressed writeback needs a backing store (--backing-file or --backing-uri)"
        )


@cross_check
def _fault_injection(s: Settings) -> None:
    if s.fault_inject is None:
        return
    if not s.unlock_fault_injection:
        raise ConfigError(
            f"fault injection {s.fault_inject} corrupts data on purpose: "
            f"it is refused unless explicitly unlocked "
            f"(--unlock-fault-injection)"
        )
    if s.compress_mode == "inline":
        raise ConfigError(f"fault injection {s.fault_inject} needs async or hybrid compression")


@cross_check
def _endpoint(s: Settings) -> None:
    if s.port is not None and s.socket_path is not None:
        raise ConfigError("give either a Unix socket or a TCP port, not both")
    if s.port is None and s.address != DEFAULT_ADDRESS:
        raise ConfigError("--address applies only with --port")


@cross_check
def _tls(s: Settings) -> None:
    """TCP only with TLS required, unless --insecure-tcp: swap holds other
    processes' secrets (docs/design.md#security).  The credential files
    themselves are checked before nbdkit starts (server.check_tls)."""
    mode = s.tls_mode()
    if s.tls_psk and s.tls_certificates:
        raise ConfigError("give either --tls-psk or --tls-certificates, not both")
    if mode != "off" and not (s.tls_psk or s.tls_certificates):
        raise ConfigError(f"--tls={mode} needs --tls-psk FILE or --tls-certificates DIR")
    if mode == "off" and (s.tls_psk or s.tls_certificates):
        raise ConfigError("--tls=off with TLS credentials: drop one of them")
    if s.tls_verify_peer and not s.tls_certificates:
        raise ConfigError("--tls-verify-peer needs --tls-certificates DIR (client certificates)")
    if s.insecure_tcp and s.port is None:
        raise ConfigError("--insecure-tcp applies only with --port")
    if s.port is not None and mode != "require" and not s.insecure_tcp:
        raise ConfigError(
            "TCP serves the device to anyone who can reach the port: give "
            "--tls-psk FILE or --tls-certificates DIR (TLS required), or "
            "--insecure-tcp to serve it without TLS"
        )


@cross_check
def _socket_directories(s: Settings) -> None:
    for label, path in (
        ("socket", s.socket_path),
        ("control socket", s.control_path),
        ("pid file", s.pid_file),
    ):
        if path is not None:
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                raise ConfigError(f"{label} directory does not exist: {parent}")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"{label} directory is not writable: {parent}")


@cross_check
def _metrics(s: Settings) -> None:
    if s.metrics_address is not None:
        parse_metrics_address(s.metrics_address, s.metrics_insecure_address)
    elif s.metrics_insecure_address:
        raise ConfigError("metrics_insecure_address applies only with a metrics address")


def describe(settings: Settings) -> str:
    """One line for logs: '1G lz4, no mem_limit'."""
    algo = make_codec(settings.algorithm, settings.level).describe()
    limit = format_size(settings.mem_limit_bytes) if settings.mem_limit_bytes else "no"
    mode = settings.compress_mode
    if mode != "inline":
        mode += f" ({settings.workers} workers)"
    return f"{format_size(settings.size_bytes)} {algo}, {limit} mem_limit, {mode} compression"

"""Every ``zramd serve`` option and every knob of a running device, declared once.

``ROWS`` is a table with one ``Option`` row per setting; ``OPTIONS`` is its
rows that are ``zramd serve`` options (``serve=False``: a knob of the
running device only, e.g. ``mem_used_max``).  Everything else is derived
from it:

- the ``Settings`` dataclass in settings.py (one field per serve row, its default),
- the ``zramd serve`` arguments in cli.py (flags, aliases, help, defaults),
- the key of ``zramd serve --config FILE`` (config_file.py: the long flag
  with underscores),
- the nbdkit plugin parameters (``plugin_key``): ``Settings.plugin_params``
  writes them, ``settings.from_plugin_params`` reads them back in the
  plugin, and the plugin's ``config_help`` lists them,
- how ``--instances N`` shares the value out (``split``, one of
  ``SPLITS``: instances.instance_settings and ``zramd set``),
- for a row with a ``runtime`` (``Runtime``): the ``zramd set KNOB`` choice
  and usage (``KNOBS``: knob -> its rows), the control command ``set``
  (commands.py), the running value's metric (metrics.METRICS) and the
  ``while serving`` note in ``--help``,
- reading values from any other source (a config file, the environment):
  ``Option.from_text`` for text and ``Option.from_value`` for typed values
  (TOML and JSON give ints and bools), both raising ``ConfigError`` with one line.

A value is checked in two steps, whatever its source: the row's ``check``
(this value alone, e.g. a range) and then ``settings.Settings.validate``'s
cross-field checks (e.g. a zstd level needs zstd; for a ``set``, on the
settings the running device would have).  Adding an option is one row here
plus, if it depends on other options, one cross-field check in settings.py;
CONTRIBUTING.md walks through it, and through a runtime-settable one.
tests/unit/test_options.py round-trips every serve row CLI -> plugin params
-> Settings using its ``example``; tests/unit/test_knobs.py sets every knob.

No state, no locking: the table is built at import and never changed.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Callable
from typing import Any

from .engine.checksums import CHECKSUMS
from .engine.codecs import CODECS, MAX_RECOMP_CODECS, make_codecs
from .engine.device import DEFAULT_PENDING_LIMIT_BYTES, MODES
from .engine.remote import DEFAULT_TIMEOUT_S
from .engine.writeback import MAX_WRITEBACK_BATCH_PAGES, WRITEBACK_BATCH_PAGES
from .units import PAGE_SIZE, format_size, parse_device_size, parse_size, physical_memory_bytes


class ConfigError(ValueError):
    """A bad setting; the message is one line naming the problem."""


def parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"must be on or off, not {text!r}")


@dataclasses.dataclass(frozen=True)
class ValueType:
    """How a value is read from text and written as text."""

    name: str  # for messages: "size", "int", ...
    python: type  # the Settings field's type
    parse: Callable[[str], Any]  # text -> value; ValueError: one line
    format: Callable[[Any], str] = str  # value -> text (plugin parameters)


SIZE = ValueType("size", int, parse_size, str)
DEVICE_SIZE = ValueType("size", int, parse_device_size, str)
INT = ValueType("int", int, int)
STR = ValueType("str", str, str)
PATH = ValueType("path", str, str, os.path.abspath)  # absolute for nbdkit
BOOL = ValueType("bool", bool, parse_bool, lambda v: "on" if v else "off")
FLOAT = ValueType("number", float, float, repr)


@dataclasses.dataclass(frozen=True)
class Runtime:
    """How a running device takes a new value of a row: ``zramd set KNOB``
    and the control command ``set`` (zramd/commands.py).

    Rows with the same ``knob`` are set together, in table order (zram's
    ``watermarks HIGH [LOW]``); a row left out of a set takes its default.
    ``apply(device, values)`` gets every row of the knob as ``{field:
    value}`` once all values and the settings they make are valid, and goes
    through the device's own locked setters."""

    knob: str  # `zramd set KNOB`
    apply: Callable[[Any, dict[str, Any]], None]
    stat: str | None = None  # the stats key showing the running value, and so its metric
    metric_help: str | None = None  # the metric's HELP (default: the row's help)
    metavar: str | None = None  # `zramd set` usage, e.g. HIGH
    optional: bool = False  # may be left out (a later value of a shared knob)
    needs_backing: bool = False  # the device needs a backing file (its writeback)


# How a value is shared out over N striped instances (zramd/instances.py):
# "pages": a size split in whole 4 KiB pages (0, "none", stays 0 in each);
# "count": a page count split as evenly; "suffix": a path that gets ".i";
# "control": a control socket path, X.ctl -> X.i.ctl; "port": P -> P+i.
SPLITS = ("pages", "count", "suffix", "control", "port")


@dataclasses.dataclass(frozen=True)
class Option:
    """One setting: its field, type, default, CLI flags, plugin key, and how
    it splits over striped instances."""

    name: str  # the long flag without "--", e.g. "mem-limit"
    field: str  # the Settings attribute, e.g. "mem_limit_bytes"
    type: ValueType
    default: Any
    help: str
    plugin_key: str | None = None  # nbdkit plugin parameter; None: the wrapper's own
    runtime: Runtime | None = None  # how a running device takes a new value
    serve: bool = True  # False: a knob of the running device only, no serve option
    aliases: tuple[str, ...] = ()  # more CLI flags, e.g. ("--disksize",) or ("-U",)
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    check: Callable[[Any], None] | None = None  # this value alone; raise ConfigError
    group: str | None = None  # CLI: options of one group exclude each other
    default_help: str | None = None  # how --help shows the default, when not the value
    cli_flag: str | None = None  # CLI flag of a bool defaulting on, e.g. "--no-pin-..."
    example: str | None = None  # a valid non-default value (text), for the tests
    # How `--instances N` (and `zramd set` on striped instances) shares the
    # value out: one of SPLITS, or None for the same value in every instance.
    split: str | None = None

    def __post_init__(self) -> None:
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"option {self.name}: split {self.split!r} is not one of {SPLITS}")

    @property
    def flags(self) -> tuple[str, ...]:
        return (self.cli_flag or f"--{self.name}",) + self.aliases

    def parse_text(self, text: str) -> Any:
        """The value ``text`` stands for, unchecked; ConfigError: one line."""
        try:
            return self.type.parse(text)
        except ValueError as exc:
            if self.type.parse is int:
                raise ConfigError(f"{self.label} must be a whole number, not {text!r}") from None
            if self.type.parse is float:
                raise ConfigError(f"{self.label} must be a number, not {text!r}") from None
            message = str(exc)
            if message.startswith("must "):
                message = f"{self.label} {message}"
            raise ConfigError(message) from None

    def from_text(self, text: str) -> Any:
        """The checked value of ``text`` (CLI, plugin parameter, config file)."""
        value = self.parse_text(text)
        self.check_value(value)
        return value

    def from_value(self, value: Any) -> Any:
        """A typed value (e.g. from TOML): text is parsed, other types must match."""
        if isinstance(value, str) and self.type.python is not str:
            return self.from_text(value)
        if self.type.python is float and type(value) is int:
            value = float(value)  # TOML's 1 for 1.0
        if value is not None and (type(value) is not self.type.python):
            article = "an" if self.type.name[0] in "aeiou" else "a"
            raise ConfigError(f"{self.label} must be {article} {self.type.name}, not {value!r}")
        if (
            self.type.name == "size" and isinstance(value, int) and value < 0
        ):  # only text is unsigned
            raise ConfigError(f"{self.label} must not be negative")
        self.check_value(value)
        return value

    def check_value(self, value: Any) -> None:
        if value is None:
            return
        if self.choices is not None and value not in self.choices:
            raise ConfigError(
                f"{self.label} must be one of {', '.join(self.choices)}, not {value!r}"
            )
        if self.check is not None:
            self.check(value)

    def to_text(self, value: Any) -> str:
        return self.type.format(value)

    @property
    def label(self) -> str:
        """The option's name in messages (the plugin key, zram's spelling)."""
        return self.plugin_key or self.name.replace("-", "_")

    def help_text(self) -> str:
        shown = self.default_help
        if shown is None and self.default is not None and self.type is not BOOL:
            shown = format_size(self.default) if self.type.name == "size" else str(self.default)
        text = f"{self.help} (default {shown})" if shown else self.help
        if self.runtime:
            text += f"; while serving: zramd set {self.runtime.knob}"
        return text


# -- checks of one value ------------------------------------------------------
def in_range(label: str, low: int, high: int) -> Callable[[int], None]:
    def check(value: int) -> None:
        if not low <= value <= high:
            raise ConfigError(f"{label} must be {low}..{high}, not {value}")

    return check


def at_least(label: str, low: int, unit: str = "") -> Callable[[int], None]:
    def check(value: int) -> None:
        if value < low:
            raise ConfigError(f"{label} must be at least {low}{unit}, not {value}")

    return check


def both(*checks: Callable[[Any], None]) -> Callable[[Any], None]:
    """A check made of several, run in order."""

    def check(value: Any) -> None:
        for each in checks:
            each(value)

    return check


def at_most_ram(label: str) -> Callable[[int], None]:
    """A memory amount larger than the machine's RAM is a mistake (1e38):
    refused (docs/design.md#security)."""

    def check(value: int) -> None:
        ram = physical_memory_bytes()
        if value > ram:
            raise ConfigError(
                f"{label} must be at most {format_size(ram)} (the physical memory), not {value}"
            )

    return check


def whole_pages(label: str) -> Callable[[int], None]:
    def check(value: int) -> None:
        if value % PAGE_SIZE:
            raise ConfigError(f"{label} must be a whole number of {PAGE_SIZE}-byte pages")

    return check


def parse_metrics_address(text: str, allow_remote: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT``, or ``PORT`` for 127.0.0.1) -> (host,
    port).  Only a loopback
    address unless ``allow_remote``: the metrics tell anyone who can reach
    them how much and how fast this machine swaps
    (docs/design.md#running-as-a-service)."""
    if str(text).strip().isdigit():  # a port alone: loopback
        text = f"127.0.0.1:{str(text).strip()}"
    host, sep, port_text = str(text).rpartition(":")
    if not sep or not host:
        raise ConfigError(f"metrics_address must be HOST:PORT or PORT, not {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"metrics port must be a number, not {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"metrics port must be 0..65535, not {port}")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ConfigError(
                f"metrics address must be an IP address (or localhost), not {host!r}"
            ) from None
        host, addr = "127.0.0.1", ipaddress.ip_address("127.0.0.1")
    if not addr.is_loopback and not allow_remote:
        raise ConfigError(
            f"metrics address {host} is not loopback: the metrics show how "
            f"much this machine swaps to anyone who can reach them; add "
            f"--metrics-insecure-address to allow it"
        )
    return host, port


def _metrics_address_syntax(value: str) -> None:
    parse_metrics_address(value, allow_remote=True)  # loopback: a check across options


# -- defaults that are choices, with their reasons -----------------------------
# One request thread per connection is the fast shape for a GIL-bound plugin
# (docs/design.md#tuning-constants).
DEFAULT_THREADS = 1
MAX_THREADS = 64
# Inline compression beats async on this machine kind
# (docs/design.md#compression-modes, docs/design.md#tuning-constants).
DEFAULT_COMPRESS_MODE = "inline"
DEFAULT_WORKERS = 1
MAX_WORKERS = 64
FAULTS = ("no-stable-writes",)
DEFAULT_ADDRESS = "127.0.0.1"
# Far more than the cores of any machine this runs on, few enough that a
# typo (--instances 1000) is caught rather than starting 1000 interpreters.
MAX_INSTANCES = 64
# Page counts above this are refused: no device has 2**48 pages, and a bound
# keeps arithmetic on them cheap (as the control commands' counts).
MAX_PAGE_COUNT = 1 << 48
TLS_MODES = ("off", "on", "require")


# -- what a running device does with a knob's values (Runtime.apply) ---------
def _set_mem_limit(device: Any, v: dict[str, Any]) -> None:
    device.store.set_mem_limit(v["mem_limit_bytes"])


def _reset_mem_used_max(device: Any, v: dict[str, Any]) -> None:
    device.store.reset_mem_used_max()


def _set_watermarks(device: Any, v: dict[str, Any]) -> None:
    high = v["high_watermark_bytes"]
    device.writeback.set_watermarks(high, v["low_watermark_bytes"] or high * 3 // 4)


def _set_writeback_batch_size(device: Any, v: dict[str, Any]) -> None:
    device.writeback.set_batch_size(v["writeback_batch_pages"])


def _set_writeback_limit(device: Any, v: dict[str, Any]) -> None:
    device.writeback.set_limit(pages=v["writeback_limit_pages"])


def _set_writeback_limit_enable(device: Any, v: dict[str, Any]) -> None:
    device.writeback.set_limit(enable=v["writeback_limit_enable"])


def _set_recompress_after(device: Any, v: dict[str, Any]) -> None:
    device.cold.set_recompress_after(v["recompress_after_s"])


def _set_cold_target(device: Any, v: dict[str, Any]) -> None:
    device.cold.set_cold_target(v["cold_target_pct"])


def _recomp_algorithms(value: str) -> None:
    """``NAME[:LEVEL],...``, up to three (codecs.make_codecs)."""
    try:
        make_codecs(value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def percent(label: str) -> Callable[[float], None]:
    def check(value: float) -> None:
        if not 0 <= value <= 100:  # nan and inf fail too
            raise ConfigError(f"{label} must be a percentage 0..100, not {value}")

    return check


def only_zero(label: str, why: str) -> Callable[[int], None]:
    def check(value: int) -> None:
        if value != 0:
            raise ConfigError(f"{label} {why}")

    return check


ROWS: tuple[Option, ...] = (
    # -- the device ------------------------------------------------------------
    Option(
        "size",
        "size_bytes",
        DEVICE_SIZE,
        parse_device_size("1G"),
        "device size, whole 4 KiB pages",
        plugin_key="size",
        aliases=("--disksize",),
        metavar="SIZE",
        example="64M",
        split="pages",
    ),
    Option(
        "algorithm",
        "algorithm",
        STR,
        "lz4",
        "compression algorithm",
        plugin_key="algorithm",
        aliases=("--comp-algorithm",),
        choices=tuple(sorted(CODECS)),
        example="zstd",
    ),
    Option(
        "level",
        "level",
        INT,
        None,
        "zstd compression level, 1-22",
        plugin_key="level",
        default_help="3",
        example="9",
    ),
    Option(
        "mem-limit",
        "mem_limit_bytes",
        SIZE,
        0,
        "most memory the compressed data may use; writes past it fail with ENOSPC",
        plugin_key="mem_limit",
        runtime=Runtime(
            "mem_limit",
            _set_mem_limit,
            stat="mem_limit",
            metric_help="mm_stat mem_limit: most memory the stored pages may cost, 0 for no limit",
        ),
        metavar="SIZE",
        check=at_most_ram("mem_limit"),
        default_help="no limit",
        example="32M",
        split="pages",
    ),
    Option(
        "compress",
        "compress_mode",
        STR,
        DEFAULT_COMPRESS_MODE,
        "where pages are compressed: in the request thread (inline), on worker threads "
        "after the reply (async), or async only for requests of 64 KiB and more (hybrid)",
        plugin_key="compress",
        choices=MODES,
        example="async",
    ),
    Option(
        "workers",
        "workers",
        INT,
        DEFAULT_WORKERS,
        "compression worker threads for async/hybrid",
        plugin_key="workers",
        check=in_range("workers", 1, MAX_WORKERS),
        example="2",
    ),
    Option(
        "pending-limit",
        "pending_limit_bytes",
        SIZE,
        DEFAULT_PENDING_LIMIT_BYTES,
        "most uncompressed data waiting for workers; past it writes compress inline",
        plugin_key="pending_limit",
        metavar="SIZE",
        check=both(
            at_least("pending_limit", PAGE_SIZE, " (one page)"), at_most_ram("pending_limit")
        ),
        example="4M",
    ),
    Option(
        "checksum",
        "checksum",
        STR,
        "none",
        "per-page checksums, verified on every read",
        plugin_key="checksum",
        choices=("none", *sorted(CHECKSUMS)),
        example="xxh3",
    ),
    Option(
        "fault-inject",
        "fault_inject",
        STR,
        None,
        "testing only: no-stable-writes hands nbdkit's own buffer to the workers "
        "(corrupts data); needs --unlock-fault-injection",
        plugin_key="fault_inject",
        choices=FAULTS,
        example="no-stable-writes",
    ),
    Option(
        "unlock-fault-injection",
        "unlock_fault_injection",
        BOOL,
        False,
        "really allow --fault-inject",
        plugin_key="unlock_fault_injection",
        example="on",
    ),
    Option(
        "backing-file",
        "backing_file",
        PATH,
        None,
        "file or block device for written-back pages (created sparse if missing)",
        plugin_key="backing_file",
        metavar="PATH",
        example="backing.img",
        split="suffix",
    ),
    Option(
        "backing-uri",
        "backing_uri",
        STR,
        None,
        "NBD export for written-back pages instead of a file (nbd://, nbds://, nbd+unix://, "
        "nbds+unix://; TLS with ?tls-psk-file=FILE); always encrypted",
        plugin_key="backing_uri",
        metavar="URI",
        example="nbd+unix:///?socket=/run/cold.sock",
    ),
    Option(
        "backing-timeout",
        "backing_timeout_s",
        INT,
        DEFAULT_TIMEOUT_S,
        "longest a read of a remote page waits before it fails with EIO (--backing-uri)",
        plugin_key="backing_timeout",
        metavar="SECONDS",
        check=in_range("backing timeout", 1, 3600),
        example="5",
    ),
    Option(
        "backing-size",
        "backing_size_bytes",
        SIZE,
        0,
        "size of a new backing file",
        plugin_key="backing_size",
        metavar="SIZE",
        check=whole_pages("backing size"),
        default_help="the device size",
        example="128M",
        split="pages",
    ),
    Option(
        "backing-encrypt",
        "backing_encrypt",
        STR,
        None,
        "encrypt written-back pages (AEAD) with a key made at start and kept only in memory",
        plugin_key="backing_encrypt",
        metavar="CIPHER",
        choices=("aes-256-gcm", "chacha20-poly1305"),
        default_help="off",
        example="aes-256-gcm",
    ),
    Option(
        "writeback-compressed",
        "writeback_compressed",
        BOOL,
        False,
        "written-back pages keep their compressed form, packed several to a 4 KiB block "
        "(needs --backing-file)",
        plugin_key="writeback_compressed",
        example="on",
    ),
    Option(
        "writeback-batch-size",
        "writeback_batch_pages",
        INT,
        WRITEBACK_BATCH_PAGES,
        "pages writeback writes together (zram's writeback_batch_size)",
        plugin_key="writeback_batch_size",
        check=in_range("writeback_batch_size", 1, MAX_WRITEBACK_BATCH_PAGES),
        runtime=Runtime(
            "writeback_batch_size",
            _set_writeback_batch_size,
            stat="writeback_batch_pages",
            metric_help="pages writeback writes together",
            metavar="PAGES",
            needs_backing=True,
        ),
        metavar="PAGES",
        example="16",
    ),
    Option(
        "high-watermark",
        "high_watermark_bytes",
        SIZE,
        0,
        "automatic writeback: above this much memory used, write back the coldest pages "
        "(needs --backing-file)",
        plugin_key="high_watermark",
        check=at_most_ram("high_watermark"),
        runtime=Runtime(
            "watermarks",
            _set_watermarks,
            stat="high_watermark",
            metric_help="automatic writeback starts above this mem_used_total, 0 for off",
            metavar="HIGH",
            needs_backing=True,
        ),
        metavar="SIZE",
        default_help="off",
        example="8M",
        split="pages",
    ),
    Option(
        "low-watermark",
        "low_watermark_bytes",
        SIZE,
        0,
        "...until memory used is below this",
        plugin_key="low_watermark",
        check=at_most_ram("low_watermark"),
        runtime=Runtime(
            "watermarks",
            _set_watermarks,
            stat="low_watermark",
            metric_help="automatic writeback stops below this mem_used_total",
            metavar="LOW",
            optional=True,
            needs_backing=True,
        ),
        metavar="SIZE",
        default_help="3/4 of the high watermark",
        example="4M",
        split="pages",
    ),
    Option(
        "recomp-algorithm",
        "recomp_algorithm",
        STR,
        None,
        f"secondary algorithms for recompression, up to {MAX_RECOMP_CODECS} in priority "
        f"order, NAME[:LEVEL],... (e.g. zstd or zstd:3,zstd:19; names: "
        f"{', '.join(sorted(CODECS))})",
        plugin_key="recomp_algorithm",
        metavar="ALGS",
        check=_recomp_algorithms,
        example="zstd,zstd:19",
    ),
    Option(
        "recomp-level",
        "recomp_level",
        INT,
        None,
        "level of the secondary zstd algorithms that name none",
        plugin_key="recomp_level",
        example="19",
    ),
    Option(
        "recompress-after",
        "recompress_after_s",
        INT,
        0,
        "recompress pages not accessed for this many seconds in the background, the "
        "youngest cold age of --cold-target (needs --recomp-algorithm or --backing-file)",
        plugin_key="recompress_after",
        runtime=Runtime(
            "recompress_after",
            _set_recompress_after,
            stat="recompress_after",
            metric_help="youngest age of a cold page in seconds, 0 for the default",
            metavar="SECONDS",
        ),
        metavar="SECONDS",
        check=in_range("recompress_after", 0, 10**7),
        default_help="off",
        example="300",
    ),
    Option(
        "cold-target",
        "cold_target_pct",
        FLOAT,
        None,
        "cold-page promotions (reads of recompressed or written-back pages) per minute, in "
        "percent of the pages stored: the cold age adapts to hold it (0.2 when only "
        "--recompress-after is given)",
        plugin_key="cold_target",
        runtime=Runtime(
            "cold_target",
            _set_cold_target,
            stat="cold_target",
            metric_help="target cold-page promotions per minute, percent of the pages stored",
            metavar="PERCENT",
        ),
        metavar="PERCENT",
        check=percent("cold_target"),
        default_help="off",
        example="0.5",
    ),
    Option(
        "control",
        "control_path",
        PATH,
        None,
        "control socket (mode 0600)",
        plugin_key="control",
        metavar="PATH",
        default_help="the NBD socket path + .ctl",
        example="z.ctl",
        split="control",
    ),
    Option(
        "pin-thread-state",
        "pin_thread_state",
        BOOL,
        True,
        "do not keep nbdkit's Python thread states alive between calls",
        plugin_key="pin_thread_state",
        cli_flag="--no-pin-thread-state",
        example="off",
    ),
    Option(
        "swap",
        "swap",
        BOOL,
        False,
        "serving swap to this host: lock memory, mark as I/O flusher",
        plugin_key="swap",
        example="on",
    ),
    Option(
        "final-stats",
        "final_stats_path",
        PATH,
        None,
        "write the last stats as JSON to PATH when the server stops",
        plugin_key="final_stats",
        metavar="PATH",
        example="final.json",
        split="suffix",
    ),
    Option(
        "log-file",
        "log_file",
        PATH,
        None,
        "append log lines to PATH (created mode 0600) instead of stderr",
        plugin_key="log_file",
        metavar="PATH",
        default_help="stderr",
        example="zramd.log",
    ),
    # the plugin needs the thread count too: it pins per call with more than one
    Option(
        "threads",
        "threads",
        INT,
        DEFAULT_THREADS,
        "nbdkit request threads per connection (1 is fastest for a Python plugin)",
        plugin_key="threads",
        aliases=("-t",),
        check=in_range("threads", 1, MAX_THREADS),
        example="2",
    ),
    # -- the wrapper and nbdkit's own options (not plugin parameters) ---------
    Option(
        "socket",
        "socket_path",
        STR,
        None,
        "Unix socket to listen on",
        aliases=("-U",),
        metavar="PATH",
        group="endpoint",
        default_help="$XDG_RUNTIME_DIR/zramd.sock, else ./zramd.sock",
        example="z.sock",
        split="suffix",
    ),
    Option(
        "port",
        "port",
        INT,
        None,
        "TCP port to listen on instead",
        aliases=("-p",),
        group="endpoint",
        check=in_range("port", 1, 65535),
        example="10809",
        split="port",
    ),
    Option(
        "address",
        "address",
        STR,
        DEFAULT_ADDRESS,
        "address for --port",
        aliases=("-i",),
        example="::1",
    ),
    # -- who may reach the device (docs/design.md#security) -------------------
    Option(
        "tls",
        "tls",
        STR,
        None,
        "nbdkit's TLS: require, on (TLS optional) or off",
        choices=TLS_MODES,
        default_help="require with --tls-psk or --tls-certificates, else off",
        example="require",
    ),
    Option(
        "tls-psk",
        "tls_psk",
        PATH,
        None,
        "TLS with pre-shared keys: FILE has lines username:hexkey, mode 0600",
        metavar="FILE",
        group="tls-credentials",
        example="keys.psk",
    ),
    Option(
        "tls-certificates",
        "tls_certificates",
        PATH,
        None,
        "TLS with X.509: DIR has server-cert.pem, server-key.pem (and ca-cert.pem for "
        "--tls-verify-peer)",
        metavar="DIR",
        group="tls-credentials",
        example="pki",
    ),
    Option(
        "tls-verify-peer",
        "tls_verify_peer",
        BOOL,
        False,
        "require a client certificate signed by DIR/ca-cert.pem",
        example="on",
    ),
    Option(
        "insecure-tcp",
        "insecure_tcp",
        BOOL,
        False,
        "allow --port without TLS: anyone who reaches the port reads and writes the device",
        example="on",
    ),
    # -- the wrapper process ---------------------------------------------------
    Option(
        "pid-file",
        "pid_file",
        PATH,
        None,
        "write the pid of zramd serve to PATH (created exclusively, mode 0600) once "
        "every socket listens",
        metavar="PATH",
        example="zramd.pid",
    ),
    Option(
        "force",
        "force_stop",
        BOOL,
        False,
        "SIGTERM/Ctrl-C stops at once even with clients connected and pages stored "
        "(default: refuse once)",
        example="on",
    ),
    Option(
        "instances",
        "instances",
        INT,
        1,
        f"serve N independent devices (1..{MAX_INSTANCES}) in N nbdkit processes, on "
        f"PATH.0 ... PATH.N-1, the size and mem_limit split between them: enable them as "
        f"swap at equal priority to use N cores",
        metavar="N",
        check=in_range("instances", 1, MAX_INSTANCES),
        default_help="1: PATH itself",
        example="2",
    ),
    Option(
        "metrics-address",
        "metrics_address",
        STR,
        None,
        "serve Prometheus metrics over HTTP on HOST:PORT (loopback only unless "
        "--metrics-insecure-address; port 0 picks a free one)",
        metavar="HOST:PORT",
        check=_metrics_address_syntax,
        default_help="off",
        example="127.0.0.1:9711",
    ),
    Option(
        "metrics-insecure-address",
        "metrics_insecure_address",
        BOOL,
        False,
        "allow a --metrics-address that is not loopback (the metrics show how much "
        "this machine swaps)",
        example="on",
    ),
    Option(
        "verbose",
        "verbose",
        BOOL,
        False,
        "nbdkit and zramd debug output",
        aliases=("-v",),
        example="on",
    ),
    # -- knobs of a running device only (zram's sysfs files), no serve option --
    Option(
        "mem-used-max",
        "mem_used_max_bytes",
        SIZE,
        None,
        "restart the peak of mem_used_total from now",
        serve=False,
        check=only_zero("mem_used_max", "can only be reset, with 0 (as in zram)"),
        runtime=Runtime("mem_used_max", _reset_mem_used_max, metavar="0"),
        example="0",
    ),
    Option(
        "writeback-limit",
        "writeback_limit_pages",
        INT,
        None,
        "pages writeback may still write, when writeback_limit_enable is on",
        serve=False,
        check=in_range("writeback_limit", 0, MAX_PAGE_COUNT),
        runtime=Runtime(
            "writeback_limit",
            _set_writeback_limit,
            stat="writeback_limit",
            metric_help="writeback_limit: pages writeback may still write, when enabled",
            metavar="PAGES",
            needs_backing=True,
        ),
        split="count",
        example="1000",
    ),
    Option(
        "writeback-limit-enable",
        "writeback_limit_enable",
        BOOL,
        None,
        "enforce writeback_limit",
        serve=False,
        runtime=Runtime(
            "writeback_limit_enable",
            _set_writeback_limit_enable,
            stat="writeback_limit_enable",
            metric_help="1 if writeback_limit is enforced",
            metavar="on|off",
            needs_backing=True,
        ),
        example="on",
    ),
)

# The `zramd serve` options (the Settings fields, flags, config keys, plugin
# parameters) are the rows that are not knobs alone.
OPTIONS: tuple[Option, ...] = tuple(opt for opt in ROWS if opt.serve)


def knobs(rows: tuple[Option, ...] = ROWS) -> dict[str, tuple[Option, ...]]:
    """``{knob: its rows in table order}`` of every runtime-settable row."""
    out: dict[str, list[Option]] = {}
    for opt in rows:
        if opt.runtime is not None:
            out.setdefault(opt.runtime.knob, []).append(opt)
    return {knob: tuple(each) for knob, each in out.items()}


KNOBS = knobs()
BY_LABEL = {opt.label: opt for opt in ROWS}
BY_NAME = {opt.name: opt for opt in OPTIONS}
BY_FIELD = {opt.field: opt for opt in OPTIONS}
BY_PLUGIN_KEY = {opt.plugin_key: opt for opt in OPTIONS if opt.plugin_key}
PLUGIN_KEYS = tuple(BY_PLUGIN_KEY)

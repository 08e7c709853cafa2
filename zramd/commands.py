"""Control commands, named after zram's sysfs knobs, run against a device.

The knobs (rows of the option table with a ``runtime``) are set by one
command, ``set``, derived from the table; ``mem_limit``, ``watermarks``,
``writeback_limit`` and ``reset_mem_used_max`` keep their own argument
names and messages and hand their values to it.

``COMMANDS`` maps a name to ``fn(device, args) -> result``.  Each command
validates all of its arguments before it changes anything, so a bad command
changes nothing; it raises ControlError with a one-line reason.  Commands run
on control-socket threads while I/O is in flight: they go through the
device's and store's own locked methods.
"""

from __future__ import annotations

from collections.abc import Callable

from .control import ControlError
from .options import KNOBS, MAX_PAGE_COUNT, ConfigError, Option
from .settings import Settings
from .units import PAGE_SIZE, format_size, parse_size, physical_memory_bytes

COMMANDS: dict[str, Callable[..., dict]] = {}
RECOMPRESS_TYPES = ("all", "idle", "huge", "huge_idle")  # zram's recompress type=


def command(name):
    def register(fn):
        COMMANDS[name] = fn
        return fn

    return register


def _no_args(args: dict, name: str) -> None:
    if args:
        raise ControlError(f"{name} takes no arguments, got {', '.join(sorted(args))}")


# Whole-number arguments (page counts, seconds) above this are refused.
MAX_COUNT = MAX_PAGE_COUNT


def _size_arg(args: dict, key: str, maximum: int | None = None) -> int:
    """A size in bytes; at most ``maximum`` (default: the physical memory,
    the largest memory amount that makes sense: docs/design.md#security)."""
    if key not in args:
        raise ControlError(f"missing argument {key}")
    if isinstance(args[key], bool) or not isinstance(args[key], (int, str)):
        raise ControlError(f"{key} must be a size")
    bound = physical_memory_bytes() if maximum is None else maximum
    if isinstance(args[key], int) and args[key] > bound:
        raise ControlError(f"{key} must be at most {format_size(bound)} (the physical memory)")
    try:
        value = parse_size(args[key])
    except ValueError as exc:
        message = str(exc)
        sep = " " if message.startswith("must ") else ": "
        raise ControlError(f"{key}{sep}{message}") from None
    if value > bound:
        raise ControlError(
            f"{key} must be at most {format_size(bound)} (the physical memory), not {value}"
        )
    return value


@command("stats")
def _stats(device, args):
    _no_args(args, "stats")
    return device.stats()


@command("mem_limit")
def _mem_limit(device, args):
    """zram's ``echo SIZE > mem_limit`` (0: no limit)."""
    _check_args(args, "mem_limit", {"size"})
    return _set(device, {"mem_limit": _size_arg(args, "size")})


@command("reset_mem_used_max")
def _reset_mem_used_max(device, args):
    """zram's ``echo 0 > mem_used_max``."""
    _no_args(args, "reset_mem_used_max")
    return _set(device, {"mem_used_max": 0})


def _check_args(args: dict, name: str, allowed: set[str]) -> None:
    extra = set(args) - allowed
    if extra:
        raise ControlError(
            f"{name} does not take {', '.join(sorted(extra))} "
            f"(takes: {', '.join(sorted(allowed)) or 'nothing'})"
        )


def _int_arg(
    args: dict, key: str, minimum: int = 0, default=None, maximum: int = MAX_COUNT
) -> int | None:
    if key not in args or args[key] is None:
        return default
    value = args[key]
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ControlError(f"{key} must be a whole number")
    try:
        value = int(value)
    except ValueError:
        raise ControlError(f"{key} must be a whole number, not {args[key]!r}") from None
    if value < minimum:
        raise ControlError(f"{key} must be at least {minimum}, not {value}")
    if value > maximum:
        raise ControlError(f"{key} must be at most {maximum}, not {value}")
    return value


def _bool_arg(args: dict, key: str) -> bool:
    value = args.get(key)
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "on", "true", "yes"):
        return True
    if str(value).lower() in ("0", "off", "false", "no"):
        return False
    raise ControlError(f"{key} must be on or off, not {value!r}")


def _writeback_of(device):
    if device.writeback is None:
        raise ControlError("no backing file: start the server with --backing-file PATH")
    return device.writeback


# Most ranges one writeback by page index takes (a bound on the request's
# size, not a measurement: zram takes one range per write).
MAX_PAGE_RANGES = 1024


def parse_page_indexes(text: object, nr_pages: int) -> list[tuple[int, int]]:
    """``"N"``, ``"A-B"`` (both included, as zram's ``page_indexes=``) or
    several of them, comma-separated, as ``[(first, last)]``: every page
    inside the device, or ControlError (one line)."""
    if not isinstance(text, str) or not text.strip():
        raise ControlError("page_indexes must be N, A-B or a comma-separated list of them")
    parts = text.split(",")
    if len(parts) > MAX_PAGE_RANGES:
        raise ControlError(f"page_indexes takes at most {MAX_PAGE_RANGES} ranges")
    out = []
    for part in parts:
        first_text, dash, last_text = part.strip().partition("-")
        try:
            first = int(first_text)
            last = int(last_text) if dash else first
        except ValueError:
            raise ControlError(f"page_indexes: {part.strip()!r} is not N or A-B") from None
        if first < 0 or last < first:
            raise ControlError(f"page_indexes: {part.strip()!r} is not a range A-B with A <= B")
        if last >= nr_pages:
            raise ControlError(
                f"page_indexes: page {last} is beyond the device (pages 0-{nr_pages - 1})"
            )
        out.append((first, last))
    return out


@command("writeback")
def _writeback(device, args):
    """zram's ``echo TYPE > writeback``, with an optional page budget, or
    ``echo page_indexes=A-B > writeback`` (``page_indexes``: N, A-B, or a
    comma-separated list of them)."""
    from .engine.writeback import WRITEBACK_TYPES

    _check_args(args, "writeback", {"type", "limit", "page_indexes"})
    wb_type = args.get("type")
    pages = None
    if "page_indexes" in args:
        if wb_type is not None:
            raise ControlError("writeback takes a type or page_indexes, not both")
        pages = parse_page_indexes(args["page_indexes"], device.store.nr_pages)
    elif wb_type not in WRITEBACK_TYPES:
        raise ControlError(
            f"writeback type must be one of {', '.join(WRITEBACK_TYPES)}, not {wb_type!r}"
        )
    limit = _int_arg(args, "limit", minimum=1)
    return _writeback_of(device).request(wb_type, limit, pages=pages)


@command("idle")
def _idle(device, args):
    """zram's ``echo all > idle`` or ``echo SECONDS > idle``."""
    _check_args(args, "idle", {"age"})
    age = args.get("age", "all")
    if age != "all":
        age = _int_arg(args, "age", minimum=0)
    return {"idle_pages": device.store.mark_idle(None if age == "all" else age)}


@command("recompress")
def _recompress(device, args):
    """zram's ``echo "type=... threshold=..." > recompress``."""
    _check_args(args, "recompress", {"type", "threshold", "limit"})
    recomp_type = args.get("type", "all")
    if recomp_type not in RECOMPRESS_TYPES:
        raise ControlError(
            f"recompress type must be one of {', '.join(RECOMPRESS_TYPES)}, not {recomp_type!r}"
        )
    threshold = _int_arg(args, "threshold", minimum=0, default=0)
    if threshold > PAGE_SIZE:
        raise ControlError(f"threshold must be at most {PAGE_SIZE} bytes, not {threshold}")
    limit = _int_arg(args, "limit", minimum=1)
    if device.store.recomp_codec is None:
        raise ControlError("no secondary algorithm: start the server with --recomp-algorithm")
    return device.store.recompress(recomp_type, threshold, limit)


@command("compact")
def _compact(device, args):
    """zram's ``echo 1 > compact``: move objects out of sparse blocks and
    give the emptied blocks back; returns what was freed."""
    _no_args(args, "compact")
    result = device.store.compact()  # (which trims the heaps too: zramd/engine/heap.py)
    return {
        "moved": result["moved"],
        "pages_freed": result["pages_freed"],
        "blocks_freed": result["blocks_freed"],
        "pages_compacted": result["pages_compacted"],
        "mem_used_total": result["mem_used_total"],
    }


@command("writeback_limit")
def _writeback_limit(device, args):
    """zram's ``writeback_limit`` (pages) and ``writeback_limit_enable``."""
    _check_args(args, "writeback_limit", {"pages", "enable"})
    if not args:
        raise ControlError("writeback_limit needs pages and/or enable")
    pages = _int_arg(args, "pages", minimum=0)
    enable = _bool_arg(args, "enable") if "enable" in args else None
    _writeback_of(device)
    values = {"writeback_limit": pages, "writeback_limit_enable": enable}
    return _set(device, {key: value for key, value in values.items() if value is not None})


@command("watermarks")
def _watermarks(device, args):
    """Automatic writeback: above ``high`` bytes used, write back the
    coldest pages until below ``low`` (0 0: off)."""
    _check_args(args, "watermarks", {"high", "low"})
    high = _size_arg(args, "high")
    low = _size_arg(args, "low") if "low" in args else high * 3 // 4
    _writeback_of(device)
    return _set(device, {"high_watermark": high, "low_watermark": low})


# The rows `set` takes, by their label (zram's names: mem_limit, high_watermark).
KNOB_ROWS: dict[str, Option] = {opt.label: opt for rows in KNOBS.values() for opt in rows}


@command("set")
def _set(device, args):
    """Set knobs of the running device in one go, e.g. ``{"high_watermark":
    "8M", "low_watermark": "6M"}``: every row of the option table with a
    ``runtime`` (options.Runtime), keyed by its label.  Each value goes
    through its row's ``from_value``; the settings they would make (the
    device's running values, the new ones over them) through
    ``Settings.validate``'s checks across options; only then is anything
    changed.  A knob's rows not given take their defaults, as in
    ``zramd set watermarks HIGH`` (the low watermark: 3/4 of it)."""
    if not args:
        raise ControlError(f"set needs one or more of {', '.join(sorted(KNOB_ROWS))}")
    _check_args(args, "set", set(KNOB_ROWS))
    touched = {KNOB_ROWS[label].runtime.knob for label in args}
    values: dict[str, object] = {}
    for knob in touched:
        for opt in KNOBS[knob]:
            if opt.label not in args:
                if not opt.runtime.optional:
                    raise ControlError(f"{knob} needs {opt.label}")
                values[opt.field] = opt.default
                continue
            if args[opt.label] is None:
                raise ControlError(f"{opt.label} needs a value")
            try:
                values[opt.field] = opt.from_value(args[opt.label])
            except ConfigError as exc:
                raise ControlError(str(exc)) from None
        if KNOBS[knob][0].runtime.needs_backing and device.writeback is None:
            _writeback_of(device)  # raises: no backing file
    would_be = would_be_settings(device.stats(), values)
    try:
        would_be.validate()
    except ConfigError as exc:
        raise ControlError(str(exc)) from None
    for knob in touched:
        KNOBS[knob][0].runtime.apply(device, {opt.field: values[opt.field] for opt in KNOBS[knob]})
    return device.stats()


def remote_line(stats: dict) -> str | None:
    """``zramd status``'s line for a remote tier (engine/remote.py): its URI
    without secrets, connected or not, bytes held, errors, read latency."""
    if stats.get("backing_tier") != "remote":
        return None
    state = "connected" if stats.get("remote_connected") else "DISCONNECTED"
    held_mib = stats.get("remote_held_bytes", 0) / (1 << 20)
    p50_ms = stats.get("remote_read_latency_p50_seconds", 0.0) * 1000
    p99_ms = stats.get("remote_read_latency_p99_seconds", 0.0) * 1000
    return (
        f"remote {stats.get('backing_file')} {state}, {held_mib:.1f} MiB held, "
        f"{stats.get('remote_read_errors', 0)} read errors "
        f"({stats.get('remote_read_timeouts', 0)} timeouts), "
        f"{stats.get('bd_write_errors', 0)} write errors, {stats.get('bd_auth_errors', 0)} lost, "
        f"read p50 {p50_ms:.2f} ms p99 {p99_ms:.2f} ms"
    )


def would_be_settings(stats: dict, new: dict) -> Settings:
    """The Settings a running device would have with ``new`` ({field:
    value}): its backing file and its knobs' running values (each row's
    ``runtime.stat``) from ``stats``, ``new`` over them, the rest defaults."""
    tier = "backing_uri" if stats.get("backing_tier") == "remote" else "backing_file"
    running: dict[str, object] = {
        tier: stats.get("backing_file") or None,
        "recomp_algorithm": stats.get("recomp_algorithm") or None,
    }
    for rows in KNOBS.values():
        for opt in rows:
            stat = opt.runtime.stat if opt.runtime is not None else None
            if opt.serve and stat in stats:
                running[opt.field] = stats[stat]
    running.update((field, value) for field, value in new.items() if hasattr(Settings, field))
    return Settings(**running)


def stop_args(args) -> tuple[bool, bool]:
    """The ``stop`` request's (force, check), both JSON booleans: a bad
    argument is refused before anything stops, as any bad command is."""
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ControlError("args must be an object")
    _check_args(args, "stop", {"force", "check"})
    for key in ("force", "check"):
        if key in args and not isinstance(args[key], bool):
            raise ControlError(f"{key} must be true or false, not {args[key]!r}")
    return args.get("force", False), args.get("check", False)


def dispatch(device, request: dict):
    """Run one control request (``{"cmd": ..., "args": {...}}``)."""
    name = request.get("cmd")
    fn = COMMANDS.get(name) if isinstance(name, str) else None
    if fn is None:
        raise ControlError(f"unknown command {name!r} (known: {', '.join(sorted(COMMANDS))})")
    args = request.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ControlError("args must be an object")
    return fn(device, args)

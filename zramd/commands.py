"""Control commands, named after zram's sysfs knobs, run against a device.

``COMMANDS`` maps a name to ``fn(device, args) -> result``.  Each command
validates all of its arguments before it changes anything, so a bad command
changes nothing; it raises ControlError with a one-line reason.  Commands run
on control-socket threads while I/O is in flight: they go through the
device's and store's own locked methods.
"""

from __future__ import annotations

from .control import ControlError
from .units import parse_size

COMMANDS = {}


def command(name):
    def register(fn):
        COMMANDS[name] = fn
        return fn
    return register


def _no_args(args: dict, name: str) -> None:
    if args:
        raise ControlError(f"{name} takes no arguments, got {', '.join(sorted(args))}")


def _size_arg(args: dict, key: str) -> int:
    if key not in args:
        raise ControlError(f"missing argument {key}")
    try:
        return parse_size(args[key])
    except ValueError as exc:
        raise ControlError(f"{key}: {exc}") from None


@command("stats")
def _stats(device, args):
    _no_args(args, "stats")
    return device.stats()


@command("mem_limit")
def _mem_limit(device, args):
    """zram's ``echo SIZE > mem_limit`` (0: no limit)."""
    extra = set(args) - {"size"}
    if extra:
        raise ControlError(f"mem_limit takes only size, got {', '.join(sorted(extra))}")
    device.store.set_mem_limit(_size_arg(args, "size"))
    return device.stats()


@command("reset_mem_used_max")
def _reset_mem_used_max(device, args):
    """zram's ``echo 0 > mem_used_max``."""
    _no_args(args, "reset_mem_used_max")
    device.store.reset_mem_used_max()
    return device.stats()


def dispatch(device, request: dict):
    """Run one control request (``{"cmd": ..., "args": {...}}``)."""
    name = request.get("cmd")
    fn = COMMANDS.get(name)
    if fn is None:
        raise ControlError(f"unknown command {name!r} (known: {', '.join(sorted(COMMANDS))})")
    args = request.get("args") or {}
    if not isinstance(args, dict):
        raise ControlError("args must be an object")
    return fn(device, args)

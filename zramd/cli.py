"""The ``zramd`` command: ``serve`` a device, read its ``stats``.

Every user error ends in one line, ``zramd: error: ...``, and a non-zero
exit status (2 for bad options, 1 for a server that cannot start), never a
traceback.  No shared state.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import shutil
import signal
import sys
import time
from typing import Any

from . import __version__, cgroup, config_file, logs, metrics, zramgen
from .commands import RECOMPRESS_TYPES, remote_line
from .control import TIMEOUT_SECONDS, ControlError, call
from .engine.store import BD_STAT_FIELDS, IO_STAT_FIELDS, MM_STAT_FIELDS
from .engine.writeback import WRITEBACK_TYPES
from .instances import Stripe, aggregate, discover, instance_settings, split_count, split_value
from .options import BOOL, BY_FIELD, KNOBS, OPTIONS, Option
from .server import Server, ServerError, memory_advice, nbdkit_versions, stop_refusal
from .settings import ConfigError, Settings, default_socket_path, describe
from .sockets import (
    PathError,
    claim_pid_file,
    remove_pid_file,
    sd_notify,
    socket_state,
    write_pid_file,
)
from .swap import LockError, lock_memory, set_oom_score_adj
from .tls import qemu_object
from .units import PAGE_SIZE, human_size, physical_memory_bytes

log = logging.getLogger("zramd")
STAT_FILES = {"mm_stat": MM_STAT_FIELDS, "io_stat": IO_STAT_FIELDS, "bd_stat": BD_STAT_FIELDS}


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + error
        self.exit(2, f"zramd: error: {message}\n")


def version_text() -> str:
    """``zramd --version``: zramd's version, nbdkit's, and the Python its
    python plugin embeds (or why either is unknown)."""
    return "\n".join(
        [f"zramd {__version__} (Python {platform.python_version()})", nbdkit_versions()]
    )


class VersionAction(argparse.Action):
    """``--version``, asked of nbdkit only when given (not at every start)."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit(0)


def build_parser() -> Parser:
    parser = Parser(prog="zramd", description="A zram-like compressed RAM block device over NBD.")
    parser.add_argument(
        "--version", action=VersionAction, nargs=0, help="show the versions and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _add_serve_parser(sub)
    _add_view_parsers(sub)
    _add_knob_parsers(sub)
    return parser


def _add_serve_parser(sub) -> None:
    serve = sub.add_parser("serve", help="serve a compressed RAM device over NBD (foreground)")
    add_serve_options(serve)
    serve.add_argument(
        "--config",
        metavar="FILE",
        help="read options from this TOML file (keys: the long options "
        'with underscores, e.g. mem_limit = "min(ram / 4, 2G)"); '
        "options given here win over the file",
    )
    stop = sub.add_parser(
        "stop",
        help="stop a running server (refused while clients are "
        "connected and pages stored, unless --force)",
    )
    _add_target(stop)
    stop.add_argument(
        "--force", action="store_true", help="stop even while in use: stored pages are lost"
    )
    stop.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds to wait for the server to go (default 30)",
    )
    zgen = sub.add_parser(
        "from-zram-generator",
        help="print a zramd config (TOML, for serve --config) translated from a "
        "zram-generator config",
    )
    zgen.add_argument("file", nargs="?", default=zramgen.DEFAULT_PATH)
    zgen.add_argument("--device", help="the [zramN] section (default: the first)")


def _add_view_parsers(sub) -> None:
    """The commands that only read: stats and status."""
    stats = sub.add_parser("stats", help="print a running device's zram statistics")
    _add_target(stats)
    stats.add_argument("--json", action="store_true", help="all counters as JSON (--format json)")
    stats.add_argument(
        "--format",
        choices=("text", "json", "prometheus"),
        default="text",
        help="text (zram's files), json (every counter), or prometheus "
        "(the text exposition, for node_exporter's textfile collector)",
    )
    stats.add_argument(
        "--per-instance",
        action="store_true",
        help="striped instances: each instance's counters as well as the sum",
    )
    stats.add_argument(
        "--watch",
        action="store_true",
        help="a live view, one line per interval: ratio, memory, IOPS, writeback",
    )
    stats.add_argument("--interval", type=float, default=1.0, help="--watch interval (s)")
    stats.add_argument("--count", type=int, help="--watch: stop after this many lines")
    stats.add_argument(
        "files",
        nargs="*",
        choices=[[]] + sorted(STAT_FILES),
        metavar="FILE",
        help="mm_stat, io_stat and/or bd_stat (default: all, labelled)",
    )

    status = sub.add_parser("status", help="a zramctl-like table of the device")
    _add_target(status)


def _add_knob_parsers(sub) -> None:
    """The commands that act on the device, named after zram's knobs."""
    wb = sub.add_parser(
        "writeback", help="write pages back to the backing file (zram's writeback knob)"
    )
    _add_target(wb)
    wb.add_argument("type", nargs="?", choices=WRITEBACK_TYPES)
    wb.add_argument(
        "--page-index",
        action="append",
        metavar="N",
        help="write back page N instead of a type (zram's page_index=); repeatable",
    )
    wb.add_argument(
        "--page-indexes",
        action="append",
        metavar="A-B",
        help="write back pages A to B, both included (zram's page_indexes=); repeatable",
    )
    wb.add_argument("--limit", type=int, help="at most this many pages")
    wb.add_argument("--json", action="store_true", help="the result as JSON (one line each)")

    idle = sub.add_parser(
        "idle", help="mark pages idle: all, or those not accessed for SECONDS (zram's idle knob)"
    )
    _add_target(idle)
    idle.add_argument("age", nargs="?", default="all", help="all (default) or SECONDS")

    rc = sub.add_parser("recompress", help="compress pages again with the secondary algorithm")
    _add_target(rc)
    rc.add_argument("--type", default="all", choices=RECOMPRESS_TYPES)
    rc.add_argument(
        "--threshold",
        type=int,
        default=0,
        help="only pages whose compressed size is at least this (bytes)",
    )
    rc.add_argument("--limit", type=int, help="at most this many pages")

    compact = sub.add_parser(
        "compact",
        help="move objects out of sparse blocks and give memory back (zram's compact knob)",
    )
    _add_target(compact)

    knob = sub.add_parser(
        "set",
        help=set_help(),
        epilog="knobs:\n" + "\n".join(f"  {knob_usage(k)}: {KNOBS[k][0].help}" for k in KNOBS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_target(knob)
    knob.add_argument("knob", choices=list(KNOBS), help="which knob (listed below)")
    knob.add_argument("values", nargs="+", help="its value(s), split over striped instances")


def knob_usage(knob: str) -> str:
    """``watermarks HIGH [LOW]``: a knob and its values, from its rows."""
    words = [knob]
    for opt in KNOBS[knob]:
        rt = opt.runtime
        assert rt is not None  # KNOBS holds only runtime rows
        name = rt.metavar or (
            "on|off" if opt.type is BOOL else opt.metavar or opt.type.name.upper()
        )
        words.append(f"[{name}]" if rt.optional else name)
    return " ".join(words)


def set_help() -> str:
    return "set a knob of the running device: " + ", ".join(knob_usage(k) for k in KNOBS)


def _argparse_type(opt: Option):
    """argparse's ``type=`` for a row: its parser and its own check, with
    their one-line messages (argparse checks the choices itself)."""

    def convert(text):
        try:
            value = opt.parse_text(text)
            if opt.check is not None:
                opt.check(value)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    return convert


def add_serve_options(parser: argparse.ArgumentParser, defaults: bool = True) -> None:
    """One argument per row of the option table (options.py); without
    ``defaults``, an option not given is left out of the namespace."""
    groups: dict[str, Any] = {}  # argparse names no public type for a group
    for opt in OPTIONS:
        target: Any = parser
        default = opt.default if defaults else argparse.SUPPRESS
        if opt.group:
            if opt.group not in groups:
                groups[opt.group] = parser.add_mutually_exclusive_group()
            target = groups[opt.group]
        if opt.type.python is bool:
            target.add_argument(
                *opt.flags,
                dest=opt.field,
                default=default,
                action="store_false" if opt.default else "store_true",
                help=opt.help_text(),
            )
        else:
            target.add_argument(
                *opt.flags,
                dest=opt.field,
                default=default,
                type=_argparse_type(opt),
                choices=opt.choices,
                metavar=opt.metavar or (None if opt.choices else opt.type.name.upper()),
                help=opt.help_text(),
            )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The Settings of a parsed ``zramd serve`` command line (not validated),
    over the values of its ``--config`` file if it has one: an option given
    on the command line wins over the file, also over the file's choice
    from the same group (``--port`` over the file's ``socket``)."""
    values = {opt.field: getattr(args, opt.field) for opt in OPTIONS}
    path = getattr(args, "config", None)
    if path:
        given: set[str] = getattr(args, "given_fields", set())
        given_groups = {opt.group for opt in OPTIONS if opt.field in given and opt.group}
        for field, value in config_file.load(path).items():
            opt = BY_FIELD[field]
            if field not in given and (opt.group is None or opt.group not in given_groups):
                values[field] = value
    return Settings(**values)


def given_fields(serve_argv: list[str]) -> set[str]:
    """The Settings fields set by flags in ``serve_argv`` (not by defaults)."""
    parser = Parser(prog="zramd serve", add_help=False)
    add_serve_options(parser, defaults=False)
    parser.add_argument("--config", default=argparse.SUPPRESS)
    known, _ = parser.parse_known_args(serve_argv)
    return set(vars(known)) - {"config"}


def _add_target(parser) -> None:
    parser.add_argument(
        "--socket",
        "-U",
        metavar="PATH",
        help=f"the server's NBD socket (default {default_socket_path()})",
    )
    parser.add_argument("--control", metavar="PATH", help="the server's control socket")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="the server's config file: its socket and control socket",
    )


def _control_path(args) -> str:
    if args.control:
        return args.control
    if args.socket is None and getattr(args, "config", None):
        # the server the config file describes, with serve's own defaults
        values = config_file.load(args.config)
        settings = Settings(**values).with_defaults()
        return settings.control_path
    return (args.socket or default_socket_path()) + ".ctl"


def _instances(args) -> list[tuple[str, str]]:
    """``[(name, control socket)]`` of every running instance the target
    names: the device itself, or its striped instances PATH.0 ... PATH.N-1
    (docs/design.md#scaling-past-one-core)."""
    path = _control_path(args)
    found = discover(path)
    if not found:
        raise ControlError(
            f"no zramd control socket at {path} or {path[:-4] if path.endswith('.ctl') else path}"
            f".N{'.ctl' if path.endswith('.ctl') else ''} (is the server running?)"
        )
    return found


def connect_help(server: Server, index: int | None = None) -> str:
    """One device's banner: how to attach with each client, TLS included."""
    s = server.settings
    uri = server.uri
    tls = s.tls_mode() == "require"
    nbd_dev = f"/dev/nbd{index or 0}"
    drive = f"zd{'' if index is None else index}"
    lines = [
        f"zramd: serving {describe(s)}" if index is None else f"instance {index}: {describe(s)}",
        f"  NBD URI     {uri}",
        f"  nbdinfo     nbdinfo '{uri}'",
    ]
    if tls and s.tls_psk:  # libnbd refuses tls-psk-file in a URI unless allowed
        lines.append(
            f"  nbdsh       nbdsh -c 'h.set_uri_allow_local_file(True)' "
            f"-c 'h.connect_uri(\"{uri}\")' -c 'print(h.get_size())'"
        )
    else:
        lines.append(f"  nbdsh       nbdsh -u '{uri}'")
    if s.socket_path:
        path = os.path.abspath(s.socket_path)
        server_opts = f"server.type=unix,server.path={path}"
    else:
        server_opts = f"server.type=inet,server.host={s.address},server.port={s.port}"
    if tls:
        obj = qemu_object(s.tls_psk, s.tls_user(), s.tls_certificates)
        lines += [
            f"  qemu-img    qemu-img info --object {obj} --image-opts "
            f"driver=nbd,{server_opts},tls-creds=tls0",
            f"  qemu        qemu-system-x86_64 ... -object {obj} -drive driver=nbd,"
            f"{server_opts},tls-creds=tls0,if=none,id={drive} "
            f"-device virtio-blk-pci,drive={drive}",
        ]
        if s.tls_psk and os.path.basename(s.tls_psk) != "keys.psk":
            lines.append(
                f"              (qemu reads the key from keys.psk in "
                f"{os.path.dirname(os.path.abspath(s.tls_psk))})"
            )
    else:
        lines += [
            f"  qemu-img    qemu-img info '{uri}'",
            f"  qemu        qemu-system-x86_64 ... -drive driver=nbd,{server_opts},"
            f"if=none,id={drive} -device virtio-blk-pci,drive={drive}",
        ]
    if s.socket_path and not tls:
        lines.append(
            f"  nbd-client  nbd-client -unix {os.path.abspath(s.socket_path)} {nbd_dev} "
            f"-b {PAGE_SIZE}"
        )
    elif not tls:
        lines.append(f"  nbd-client  nbd-client {s.address} {s.port} {nbd_dev} -b {PAGE_SIZE}")
    elif s.tls_certificates:
        where = (
            f"-unix {os.path.abspath(s.socket_path)}" if s.socket_path else f"{s.address} {s.port}"
        )
        certs = os.path.abspath(s.tls_certificates)
        lines.append(
            f"  nbd-client  nbd-client {where} {nbd_dev} -b {PAGE_SIZE} -enable-tls "
            f"-cacertfile {certs}/ca-cert.pem -tlshostname {s.address}"
            + (" -certfile CLIENT-cert.pem -keyfile CLIENT-key.pem" if s.tls_verify_peer else "")
        )
    else:
        lines.append(
            "  nbd-client  (no PSK support in nbd-client: use --tls-certificates "
            "for the kernel's nbd driver)"
        )
    lines.append(f"  stats       {zramd_command()} stats --control {s.control_path}")
    if not tls and s.port is not None:
        lines.append(
            "  WARNING     no TLS: anyone who can reach the port reads and writes the device"
        )
    return "\n".join(lines)


def zramd_command() -> str:
    """How the banner spells this command so that it works when pasted:
    ``zramd`` when that name on PATH is this very program, else its full
    path (e.g. .venv/bin/zramd after ``make run``)."""
    me = os.path.realpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    on_path = shutil.which("zramd")
    if me and on_path and os.path.realpath(on_path) == me:
        return "zramd"
    if me.endswith(".py"):  # python -m zramd.cli
        return f"{sys.executable} -m zramd.cli"
    return os.path.abspath(sys.argv[0]) if me else "zramd"


def stripe_help(servers: list[Server], base: Settings) -> str:
    """The start banner: each instance's attach commands, then how to read
    them all at once and how to swap on them (equal priority)."""
    if len(servers) == 1:
        s = servers[0].settings
        return (
            connect_help(servers[0]) + f"\n  stop        {zramd_command()} stop --control "
            f"{s.control_path}   (refused while in use, unless --force)"
            "\n  Stop with Ctrl-C."
        )
    n = len(servers)
    lines = [f"zramd: serving {n} instances, {describe(base)} in all"]
    for i, srv in enumerate(servers):
        lines.append(connect_help(srv, i))
    target = (
        f"--socket {os.path.abspath(base.socket_path)}"
        if base.socket_path
        else f"--control {base.control_path}"
    )
    devs = " ".join(f"/dev/nbd{i}" for i in range(n))
    lines += [
        f"all {n}",
        f"  stats       {zramd_command()} stats {target}  (summed; --per-instance for each)",
        f"  status      {zramd_command()} status {target}",
        f"  swap        mkswap and swapon --discard --priority 100 each of {devs}: "
        f"equal priority stripes pages over them",
        f"  stop        {zramd_command()} stop {target}   (refused while in use, unless --force)",
        "  Stop with Ctrl-C.",
    ]
    return "\n".join(lines)


# A second SIGTERM/SIGINT within this many seconds of a refused one stops the
# server even while in use (docs/design.md#security).
STOP_CONFIRM_SECONDS = 5.0


def cmd_serve(args) -> int:
    base = settings_from_args(args).with_defaults().validate()
    # from here on, one levelled line per event (docs/design.md#running-as-a-service)
    try:
        logs.configure_wrapper(base.log_file, base.verbose)
    except logs.LogFileError as exc:
        raise ConfigError(exc.strerror) from None
    if base.pid_file:
        try:  # a stale pid file is removed, a live one or anything else refuses
            claim_pid_file(base.pid_file)
        except PathError as exc:
            raise ConfigError(str(exc)) from None
    base = with_memory_default(base, args)
    # with a log file, nbdkit writes there from its first line (docs/design.md#logs)
    stripe = Stripe(Server(s, log_file=s.log_file) for s in instance_settings(base, base.instances))
    if base.swap:
        protect_wrapper()
    signals_at: list[float] = []
    pid_written = False
    exporter = None

    def on_signal(signum, frame):
        # A second signal may arrive while the first is still being handled
        # (asking the server takes up to a second): count signals, not refusals.
        now = time.monotonic()
        force = base.force_stop or bool(signals_at and now - signals_at[-1] <= STOP_CONFIRM_SECONDS)
        signals_at.append(now)
        why_not = stripe.request_stop(force=force)
        if why_not and not stripe.stopping:
            log.warning(
                "not stopping: %s, or send the signal again within %.0fs",
                why_not,
                STOP_CONFIRM_SECONDS,
            )

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stripe.start()
        if stripe.stopping:  # a signal came while the instances were starting
            stripe.request_stop()
        exporter = _start_metrics(stripe, base)
        if base.port is not None and base.tls_mode() != "require":
            log.warning(
                "--insecure-tcp: port %s serves the device without TLS to anyone who can reach it",
                base.port,
            )
        if base.pid_file:  # readiness: written once every socket listens
            try:
                write_pid_file(base.pid_file, os.getpid())
            except PathError as exc:
                raise ServerError(str(exc)) from None
            pid_written = True
        _announce(stripe, base, exporter)
        stripe.wait(lambda index, status: _report_death(stripe, index, status))
    finally:
        if exporter is not None:
            exporter.stop()
        stripe.stop()
        if pid_written:
            remove_pid_file(base.pid_file, os.getpid())
    sd_notify("STOPPING=1")
    if stripe.died:
        return 1
    log.info("stopped")
    return 0


def _start_metrics(stripe: Stripe, base: Settings):
    """The Prometheus endpoint over every instance's control socket, or None."""
    if not base.metrics_address:
        return None
    host, port = metrics.parse_address(base.metrics_address, base.metrics_insecure_address)
    sources = [(metrics.device_name(srv.control_path), srv.control_path) for srv in stripe.servers]
    return metrics.MetricsServer(host, port, sources)


def _announce(stripe: Stripe, base: Settings, exporter) -> None:
    """The banner for a terminal, one log line, and READY=1 for systemd."""
    banner = stripe_help(stripe.servers, base).split("\n")
    if exporter is not None:  # before the last line, "Stop with Ctrl-C."
        banner.insert(-1, f"  metrics     curl {exporter.url}")
    print("\n".join(banner), flush=True)
    # the banner is for a terminal; the log gets the start as one line
    log.info(
        "serving %s on %s%s",
        describe(base),
        ", ".join(srv.uri for srv in stripe.servers),
        f", metrics {exporter.url}" if exporter is not None else "",
    )
    why_not = sd_notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=serving {stripe.servers[0].uri}")
    if why_not:
        log.warning("cannot notify systemd: %s", why_not)


def _report_death(stripe: Stripe, index: int, status) -> None:
    """One error line for an instance that died, naming the OOM killer when it did it."""
    srv = stripe.servers[index]
    what = (
        "nbdkit"
        if len(stripe.servers) == 1
        else f"instance {index} ({srv.socket_path or srv.settings.port})"
    )
    left = sum(other.running() for other in stripe.servers)
    more = f"; {left} other instance(s) still serving" if left and len(stripe.servers) > 1 else ""
    oom = srv.oom_kill_reason()
    if oom:
        log.error("%s (pid %s) %s%s", what, srv.pid, oom, more)
    else:
        log.error("%s exited unexpectedly with status %s%s", what, status, more)


def with_memory_default(base: Settings, args) -> Settings:
    """A mem_limit below this server's memory cgroup limit or the RAM when
    none was given (docs/design.md#memory-cgroups), with one warning line."""
    given = set(getattr(args, "given_fields", set()))
    if getattr(args, "config", None):
        given |= set(config_file.load(args.config))
    memory = cgroup.memory_cgroup()
    limit, warning = memory_advice(
        base,
        "mem_limit_bytes" in given,
        memory.limit_bytes() if memory is not None else None,
        physical_memory_bytes(),
    )
    if warning:
        log.warning("%s", warning)
    return dataclasses.replace(base, mem_limit_bytes=limit) if limit is not None else base


def protect_wrapper() -> None:
    """--swap: lock this process into RAM too, and keep the OOM killer away
    from it and (inherited) from nbdkit; one warning line per refusal."""
    try:
        why_not = lock_memory()
    except LockError as exc:
        why_not = exc.strerror
    if why_not:
        log.warning("cannot lock zramd serve into memory: %s", why_not)
    why_not = set_oom_score_adj()
    if why_not:
        log.warning("cannot set oom_score_adj -1000: %s", why_not)


def cmd_stop(args) -> int:
    """Ask the server (every instance) to stop; refused while in use unless
    --force.  Waits until the control sockets are gone."""
    instances = _instances(args)
    if not args.force:
        reasons = []
        for name, path in instances:
            why_not = stop_refusal(path, timeout=args.timeout, check=True)
            if why_not:  # in use, or no answer that says it is not
                reasons.append(why_not if len(instances) == 1 else f"{name}: {why_not}")
        if reasons:
            raise ControlError("; ".join(reasons))
    for _, path in instances:
        try:
            call(path, "stop", force=True)
        except ControlError:
            pass  # the server may exit before its reply is sent: the wait below tells
    deadline = time.monotonic() + args.timeout
    for _, path in instances:
        while socket_state(path) == "live":
            if time.monotonic() > deadline:
                print(
                    f"zramd: error: the server at {path} did not stop within {args.timeout:.0f}s",
                    file=sys.stderr,
                )
                return 1
            time.sleep(0.05)
    print("zramd: stopped")
    return 0


def format_stats(stats: dict, files: list[str], labelled: bool) -> str:
    lines = []
    for name in files:
        values = " ".join(str(stats[field]) for field in STAT_FILES[name])
        lines.append(f"{name:8} {values}" if labelled else values)
    return "\n".join(lines)


def _all_stats(instances) -> list[dict]:
    return [call(path, "stats") for _, path in instances]


def stats_prometheus(args) -> int:
    """The text exposition for node_exporter's textfile collector.  A server
    that is down is ``zramd_up 0`` (exit 0), so the collector's file says so
    instead of going stale."""
    try:
        instances = _instances(args)
    except ControlError:
        instances = [("", _control_path(args))]
    targets = [(metrics.device_name(path), path) for _, path in instances]
    collector = metrics.StatsCollector(targets, timeout=TIMEOUT_SECONDS)
    sys.stdout.write(metrics.exposition(collector.read()))
    return 0


def cmd_stats(args) -> int:
    if args.format == "prometheus":
        return stats_prometheus(args)
    instances = _instances(args)
    if args.watch:
        return watch(
            lambda: (
                aggregate(_all_stats(instances))
                if len(instances) > 1
                else call(instances[0][1], "stats")
            ),
            args.interval,
            args.count,
        )
    each = _all_stats(instances)
    total = aggregate(each) if len(each) > 1 else each[0]
    if args.json or args.format == "json":
        doc = total
        if args.per_instance:
            doc = {
                "total": total,
                "instances": [
                    {"name": name, "control": path, "stats": st}
                    for (name, path), st in zip(instances, each, strict=True)
                ],
            }
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    files = args.files or list(STAT_FILES)
    if args.per_instance:
        for (name, _), st in zip(instances, each, strict=True):
            print(f"# {name}")
            print(format_stats(st, files, labelled=not args.files))
        print(f"# total of {len(each)}")
    print(format_stats(total, files, labelled=not args.files))
    return 0


WATCH_HEADER = (
    f"{'time':>8} {'data':>8} {'compr':>8} {'ratio':>6} {'mem_used':>8} "
    f"{'limit':>7} {'read/s':>8} {'write/s':>8} {'pending':>7} {'bd_count':>8} "
    f"{'bd_w/s':>7} {'bd_r/s':>7} {'cold_age':>8} {'promo%/m':>8} {'recomp':>8}"
)


def watch_line(prev: dict, cur: dict, seconds: float) -> str:
    def rate(key):
        return (cur.get(key, 0) - prev.get(key, 0)) / seconds if seconds > 0 else 0.0

    ratio = cur["orig_data_size"] / cur["compr_data_size"] if cur["compr_data_size"] else 0.0
    limit = human_size(cur["mem_limit"]) if cur["mem_limit"] else "-"
    return (
        f"{time.strftime('%H:%M:%S'):>8} {human_size(cur['orig_data_size']):>8} "
        f"{human_size(cur['compr_data_size']):>8} {ratio:6.2f} "
        f"{human_size(cur['mem_used_total']):>8} {limit:>7} {rate('num_reads'):8.0f} "
        f"{rate('num_writes'):8.0f} {cur.get('pending_pages', 0):7d} "
        f"{cur.get('bd_count', 0):8d} {rate('bd_writes'):7.0f} {rate('bd_reads'):7.0f} "
        f"{cold_age_text(cur):>8} {cur.get('promotion_rate_pct_min', 0):8.3f} "
        f"{human_size(cur.get('cold_recompressed_bytes', 0)):>8}"
    )


def cold_age_text(s: dict) -> str:
    """The cold age (docs/design.md#cold-pages) for a table: - when off."""
    age = s.get("cold_age_s") or 0
    return f"{age:.0f}s" if age else "-"


def watch(fetch, interval: float, count: int | None) -> int:
    """A vmstat-like live view: one line per interval (rates per second);
    ``fetch()`` returns the stats (summed over striped instances)."""
    print(WATCH_HEADER, flush=True)
    prev = fetch()
    t_prev = time.monotonic()
    lines = 0
    while count is None or lines < count:
        time.sleep(interval)
        cur = fetch()
        now = time.monotonic()
        print(watch_line(prev, cur, now - t_prev), flush=True)
        prev, t_prev = cur, now
        lines += 1
    return 0


STATUS_HEADS = (
    "NAME",
    "DISKSIZE",
    "DATA",
    "COMPR",
    "ALGORITHM",
    "MODE",
    "ZERO-PAGES",
    "TOTAL",
    "MEM-LIMIT",
    "MEM-USED",
    "RATIO",
    "WRITEBACK",
    "COLD-AGE",
    "PROMO%/MIN",
    "RECOMP",
)


def cmd_status(args) -> int:
    """zramctl's table: one row per device, here per running instance.  An
    instance whose control socket does not answer (a stale socket left by
    a killed server) gets a row of dashes and a line on stderr, and the
    status is 1; the others are still listed."""
    rows = []
    unreachable = []
    remotes = []
    for name, path in _instances(args):
        try:
            s = call(path, "stats")
        except ControlError as exc:
            unreachable.append(f"zramd: error: {name}: {exc}")
            rows.append([("NAME", name)] + [(h, "-") for h in STATUS_HEADS[1:]])
            continue
        remote = remote_line(s)
        if remote:
            remotes.append(f"{name}: {remote}")
        ratio = s["orig_data_size"] / s["compr_data_size"] if s["compr_data_size"] else 0.0
        rows.append(
            [
                ("NAME", name),
                ("DISKSIZE", human_size(s["disksize"])),
                ("DATA", human_size(s["orig_data_size"])),
                ("COMPR", human_size(s["compr_data_size"])),
                ("ALGORITHM", s["comp_algorithm"]),
                ("MODE", s["compress_mode"]),
                ("ZERO-PAGES", str(s["same_pages"])),
                ("TOTAL", human_size(s["mem_used_total"])),
                ("MEM-LIMIT", human_size(s["mem_limit"]) if s["mem_limit"] else "0B"),
                ("MEM-USED", human_size(s["mem_used_max"])),
                ("RATIO", f"{ratio:.2f}"),
                (
                    "WRITEBACK",
                    human_size(s["bd_count"] * PAGE_SIZE) if s.get("backing_file") else "-",
                ),
                ("COLD-AGE", cold_age_text(s)),
                ("PROMO%/MIN", f"{s.get('promotion_rate_pct_min', 0):.3f}"),
                ("RECOMP", human_size(s.get("cold_recompressed_bytes", 0))),
            ]
        )
    heads = list(STATUS_HEADS)
    widths = [max(len(h), *(len(r[i][1]) for r in rows)) for i, h in enumerate(heads)]

    def line(cells):
        return " ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    print(line(heads))
    for r in rows:
        print(line([v for _, v in r]))
    for remote in remotes:
        print(remote)
    for message in unreachable:
        print(message, file=sys.stderr)
    return 1 if unreachable else 0


def _each(args):
    """``[(label, control socket)]``: one unlabelled target, or every
    striped instance labelled with its name."""
    instances = _instances(args)
    if len(instances) == 1:
        return [("", instances[0][1])]
    return [(f"{name}: ", path) for name, path in instances]


def cmd_writeback(args) -> int:
    indexes = (args.page_index or []) + (args.page_indexes or [])
    if bool(indexes) == bool(args.type):
        raise ControlError("writeback takes a type or --page-index/--page-indexes, one of the two")
    targets = _each(args)
    if indexes and len(targets) > 1:
        raise ControlError(
            "page indexes name one device's pages: give --control of one striped instance"
        )
    what = args.type or f"pages {','.join(indexes)}"
    extra = {"page_indexes": ",".join(indexes)} if indexes else {"type": args.type}
    failed = False
    for (label, path), limit in zip(targets, split_count(args.limit, len(targets)), strict=True):
        result = call(path, "writeback", timeout=3600, limit=limit, **extra)
        if args.json:
            print(json.dumps(result, sort_keys=True))
        else:
            print(
                f"{label}writeback {what}: {result['written']} pages written, "
                f"{result['superseded']} rewritten meanwhile, of {result['candidates']} "
                f"candidates"
            )
        if result.get("error"):
            print(f"zramd: error: {label}writeback stopped: {result['error']}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


def cmd_idle(args) -> int:
    for label, path in _each(args):
        result = call(path, "idle", age=args.age)
        print(f"{label}{result['idle_pages']} pages idle")
    return 0


def cmd_recompress(args) -> int:
    targets = _each(args)
    for (label, path), limit in zip(targets, split_count(args.limit, len(targets)), strict=True):
        r = call(
            path, "recompress", timeout=3600, type=args.type, threshold=args.threshold, limit=limit
        )
        print(
            f"{label}recompress {args.type}: {r['recompressed']} pages recompressed "
            f"({human_size(r['saved_bytes'])} saved), {r['incompressible']} incompressible, "
            f"{r['skipped']} skipped"
        )
    return 0


def cmd_compact(args) -> int:
    for label, path in _each(args):
        r = call(path, "compact", timeout=3600)
        print(
            f"{label}compact: {r['moved']} objects moved, {r['pages_freed']} pages "
            f"({human_size(r['pages_freed'] * PAGE_SIZE)}) given back; "
            f"pages_compacted {r['pages_compacted']}, "
            f"mem_used_total {human_size(r['mem_used_total'])}"
        )
    return 0


def cmd_set(args) -> int:
    """A knob of the device (its rows of the option table, in order), through
    the control command ``set``; on striped instances each value is split
    between them as its row's ``split`` says, as ``serve --instances`` does."""
    rows = KNOBS[args.knob]
    required = sum(1 for opt in rows if opt.runtime is not None and not opt.runtime.optional)
    if not required <= len(args.values) <= len(rows):
        raise ConfigError(f"set takes {knob_usage(args.knob)}")
    targets = _each(args)
    per: list[dict] = [{} for _ in targets]
    for opt, text in zip(rows, args.values, strict=False):
        try:
            value = opt.from_text(text)
        except ConfigError as exc:  # one line that names the knob
            raise ConfigError(str(exc) if opt.label in str(exc) else f"{opt.label} {exc}") from None
        for each, part in zip(per, split_value(opt, value, len(targets)), strict=True):
            each[opt.label] = part
    for (_, path), values in zip(targets, per, strict=True):
        call(path, "set", **values)
    return 0


def cmd_from_zram_generator(args) -> int:
    try:
        with open(args.file, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"{args.file}: {exc.strerror}") from None
    sys.stdout.write(zramgen.translate(text, args.device))
    return 0


SUBCOMMANDS = {
    "from-zram-generator": cmd_from_zram_generator,
    "serve": cmd_serve,
    "stop": cmd_stop,
    "stats": cmd_stats,
    "status": cmd_status,
    "writeback": cmd_writeback,
    "idle": cmd_idle,
    "recompress": cmd_recompress,
    "compact": cmd_compact,
    "set": cmd_set,
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.command == "serve":  # which options the file must not override
        args.given_fields = given_fields(argv[argv.index("serve") + 1 :])
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
        format="%(asctime)s %(levelname)s (%(threadName)s) %(name)s: %(message)s",
    )
    try:
        return SUBCOMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"zramd: error: {exc}", file=sys.stderr)
        return 2
    except (ServerError, ControlError) as exc:
        print(f"zramd: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `zramd stats --json | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())

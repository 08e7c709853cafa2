"""The ``zramd`` command: ``serve`` a device, read its ``stats``.

Every user error ends in one line, ``zramd: error: ...``, and a non-zero
exit status (2 for bad options, 1 for a server that cannot start), never a
traceback.  No shared state.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

from . import __version__
from .checksums import CHECKSUMS
from .codecs import CODECS
from .config import FAULTS, ConfigError, Settings, default_socket_path, describe
from .device import MODES
from .control import ControlError, call
from .server import Server, ServerError
from .store import IO_STAT_FIELDS, MM_STAT_FIELDS
from .units import parse_device_size, parse_size

STAT_FILES = {"mm_stat": MM_STAT_FIELDS, "io_stat": IO_STAT_FIELDS}


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + error
        self.exit(2, f"zramd: error: {message}\n")


def _size_type(parse):
    def convert(text):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def build_parser() -> Parser:
    parser = Parser(prog="zramd", description="A zram-like compressed RAM block device over NBD.")
    parser.add_argument("--version", action="version", version=f"zramd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    serve = sub.add_parser("serve", help="serve a compressed RAM device over NBD (foreground)")
    serve.add_argument("--size", "--disksize", type=_size_type(parse_device_size),
                       default=parse_device_size("1G"), metavar="SIZE",
                       help="device size, whole 4 KiB pages (default 1G)")
    serve.add_argument("--algorithm", "--comp-algorithm", choices=sorted(CODECS), default="lz4",
                       help="compression algorithm (default lz4)")
    serve.add_argument("--level", type=int, help="zstd compression level, 1-22 (default 3)")
    serve.add_argument("--mem-limit", type=_size_type(parse_size), default=0, metavar="SIZE",
                       help="most memory the compressed data may use; writes past it fail "
                            "with ENOSPC (default: no limit)")
    serve.add_argument("--compress", choices=MODES, default="inline",
                       help="where pages are compressed: in the request thread (inline), on "
                            "worker threads after the reply (async), or async only for "
                            "requests of 64 KiB and more (hybrid) (default inline)")
    serve.add_argument("--workers", type=int, default=1,
                       help="compression worker threads for async/hybrid (default 1)")
    serve.add_argument("--pending-limit", type=_size_type(parse_size), default=64 << 20,
                       metavar="SIZE", help="most uncompressed data waiting for workers; "
                       "past it writes compress inline (default 64M)")
    serve.add_argument("--checksum", choices=["none"] + sorted(CHECKSUMS), default="none",
                       help="per-page checksums, verified on every read (default none)")
    serve.add_argument("--fault-inject", choices=FAULTS,
                       help="testing only: no-stable-writes hands nbdkit's own buffer to the "
                            "workers (corrupts data); needs --unlock-fault-injection")
    serve.add_argument("--unlock-fault-injection", action="store_true",
                       help="really allow --fault-inject")
    where = serve.add_mutually_exclusive_group()
    where.add_argument("--socket", "-U", metavar="PATH",
                       help=f"Unix socket to listen on (default {default_socket_path()})")
    where.add_argument("--port", "-p", type=int, help="TCP port to listen on instead")
    serve.add_argument("--address", "-i", default="127.0.0.1",
                       help="address for --port (default 127.0.0.1)")
    serve.add_argument("--control", metavar="PATH",
                       help="control socket (default: the NBD socket path + .ctl)")
    serve.add_argument("--threads", "-t", type=int, default=1,
                       help="nbdkit request threads per connection (default 1: fastest "
                            "for a Python plugin)")
    serve.add_argument("--no-pin-thread-state", dest="pin_thread_state", action="store_false",
                       help="do not keep nbdkit's Python thread states alive between calls")
    serve.add_argument("--swap", action="store_true",
                       help="serving swap to this host: lock memory, mark as I/O flusher")
    serve.add_argument("--verbose", "-v", action="store_true", help="nbdkit and zramd debug output")

    stats = sub.add_parser("stats", help="print a running device's zram statistics")
    _add_target(stats)
    stats.add_argument("--json", action="store_true", help="all counters as JSON")
    stats.add_argument("files", nargs="*", choices=[[]] + sorted(STAT_FILES), metavar="FILE",
                       help="mm_stat and/or io_stat (default: both, labelled)")
    return parser


def _add_target(parser) -> None:
    parser.add_argument("--socket", "-U", metavar="PATH",
                        help=f"the server's NBD socket (default {default_socket_path()})")
    parser.add_argument("--control", metavar="PATH", help="the server's control socket")


def _control_path(args) -> str:
    if args.control:
        return args.control
    return (args.socket or default_socket_path()) + ".ctl"


def connect_help(server: Server) -> str:
    s = server.settings
    uri = server.uri
    lines = [f"zramd: serving {describe(s)}",
             f"  NBD URI     {uri}",
             f"  nbdinfo     nbdinfo '{uri}'",
             f"  nbdsh       nbdsh -u '{uri}'",
             f"  qemu-img    qemu-img info '{uri}'"]
    if s.socket_path:
        path = os.path.abspath(s.socket_path)
        lines += [f"  nbd-client  nbd-client -unix {path} /dev/nbd0 -b 4096",
                  f"  qemu        qemu-system-x86_64 ... -drive driver=nbd,server.type=unix,"
                  f"server.path={path},if=none,id=zd -device virtio-blk-pci,drive=zd"]
    else:
        lines += [f"  nbd-client  nbd-client {s.address} {s.port} /dev/nbd0 -b 4096",
                  f"  qemu        qemu-system-x86_64 ... -drive driver=nbd,server.host={s.address},"
                  f"server.port={s.port},if=none,id=zd -device virtio-blk-pci,drive=zd"]
    lines += [f"  stats       zramd stats --control {s.control_path}",
              "  Stop with Ctrl-C."]
    return "\n".join(lines)


def cmd_serve(args) -> int:
    settings = Settings(size_bytes=args.size, algorithm=args.algorithm, level=args.level,
                        mem_limit_bytes=args.mem_limit, control_path=args.control,
                        pin_thread_state=args.pin_thread_state, socket_path=args.socket,
                        compress_mode=args.compress, workers=args.workers,
                        pending_limit_bytes=args.pending_limit, checksum=args.checksum,
                        fault_inject=args.fault_inject,
                        unlock_fault_injection=args.unlock_fault_injection,
                        port=args.port, address=args.address, threads=args.threads,
                        verbose=args.verbose, swap=args.swap)
    if args.port is None and args.address != "127.0.0.1":
        raise ConfigError("--address applies only with --port")
    server = Server(settings)
    stopping = []

    def on_signal(signum, frame):
        stopping.append(signum)
        server.request_stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    server.start()
    print(connect_help(server), flush=True)
    status = server.wait()
    server.stop()
    if stopping:
        print("zramd: stopped", file=sys.stderr)
        return 0
    print(f"zramd: error: nbdkit exited unexpectedly with status {status}", file=sys.stderr)
    return 1


def format_stats(stats: dict, files: list[str], labelled: bool) -> str:
    lines = []
    for name in files:
        values = " ".join(str(stats[field]) for field in STAT_FILES[name])
        lines.append(f"{name:8} {values}" if labelled else values)
    return "\n".join(lines)


def cmd_stats(args) -> int:
    stats = call(_control_path(args), "stats")
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
    else:
        files = args.files or list(STAT_FILES)
        print(format_stats(stats, files, labelled=not args.files))
    return 0


COMMANDS = {"serve": cmd_serve, "stats": cmd_stats}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(asctime)s %(levelname)s (%(threadName)s) %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
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

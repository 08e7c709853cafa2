#!/usr/bin/env python3
"""Swap a real Linux kernel onto zramd in a qemu guest, and verify every byte.

For each target this starts the server under test on a Unix socket in a
temporary directory, boots the guest that vm/build-guest.sh built (Debian's
kernel under TCG, a busybox initramfs, /init = vm/guest-init.sh), lets the
guest attach the device as swap, run vm/hog.c (fill, rewrite, verify every
byte) and swap off, and then checks what the guest and the server report.

Targets (name: server, how the guest reaches it):
  zramd-virtio   zramd; qemu's own NBD client, seen by the guest as /dev/vda
  zramd-nbd      zramd; the guest kernel's nbd driver (nbd-client -swap
                 -b 4096), through qemu's user-mode forwarding to the socket
  memory-virtio  reference: nbdkit's memory plugin (C, uncompressed), path 1
  memory-nbd     reference: nbdkit's memory plugin, path 2
  guest-zram     reference: the guest kernel's own zram (lz4), no NBD
  zramd-async-virtio, zramd-async-nbd
                 zramd --compress async (pages compressed on worker
                 threads after the reply), on path 1 and path 2
  striped-virtio zramd --instances 2, two virtio disks (/dev/vda, /dev/vdb)
  striped-nbd    zramd --instances 2, the guest's nbd driver on two
                 forwarded ports (/dev/nbd0, /dev/nbd1)
                 (striped: swap on every device at one priority, so the
                 kernel stripes pages over the instances; each must get a
                 fair share)

Guest traffic never leaves qemu: path 2 uses
`-netdev user,restrict=on,guestfwd=tcp:10.0.2.100:10809-unix:SOCK`, so the
only place the guest can reach is the server's Unix socket.

Progress goes to stdout as it happens, then a table; the full results go to
vm/cache/results.json and each guest's console to vm/cache/logs/. A failed
target prints the tail of its guest console and server log. The modules
beside this one are described in vm/__init__.py.

With --request-mix FILE (`make swap-mix`) the guest reaches the server
through nbdkit's stats filter (vm/mix.py), and the request sizes it sent on
each NBD path go to FILE (the bench replays them; docs/bench/swap-mix.md).

Usage: vm/run.py [TARGET ...] [--hog-mib N] [--mem-mib N] [--passes N] ...
Runs with the standard library only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the vm package

from vm import console, mix  # noqa: E402
from vm.guest import (  # noqa: E402
    CACHE,
    DISCARD_POLICIES,
    LOGS,
    build_guest,
    kernel_append,
    qemu_binary,
    qemu_command,
    size_mib,
    tail,
)
from vm.held import MIN_STORED_OVER_SWAP_USED  # noqa: E402,F401  (for tests/vm/test_vm.py)
from vm.report import report  # noqa: E402
from vm.result import (  # noqa: E402,F401  (re-exported for tests/vm/test_vm.py)
    AFTER_SWAPOFF_MAX_FRACTION,
    MAX_LEFT_AFTER_TEARDOWN_BYTES,
    MIN_INSTANCE_SHARE,
    MIN_RATIO,
    PAGE_BYTES,
    Result,
    check,
    max_mem_left_after_teardown_bytes,
    measure,
)
from vm.servers import DEFAULT_DEVICE_SIZE, StatsSampler, TargetServer, log, zramd_available  # noqa: E402,F401

# name -> (server kind, guest device kind)
TARGETS = {
    "zramd-virtio": ("zramd", "vda"),
    "zramd-nbd": ("zramd", "nbd"),
    "memory-virtio": ("nbdkit-memory", "vda"),
    "memory-nbd": ("nbdkit-memory", "nbd"),
    "guest-zram": (None, "zram"),
    "striped-virtio": ("zramd", "vda"),
    "striped-nbd": ("zramd", "nbd"),
    "zramd-async-virtio": ("zramd", "vda"),
    "zramd-async-nbd": ("zramd", "nbd"),
    "zramd-cold-virtio": ("zramd", "vda"),
    "zramd-cold-nbd": ("zramd", "nbd"),
}
# Targets served by `zramd serve --instances N` (docs/design.md#scaling-past-one-core).
STRIPED = {"striped-virtio": 2, "striped-nbd": 2}
ZRAMD_TARGETS = ["zramd-virtio", "zramd-nbd", *STRIPED]
# Defaults, chosen so that one target runs in about 20-45 s under TCG on two
# shared cores: a 128 MiB guest (about 80 MiB of it usable after the kernel)
# and a 160 MiB hog with 2 passes (fill, rewrite, verify) push about 84k
# pages, 2.6x the guest's RAM, out through swap and about as many back in.
DEFAULT_MEM_MIB = 128
DEFAULT_HOG_MIB = 160
DEFAULT_PASSES = 2
DEFAULT_TIMEOUT_S = 300
POLL_INTERVAL_S = 0.2

# The cold policy as the VM test runs it (docs/swap.md#a-memory-bound-with-the-cold-policy):
# recompression by age and a promotion-rate target, on the test's time scale
# (its hog runs about 10 s, so the youngest cold age is 2 s, not the 120 s a
# long-lived host would use), and writeback of the coldest pages to a backing
# file in the run's directory once memory used passes a quarter of the
# default guest's RAM. Raw writeback, not packed: packed held more RSS here
# (docs/swap.md says how much).
COLD_POLICY_ARGS = (
    "--recomp-algorithm",
    "zstd",
    "--recompress-after",
    "2",
    "--cold-target",
    "2",
    "--backing-file",
    "{tmp}/backing",
    "--high-watermark",
    f"{DEFAULT_MEM_MIB // 4}M",
)
# Extra `zramd serve` arguments per target (the bench's vm section runs
# these beside the default; docs/design.md#the-asynchronous-path).
SERVE_ARGS = {
    "zramd-async-virtio": ("--compress", "async"),
    "zramd-async-nbd": ("--compress", "async"),
    "zramd-cold-virtio": COLD_POLICY_ARGS,
    "zramd-cold-nbd": COLD_POLICY_ARGS,
}
# --request-mix without targets: zramd on both NBD paths (docs/bench/swap-mix.md).
MIX_TARGETS = ["zramd-virtio", "zramd-nbd"]


class GuestRun:
    """One target's run: the server (and its stats sampler), qemu, and the
    console events that fill ``res``. Driven by one thread, in the order
    start_server(), boot(), watch(), collect(), cleanup()."""

    def __init__(
        self,
        target: str,
        res: Result,
        server_kind: str | None,
        device_size: str,
        quiet: bool,
        request_mix: bool = False,
        serve_args: tuple[str, ...] = (),
    ):
        self.target = target
        self.res = res
        self.quiet = quiet
        self.tmp = Path(tempfile.mkdtemp(prefix="zramd-vm-"))
        self.sock = self.tmp / "server.sock"
        self.console = self.tmp / "console.log"
        self.server_log = self.tmp / "server.log"
        self.qemu_log = self.tmp / "qemu.log"
        self.t0 = time.monotonic()
        # "{tmp}" in a serve argument is this run's private directory (a backing file's home).
        serve_args = tuple(a.replace("{tmp}", str(self.tmp)) for a in serve_args)
        self.server = (
            TargetServer(
                server_kind, self.sock, self.server_log, device_size, res.instances, serve_args
            )
            if server_kind
            else None
        )
        self.sampler: StatsSampler | None = None
        # With request_mix: nbdkit's stats filter between the guest and the server.
        self.proxy = (
            mix.StatsProxy(self.server.sockets(), self.tmp, self.tmp / "proxy.log")
            if request_mix and self.server
            else None
        )
        self.qemu: subprocess.Popen | None = None
        self.timed_out = False

    def stamp(self, msg: str) -> None:
        if not self.quiet:
            log(f"[{time.monotonic() - self.t0:6.1f}s] {self.target}: {msg}")

    def start_server(self) -> None:
        if self.server is None:
            return
        self.stamp(f"starting {' '.join(self.server.command())}")
        self.server.start()
        if self.server.kind == "zramd":
            self.sampler = StatsSampler(self.server, self.t0)
            self.sampler.start()
        if self.proxy is not None:
            self.stamp(f"starting {' '.join(self.proxy.command(0))}")
            self.proxy.start()

    def boot(self, append: str) -> None:
        r = self.res
        sockets = self.server.sockets() if self.server else None
        cmd = qemu_command(
            r.dev,
            self.proxy.sockets if self.proxy else sockets,
            self.console,
            r.guest_ram_mib,
            append,
        )
        self.stamp(
            f"booting guest ({r.guest_ram_mib} MiB RAM, hog {r.hog_mib} MiB x {r.passes} passes, "
            "TCG)"
        )
        self.console.touch()
        with open(self.qemu_log, "wb") as qlog:
            self.qemu = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=qlog, stderr=subprocess.STDOUT
            )

    def watch(self, timeout_s: float) -> None:
        """Follows the console until qemu exits, the server dies or time runs out."""
        assert self.qemu is not None
        reader = console.ConsoleReader(self.console)
        deadline = self.t0 + timeout_s
        while True:
            exited = self.qemu.poll() is not None
            for line in reader.read():
                event = console.parse_line(line)
                if event is not None:
                    self.on_event(event)
            if exited:
                return
            if self.server and not self.server.alive():
                # The guest would wait for its swap device forever.
                self.res.failures.append(
                    f"server exited with status {self.server.returncode} while the "
                    f"guest was running"
                )
                self._kill_qemu()
                return
            if self.proxy and not self.proxy.alive():
                self.res.failures.append("the stats proxy exited while the guest was running")
                self._kill_qemu()
                return
            if time.monotonic() > deadline:
                self.timed_out = True
                self.res.failures.append(f"timeout: guest still running after {timeout_s} s")
                self.diagnose_stall()
                self._kill_qemu()
                return
            time.sleep(POLL_INTERVAL_S)

    def diagnose_stall(self, window_s: float = 2.0) -> None:
        """Before a timed-out guest is killed: is the server still serving
        (its request counters over ``window_s``, per instance), where do its
        threads wait, and (zramd) its Python stacks, dumped into its log."""
        if self.server is None or not self.server.alive():
            return
        lines = []
        if self.sampler is not None:
            a = self.sampler.sample("stall")
            time.sleep(window_s)
            b = self.sampler.sample("stall")
            if a and b:
                before = a.get("per_instance") or [a]
                after = b.get("per_instance") or [b]
                for i, (x, y) in enumerate(zip(before, after, strict=False)):
                    moved = {
                        k: y.get(k, 0) - x.get(k, 0)
                        for k in ("num_reads", "num_writes", "num_discards")
                    }
                    lines.append(
                        f"  instance {i}: "
                        + ", ".join(f"{v} {k}" for k, v in moved.items())
                        + f" in {window_s} s; totals {y.get('num_reads')} reads, "
                        f"{y.get('num_writes')} writes"
                    )
        states = self.server.thread_states()
        if states:
            lines.append(states)
        if self.server.dump_stacks():
            time.sleep(0.5)
            lines.append("  Python stacks: in the server log (SIGUSR1)")
        self.res.failures.append("server at the timeout:\n" + "\n".join(lines))

    def on_event(self, event: console.Event) -> None:
        res = self.res
        if isinstance(event, console.Phase):
            self.stamp(event.name)
            if event.name == "swapped-off" and self.server:
                # The guest waits a few seconds here: see what the kernel's
                # own discards left on the server.
                if self.sampler is not None:
                    res.after_swapoff = self.sampler.sample("after-swapoff")
                else:
                    res.allocated_after_swapoff_bytes = self.server.allocated_bytes()
                self.stamp("sampled the server after swapoff")
        elif isinstance(event, console.SwapSample):
            res.swap_samples.append(dict(event.values, t_s=round(time.monotonic() - self.t0, 2)))
        elif isinstance(event, console.GuestResult):
            res.guest.update(event.values)
        elif isinstance(event, console.Progress):
            v = event.values
            self.stamp(
                f"hog running {v.get('t')} s: pswpin {v.get('pswpin')}, pswpout "
                f"{v.get('pswpout')}, MemFree {v.get('memfree_kib')} KiB"
            )
        elif isinstance(event, console.HogPass):
            v = event.values
            self.stamp(
                f"hog pass {v.get('pass')} ({v.get('action')}) done in {v.get('seconds')} s, "
                f"bad pages {v.get('bad_pages')}"
            )
            if self.sampler is not None:
                self.sampler.poke()
        elif isinstance(event, console.GuestZramStat):
            res.samples.append(
                dict(
                    event.mm_stat,
                    t_s=round(time.monotonic() - self.t0, 2),
                    label=f"guest-zram-pass-{event.pass_no}",
                )
            )
        elif isinstance(event, console.HogResult):
            res.hog = event.values
        elif isinstance(event, console.HogMismatch):
            self.stamp(event.line)
        elif isinstance(event, console.GuestFail):
            self.stamp(event.line)
            res.failures.append(f"guest: {event.line}")
        elif isinstance(event, console.Done):
            res.guest["done_ok"] = event.ok

    def collect(self) -> None:
        """After qemu exited: its status, the last stats, the server's health."""
        res = self.res
        assert self.qemu is not None
        res.elapsed_s = round(time.monotonic() - self.t0, 1)
        self.stamp(f"guest exited (qemu status {self.qemu.returncode})")
        if (
            self.qemu.returncode != 0
            and not self.timed_out
            and (not self.server or self.server.alive())
        ):
            res.failures.append(
                f"qemu exited with status {self.qemu.returncode}: {tail(self.qemu_log, 5)}"
            )
        if self.sampler is not None:
            self.sampler.stop()
            if self.server is not None and self.server.alive():
                # After the guest's blkdiscard no page is stored, but the
                # arena keeps a block per size class until compaction
                # (docs/design.md#page-arena-and-memory-accounting): compact,
                # as zram's `echo 1 > compact`, then judge what is left.
                self.sampler.sample("after-blkdiscard")
                self.server.compact()
            res.final = self.sampler.sample("final")
            res.samples += self.sampler.samples
            if self.sampler.errors:
                res.failures.append(
                    f"zramd stats failed {len(self.sampler.errors)} times: "
                    f"{self.sampler.errors[-1]}"
                )
        if self.server:
            if not self.server.alive():
                if not any("server exited" in x for x in res.failures):
                    res.failures.append(
                        f"server died during the run (status {self.server.returncode})"
                    )
            elif self.server.kind != "zramd":
                res.allocated_after_bytes = self.server.allocated_bytes()

    def stop_proxy(self) -> None:
        """Ends the stats proxy (the guest is gone): its stats become the
        run's request mix."""
        if self.proxy is None:
            return
        try:
            stats = self.proxy.stop()
        except RuntimeError as e:
            self.res.failures.append(str(e))
            return
        self.res.request_stats = stats
        self.res.request_mix = mix.path_mix(stats)
        self.res.request_coverage = mix.coverage(stats)
        self.stamp(f"request mix: {json.dumps(self.res.request_mix)}")

    def _kill_qemu(self) -> None:
        if self.qemu and self.qemu.poll() is None:
            self.qemu.kill()
            self.qemu.wait()

    def cleanup(self) -> None:
        """Stops everything, keeps the logs in vm/cache/logs/."""
        res = self.res
        self._kill_qemu()
        if self.sampler is not None and self.sampler.is_alive():
            self.sampler.stop()
        self.stop_proxy()
        if self.server:
            rc = self.server.stop()
            if rc not in (0, -signal.SIGTERM, None) and not res.failures:
                res.failures.append(f"server exited with status {rc} on SIGTERM")
        for src, name in (
            (self.console, "console"),
            (self.server_log, "server"),
            (self.qemu_log, "qemu"),
            (self.tmp / "proxy.log", "proxy"),
            *(
                (f, f"proxy{i}.stats")
                for i, f in enumerate(self.proxy.statsfiles if self.proxy else [])
            ),
        ):
            if src.exists():
                shutil.copy(src, LOGS / f"{self.target}.{name}.log")
        res.console_log = str(LOGS / f"{self.target}.console.log")
        res.server_log = str(LOGS / f"{self.target}.server.log") if self.server else ""
        shutil.rmtree(self.tmp, ignore_errors=True)


def _log_failure(target: str, res: Result, stalled: bool) -> None:
    """A failed run's failures, and the tails of its guest console and
    server log (longer after a timeout)."""
    # A timeout brings the guest's blocked-task stacks and the server's
    # Python stacks: show enough of both logs to read them.
    log(f"---- {target} FAILED:\n  " + "\n  ".join(res.failures))
    log(
        f"---- {target}: guest console tail ({res.console_log}):\n"
        f"{tail(Path(res.console_log), 200 if stalled else 40)}"
    )
    if res.server_log:
        log(
            f"---- {target}: server log tail "
            f"({res.server_log}):\n{tail(Path(res.server_log), 200 if stalled else 20)}"
        )


def run_target(
    target: str,
    *,
    mem_mib: int = DEFAULT_MEM_MIB,
    hog_mib: int = DEFAULT_HOG_MIB,
    passes: int = DEFAULT_PASSES,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    corrupt_page: int = -1,
    device_size: str = DEFAULT_DEVICE_SIZE,
    min_ratio: float = MIN_RATIO,
    zram_extra_mib: int | None = None,
    quiet: bool = False,
    request_mix: bool = False,
    discard: str = "both",
    page_cluster: int | None = None,
    serve_args: tuple[str, ...] | None = None,
) -> Result:
    """Boots the guest against one target and returns what it measured and
    which checks failed (Result.failures empty and Result.ok True when all
    passed). The guest must have been built (build_guest()).

    guest-zram keeps its compressed store in the guest's own RAM, so with the
    same RAM it runs out of memory where an external device does not: it gets
    zram_extra_mib more (default hog_mib // 2); the other numbers (hog size,
    the 2x-RAM check) stay those of mem_mib.

    request_mix: the guest reaches the server through nbdkit's stats filter
    (vm/mix.py), and Result.request_mix holds the sizes it sent.

    discard: the guest's swapon discard policy (both, once, pages, none:
    vm/swapon-prio.c); device_size: the server's --size, and guest-zram's
    disksize when it is not the default (guest-init.sh's 512M otherwise);
    page_cluster: the guest's vm.page-cluster (None: the kernel's 3);
    serve_args: zramd's extra arguments (None: the target's SERVE_ARGS)."""
    server_kind, dev = TARGETS[target]
    if zram_extra_mib is None:
        zram_extra_mib = hog_mib // 2
    guest_ram_mib = mem_mib + (zram_extra_mib if dev == "zram" else 0)
    res = Result(
        target=target,
        server=server_kind,
        dev=dev,
        mem_mib=mem_mib,
        hog_mib=hog_mib,
        passes=passes,
        guest_ram_mib=guest_ram_mib,
        instances=STRIPED.get(target, 1),
        discard=discard,
        device_size=device_size,
    )
    zram_mib = size_mib(device_size) if device_size != DEFAULT_DEVICE_SIZE else None
    LOGS.mkdir(parents=True, exist_ok=True)
    run = GuestRun(
        target,
        res,
        server_kind,
        device_size,
        quiet,
        request_mix,
        SERVE_ARGS.get(target, ()) if serve_args is None or server_kind != "zramd" else serve_args,
    )
    try:
        run.start_server()
        run.boot(
            kernel_append(
                dev, hog_mib, passes, corrupt_page, res.instances, discard, zram_mib, page_cluster
            )
        )
        run.watch(timeout_s)
        run.collect()
    except Exception as e:
        res.failures.append(f"{type(e).__name__}: {e}")
    finally:
        run.cleanup()
    measure(res)
    check(res, min_ratio)
    res.ok = not res.failures
    if not res.ok and not quiet:
        _log_failure(target, res, run.timed_out)
    return res


def mix_targets_unfit(targets: list[str]) -> str | None:
    """Why these targets cannot make one request-mix file, or None: each
    needs a server, and each path (qemu, nbd) comes from one target."""
    names = [mix.PATH_NAMES.get(TARGETS[t][1]) for t in targets]
    if None in names:
        return f"--request-mix: {targets[names.index(None)]} has no NBD path"
    if len(set(names)) != len(names):
        return f"--request-mix: one target per path ({', '.join(mix.PATH_NAMES.values())})"
    return None


def versions() -> str:
    """The guest kernel, qemu and nbdkit, for the docs page."""
    kernel = "?"
    env = CACHE / "guest.env"
    if env.exists():
        for line in env.read_text().splitlines():
            if line.startswith("KVER="):
                kernel = line.split("=", 1)[1]
    out = [f"guest kernel {kernel}"]
    for cmd in ([qemu_binary() or "qemu-system-x86_64", "--version"], ["nbdkit", "--version"]):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            out.append(p.stdout.splitlines()[0].strip())
        except (OSError, subprocess.TimeoutExpired, IndexError):
            out.append(f"{Path(cmd[0]).name} ?")
    return ", ".join(out)


def command_line(argv: list[str]) -> str:
    """vm/run.py's command line, paths inside the checkout relative to it."""
    root = Path(__file__).resolve().parent.parent
    words = []
    for word in argv:
        try:
            words.append(str(Path(word).resolve().relative_to(root)) if "/" in word else word)
        except ValueError:
            words.append(word)
    return " ".join(["vm/run.py", *words])


def write_request_mix(
    path: Path, results: list[Result], page: Path | None = None, command: str = ""
) -> bool:
    """Writes the mix file (and the docs page) from the runs' request
    stats, each path's rounds summed; False (and nothing written) when a
    run failed or measured none."""
    bad = [r.target for r in results if not r.ok or r.request_stats is None]
    if bad:
        log(f"request mix not written: {', '.join(bad)} failed")
        return False
    by_path: dict[str, list[Result]] = {}
    for r in results:
        by_path.setdefault(mix.PATH_NAMES[r.dev], []).append(r)
    r0 = results[0]
    rounds = min(len(rs) for rs in by_path.values())
    servers = " and ".join(sorted({r.server or "" for r in results}))
    measured = mix.measured_sentence(r0.mem_mib, r0.hog_mib, r0.passes, servers, rounds)
    pooled = {
        name: mix.merge_stats([r.request_stats or {} for r in rs]) for name, rs in by_path.items()
    }
    paths = {name: mix.path_mix(stats) for name, stats in pooled.items()}
    doc = mix.write_mix(path, measured, paths)
    log(f"request mix: {path}")
    for name, entry in paths.items():
        log(f"  {name}: {json.dumps(entry)}")
    if page is not None:
        runs = {
            name: {
                "target": rs[0].target,
                "pooled": mix.coverage(pooled[name]),
                "rounds": [
                    {
                        "mix": r.request_mix,
                        "pages_out": r.pages_out,
                        "pages_in": r.pages_in,
                        "elapsed_s": r.elapsed_s,
                        "coverage": r.request_coverage,
                    }
                    for r in rs
                ],
            }
            for name, rs in by_path.items()
        }
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(mix.render_markdown(doc, runs, command, versions()))
        log(f"request mix page: {page}")
    return True


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "targets",
        nargs="*",
        metavar="TARGET",
        help=f"targets to run (default: all): {', '.join(TARGETS)}",
    )
    ap.add_argument("--mem-mib", type=int, default=DEFAULT_MEM_MIB, help="guest RAM")
    ap.add_argument("--hog-mib", type=int, default=DEFAULT_HOG_MIB, help="memory the hog fills")
    ap.add_argument("--passes", type=int, default=DEFAULT_PASSES, help="hog passes")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per target")
    ap.add_argument(
        "--corrupt-page",
        type=int,
        default=-1,
        help="self-test: the hog corrupts this page, so verification must fail",
    )
    ap.add_argument(
        "--json", type=Path, default=CACHE / "results.json", help="where to write results"
    )
    ap.add_argument("--no-build", action="store_true", help="do not run build-guest.sh first")
    ap.add_argument(
        "--discard",
        choices=DISCARD_POLICIES,
        default="both",
        help="the guest's swapon discard policy (swapon --discard=POLICY; none: no discard)",
    )
    ap.add_argument(
        "--device-size",
        default=DEFAULT_DEVICE_SIZE,
        help="the swap device's size: the server's --size, guest-zram's disksize",
    )
    ap.add_argument(
        "--page-cluster",
        type=int,
        help="the guest's vm.page-cluster (swap readahead of 2^N pages; default: the kernel's)",
    )
    ap.add_argument(
        "--request-mix",
        type=Path,
        metavar="FILE",
        help="put nbdkit's stats filter between guest and server and write the request "
        "sizes per path to FILE (docs/bench/swap-mix.md; default targets: "
        f"{' '.join(MIX_TARGETS)})",
    )
    ap.add_argument(
        "--request-mix-md",
        type=Path,
        metavar="PAGE",
        help="with --request-mix: also write the Markdown page of the mix",
    )
    ap.add_argument(
        "--serve-arg",
        action="append",
        metavar="ARG",
        help="an extra `zramd serve` argument for zramd targets, in place of the target's "
        "own (repeat it; {tmp} is the run's private directory, e.g. --serve-arg=--backing-file "
        "--serve-arg={tmp}/backing)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the targets this many times, in turn (--request-mix sums the rounds)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    targets = args.targets or (MIX_TARGETS if args.request_mix else list(TARGETS))
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    if args.request_mix:
        why = mix_targets_unfit(targets)
        if why:
            ap.error(why)
    if not args.no_build:
        build_guest()
    if not qemu_binary():
        log("qemu-system-x86_64 is missing")
        return 2
    results = [
        run_target(
            t,
            mem_mib=args.mem_mib,
            hog_mib=args.hog_mib,
            passes=args.passes,
            timeout_s=args.timeout,
            corrupt_page=args.corrupt_page,
            request_mix=args.request_mix is not None,
            discard=args.discard,
            device_size=args.device_size,
            page_cluster=args.page_cluster,
            serve_args=tuple(args.serve_arg) if args.serve_arg else None,
        )
        for _ in range(args.rounds)
        for t in targets
    ]
    mix_failed = args.request_mix is not None and not write_request_mix(
        args.request_mix,
        results,
        args.request_mix_md,
        command_line(sys.argv[1:] if argv is None else argv),
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
    log("")
    log(report(results))
    log(f"\nresults: {args.json}; guest consoles: {LOGS}/")
    return 0 if all(r.ok for r in results) and not mix_failed else 1


if __name__ == "__main__":
    sys.exit(main())

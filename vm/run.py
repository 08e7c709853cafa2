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

Guest traffic never leaves qemu: path 2 uses
`-netdev user,restrict=on,guestfwd=tcp:10.0.2.100:10809-unix:SOCK`, so the
only place the guest can reach is the server's Unix socket.

Progress goes to stdout as it happens, then a table; the full results go to
vm/cache/results.json and each guest's console to vm/cache/logs/. A failed
target prints the tail of its guest console and server log.

Usage: vm/run.py [TARGET ...] [--hog-mib N] [--mem-mib N] [--passes N] ...
Runs with the standard library only.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

VM_DIR = Path(__file__).resolve().parent
ROOT = VM_DIR.parent
CACHE = VM_DIR / "cache"
LOGS = CACHE / "logs"
PAGE_BYTES = 4096
GUEST_FWD_ADDR = "10.0.2.100"  # exists only inside qemu's user-mode network
GUEST_FWD_PORT = 10809
MM_STAT = ["orig_data_size", "compr_data_size", "mem_used_total", "mem_limit", "mem_used_max",
           "same_pages", "pages_compacted", "huge_pages", "huge_pages_since"]

# name -> (server kind, guest device kind)
TARGETS = {
    "zramd-virtio": ("zramd", "vda"),
    "zramd-nbd": ("zramd", "nbd"),
    "memory-virtio": ("nbdkit-memory", "vda"),
    "memory-nbd": ("nbdkit-memory", "nbd"),
    "guest-zram": (None, "zram"),
}
ZRAMD_TARGETS = ["zramd-virtio", "zramd-nbd"]

# Defaults, chosen so that one target runs in about 20-45 s under TCG on two
# shared cores: a 128 MiB guest (about 80 MiB of it usable after the kernel)
# and a 160 MiB hog with 2 passes (fill, rewrite, verify) push about 84k
# pages, 2.6x the guest's RAM, out through swap and about as many back in.
DEFAULT_MEM_MIB = 128
DEFAULT_HOG_MIB = 160
DEFAULT_PASSES = 2
DEFAULT_DEVICE_SIZE = "1G"
DEFAULT_TIMEOUT_S = 300
STATS_INTERVAL_S = 2.0
# zramd-side acceptance: the hog's pages compress to about a third (lz4) and
# one in 16 is same-filled, so anything under 1.5 means compression is off.
MIN_RATIO = 1.5
# Right after swapoff, with `swapon --discard`, what may stay stored: pages
# still swapped out when swapoff began (the initramfs's tmpfs files and
# such: measured 6-10% of the peak orig_data_size with the defaults).
AFTER_SWAPOFF_MAX_FRACTION = 0.25
# After the guest's teardown (blkdiscard of the whole device): nothing, bar
# rounding.
MAX_LEFT_AFTER_TEARDOWN_BYTES = 1 << 20


def log(msg: str) -> None:
    print(msg, flush=True)


def zramd_command() -> list[str]:
    """The zramd CLI: $ZRAMD_CLI if set, else the project's venv."""
    if os.environ.get("ZRAMD_CLI"):
        return os.environ["ZRAMD_CLI"].split()
    return [str(ROOT / ".venv" / "bin" / "zramd")]


def zramd_available() -> tuple[bool, str]:
    cmd = zramd_command()
    try:
        p = subprocess.run(cmd + ["serve", "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"{' '.join(cmd)} serve --help: {e}"
    if p.returncode != 0:
        return False, f"{' '.join(cmd)} serve --help failed: {(p.stderr or p.stdout).strip()[-400:]}"
    return True, ""


def qemu_binary() -> str | None:
    return shutil.which("qemu-system-x86_64")


def build_guest(force: bool = False) -> None:
    """Runs vm/build-guest.sh (idempotent; fast when the cache is current)."""
    cmd = ["bash", str(VM_DIR / "build-guest.sh")] + (["--force"] if force else [])
    subprocess.run(cmd, check=True)


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path}: missing)"
    return "\n".join(text.splitlines()[-lines:])


class Server:
    """The NBD server under test, on a Unix socket: start, stats, stop.

    kind "zramd" runs `zramd serve --socket SOCK --size SIZE` (foreground,
    stops on SIGTERM); "nbdkit-memory" runs `nbdkit -f -U SOCK memory SIZE`.
    """

    def __init__(self, kind: str, sock: Path, log_path: Path, size: str = DEFAULT_DEVICE_SIZE):
        self.kind = kind
        self.sock = sock
        self.log_path = log_path
        self.size = size
        self.proc: subprocess.Popen | None = None
        self._log = None

    def command(self) -> list[str]:
        if self.kind == "zramd":
            return zramd_command() + ["serve", "--socket", str(self.sock), "--size", self.size]
        if self.kind == "nbdkit-memory":
            return ["nbdkit", "-f", "-U", str(self.sock), "memory", self.size]
        raise ValueError(f"unknown server kind {self.kind}")

    def start(self, timeout_s: float = 60) -> None:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=ROOT)
        deadline = time.monotonic() + timeout_s
        # zramd's control socket (stats) comes up just after the NBD socket.
        ready = [self.sock] + ([Path(f"{self.sock}.ctl")] if self.kind == "zramd" else [])
        while not all(p.exists() for p in ready):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited with {self.proc.returncode} before its "
                                   f"socket appeared:\n{tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind} server: no {' and '.join(map(str, ready))} "
                                   f"after {timeout_s} s:\n{tail(self.log_path)}")
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stats(self) -> dict | None:
        """zramd's counters (zram names), or None for servers without any."""
        if self.kind != "zramd":
            return None
        p = subprocess.run(zramd_command() + ["stats", "--socket", str(self.sock), "--json"],
                           capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            raise RuntimeError(f"zramd stats failed: {(p.stderr or p.stdout).strip()[-300:]}")
        return json.loads(p.stdout)

    def allocated_bytes(self) -> int | None:
        """Bytes the server reports as data (not holes) via nbdinfo --map, if available."""
        if not shutil.which("nbdinfo"):
            return None
        uri = f"nbd+unix:///?socket={self.sock}"
        p = subprocess.run(["nbdinfo", "--map", "--totals", "--json", uri],
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            log(f"nbdinfo --map failed: {p.stderr.strip()[-300:]}")
            return None
        try:
            rows = json.loads(p.stdout)
        except ValueError:
            log(f"nbdinfo --map: unexpected output {p.stdout[:300]!r}")
            return None
        # --totals --json: [{"size": N, "percent": P, "type": T, "description": "..."}]
        # type bit 0 = hole; anything without it holds data.
        return sum(r["size"] for r in rows if not (r.get("type", 0) & 1))

    def stop(self, timeout_s: float = 20) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log:
            self._log.close()
        return self.proc.returncode

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


class StatsSampler(threading.Thread):
    """Samples server stats every `interval_s` and when poked (hog pass ends)."""

    def __init__(self, server: Server, t0: float, interval_s: float = STATS_INTERVAL_S):
        super().__init__(name="stats", daemon=True)
        self.server, self.t0, self.interval_s = server, t0, interval_s
        self.samples: list[dict] = []
        self.errors: list[str] = []
        self._poke = threading.Event()
        self._halt = threading.Event()

    def poke(self) -> None:
        self._poke.set()

    def sample(self, label: str = "") -> dict | None:
        try:
            s = self.server.stats()
        except Exception as e:  # recorded, judged by the checks
            self.errors.append(str(e))
            return None
        if s is not None:
            s = dict(s, t_s=round(time.monotonic() - self.t0, 2), label=label)
            self.samples.append(s)
        return s

    def run(self) -> None:
        while not self._halt.is_set():
            self._poke.wait(self.interval_s)
            if self._halt.is_set():
                break
            label = "pass-end" if self._poke.is_set() else "periodic"
            self._poke.clear()
            self.sample(label)

    def stop(self) -> None:
        self._halt.set()
        self._poke.set()
        self.join(30)


@dataclasses.dataclass
class Result:
    target: str
    server: str | None
    dev: str
    mem_mib: int                    # the workload's guest RAM (the 2x check uses it)
    hog_mib: int
    passes: int
    guest_ram_mib: int = 0          # qemu -m: mem_mib, plus room for guest-zram's store
    ok: bool = False
    failures: list = dataclasses.field(default_factory=list)
    elapsed_s: float = 0.0          # qemu start to exit, host clock
    hog_s: float | None = None      # the hog's run, guest clock
    pages_out: int | None = None    # /proc/vmstat pswpout delta over the hog
    pages_in: int | None = None     # pswpin delta over the hog
    pages_in_swapoff: int | None = None  # pswpin during swapoff
    swap_in_rate: float | None = None    # pages_in / hog_s
    swap_out_rate: float | None = None
    ratio: float | None = None      # orig_data_size / compr_data_size at the peak
    peak: dict | None = None        # server stats sample with the largest orig_data_size
    after_swapoff: dict | None = None  # server stats right after swapoff (kernel discards only)
    final: dict | None = None       # server stats after the guest's blkdiscard and power-off
    allocated_after_swapoff_bytes: int | None = None  # nbdinfo --map data bytes (non-zramd)
    allocated_after_bytes: int | None = None
    guest: dict = dataclasses.field(default_factory=dict)  # ZRAMD-RESULT keys
    hog: dict = dataclasses.field(default_factory=dict)    # HOG-RESULT keys
    samples: list = dataclasses.field(default_factory=list)
    console_log: str = ""
    server_log: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _kv(text: str) -> dict:
    out = {}
    for m in re.finditer(r"(\w+)=(\S*)", text):
        v = m.group(2)
        try:
            out[m.group(1)] = int(v)
        except ValueError:
            try:
                out[m.group(1)] = float(v)
            except ValueError:
                out[m.group(1)] = v
    return out


def qemu_command(dev: str, sock: Path | None, console: Path, mem_mib: int, append: str) -> list[str]:
    cmd = [qemu_binary() or "qemu-system-x86_64",
           "-accel", "tcg", "-m", f"{mem_mib}M", "-smp", "1",
           "-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot",
           "-serial", f"file:{console}",
           "-kernel", str(CACHE / "vmlinuz"), "-initrd", str(CACHE / "initramfs.cpio.gz"),
           "-append", append]
    if dev == "vda":
        # Path 1: qemu's own NBD client, a virtio disk in the guest. discard=unmap
        # passes the guest's discards on as NBD trims.
        cmd += ["-drive", f"driver=nbd,server.type=unix,server.path={sock},if=none,id=d0,discard=unmap",
                "-device", "virtio-blk-pci,drive=d0"]
    elif dev == "nbd":
        # Path 2: the guest's nbd driver. restrict=on cuts the guest off from
        # everything but the guestfwd rule, which qemu itself connects to SOCK.
        cmd += ["-netdev", f"user,id=n0,restrict=on,"
                           f"guestfwd=tcp:{GUEST_FWD_ADDR}:{GUEST_FWD_PORT}-unix:{sock}",
                "-device", "virtio-net-pci,netdev=n0"]
    return cmd


def run_target(target: str, *, mem_mib: int = DEFAULT_MEM_MIB, hog_mib: int = DEFAULT_HOG_MIB,
               passes: int = DEFAULT_PASSES, timeout_s: float = DEFAULT_TIMEOUT_S,
               corrupt_page: int = -1, device_size: str = DEFAULT_DEVICE_SIZE,
               min_ratio: float = MIN_RATIO, zram_extra_mib: int | None = None,
               quiet: bool = False) -> Result:
    """Boots the guest against one target and returns what it measured and
    which checks failed (Result.failures empty and Result.ok True when all
    passed). The guest must have been built (build_guest()).

    guest-zram keeps its compressed store in the guest's own RAM, so with the
    same RAM it runs out of memory where an external device does not: it gets
    zram_extra_mib more (default hog_mib // 2); the other numbers (hog size,
    the 2x-RAM check) stay those of mem_mib."""
    server_kind, dev = TARGETS[target]
    if zram_extra_mib is None:
        zram_extra_mib = hog_mib // 2
    guest_ram_mib = mem_mib + (zram_extra_mib if dev == "zram" else 0)
    res = Result(target=target, server=server_kind, dev=dev, mem_mib=mem_mib,
                 hog_mib=hog_mib, passes=passes, guest_ram_mib=guest_ram_mib)
    LOGS.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="zramd-vm-"))
    sock = tmp / "server.sock"
    console = tmp / "console.log"
    server_log = tmp / "server.log"
    qemu_log = tmp / "qemu.log"
    say = (lambda msg: None) if quiet else log
    t0 = time.monotonic()

    def stamp(msg: str) -> None:
        say(f"[{time.monotonic() - t0:6.1f}s] {target}: {msg}")

    server = Server(server_kind, sock, server_log, device_size) if server_kind else None
    sampler = None
    qemu = None
    try:
        if server:
            stamp(f"starting {' '.join(server.command())}")
            server.start()
            if server_kind == "zramd":
                sampler = StatsSampler(server, t0)
                sampler.start()
        append = (f"console=ttyS0 loglevel=4 panic=-1 mitigations=off "
                  f"zramd.dev={dev} zramd.hog_mib={hog_mib} zramd.passes={passes} "
                  f"zramd.corrupt={corrupt_page}")
        cmd = qemu_command(dev, sock if server else None, console, guest_ram_mib, append)
        stamp(f"booting guest ({guest_ram_mib} MiB RAM, hog {hog_mib} MiB x {passes} passes, TCG)")
        console.touch()
        with open(qemu_log, "wb") as qlog:
            qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=qlog, stderr=subprocess.STDOUT)
        deadline = t0 + timeout_s
        pos = 0
        pending = ""
        timed_out = False
        while True:
            exited = qemu.poll() is not None
            with open(console, "rb") as f:
                f.seek(pos)
                chunk = f.read()
                pos += len(chunk)
            pending += chunk.decode(errors="replace")
            *lines, pending = pending.split("\n")
            for line in lines:
                line = line.strip("\r")
                if line.startswith("ZRAMD-PHASE "):
                    stamp(line.split(" ", 1)[1])
                    if line == "ZRAMD-PHASE swapped-off" and server:
                        # The guest waits a few seconds here: see what the
                        # kernel's own discards left on the server.
                        if sampler is not None:
                            res.after_swapoff = sampler.sample("after-swapoff")
                        else:
                            res.allocated_after_swapoff_bytes = server.allocated_bytes()
                        stamp("sampled the server after swapoff")
                elif line.startswith("ZRAMD-RESULT "):
                    res.guest.update(_kv(line[len("ZRAMD-RESULT "):]))
                elif line.startswith("HOG-PASS "):
                    kv = _kv(line)
                    stamp(f"hog pass {kv.get('pass')} ({kv.get('action')}) done in "
                          f"{kv.get('seconds')} s, bad pages {kv.get('bad_pages')}")
                    if sampler is not None:
                        sampler.poke()
                elif line.startswith("HOG-STAT ") and "/zram0/mm_stat " in line:
                    # The guest's own zram, sampled by the hog after each pass.
                    nums = line.split("/zram0/mm_stat ", 1)[1].split()
                    if len(nums) >= len(MM_STAT) and all(n.isdigit() for n in nums):
                        res.samples.append(dict(zip(MM_STAT, map(int, nums)),
                                                t_s=round(time.monotonic() - t0, 2),
                                                label=f"guest-zram-pass-{_kv(line).get('pass')}"))
                elif line.startswith("HOG-RESULT "):
                    res.hog = _kv(line)
                elif line.startswith("HOG-MISMATCH ") or line.startswith("ZRAMD-FAIL "):
                    stamp(line)
                    if line.startswith("ZRAMD-FAIL "):
                        res.failures.append(f"guest: {line}")
                elif line.startswith("ZRAMD-DONE "):
                    res.guest["done_ok"] = _kv(line).get("ok")
            if exited:
                break
            if server and not server.alive():
                # The guest would wait for its swap device forever.
                res.failures.append(f"server exited with status {server.proc.returncode} while the "
                                    f"guest was running")
                qemu.kill()
                qemu.wait()
                break
            if time.monotonic() > deadline:
                timed_out = True
                qemu.kill()
                qemu.wait()
                res.failures.append(f"timeout: guest still running after {timeout_s} s")
                break
            time.sleep(0.2)
        res.elapsed_s = round(time.monotonic() - t0, 1)
        stamp(f"guest exited (qemu status {qemu.returncode})")
        if qemu.returncode != 0 and not timed_out and (not server or server.alive()):
            res.failures.append(f"qemu exited with status {qemu.returncode}: {tail(qemu_log, 5)}")
        if sampler is not None:
            sampler.stop()
            res.final = sampler.sample("final")
            res.samples += sampler.samples
            if sampler.errors:
                res.failures.append(f"zramd stats failed {len(sampler.errors)} times: {sampler.errors[-1]}")
        if server:
            if not server.alive():
                if not any("server exited" in x for x in res.failures):
                    res.failures.append(f"server died during the run (status {server.proc.returncode})")
            elif server.kind != "zramd":
                res.allocated_after_bytes = server.allocated_bytes()
    except Exception as e:
        res.failures.append(f"{type(e).__name__}: {e}")
    finally:
        if qemu and qemu.poll() is None:
            qemu.kill()
            qemu.wait()
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        if server:
            rc = server.stop()
            if rc not in (0, -signal.SIGTERM, None) and not res.failures:
                res.failures.append(f"server exited with status {rc} on SIGTERM")
        for src, name in ((console, "console"), (server_log, "server"), (qemu_log, "qemu")):
            if src.exists():
                shutil.copy(src, LOGS / f"{target}.{name}.log")
        res.console_log = str(LOGS / f"{target}.console.log")
        res.server_log = str(LOGS / f"{target}.server.log") if server else ""
        shutil.rmtree(tmp, ignore_errors=True)

    _measure(res)
    _check(res, min_ratio)
    res.ok = not res.failures
    if not res.ok and not quiet:
        log(f"---- {target} FAILED:\n  " + "\n  ".join(res.failures))
        log(f"---- {target}: guest console tail ({res.console_log}):\n{tail(Path(res.console_log))}")
        if res.server_log:
            log(f"---- {target}: server log tail ({res.server_log}):\n{tail(Path(res.server_log), 20)}")
    return res


def _measure(res: Result) -> None:
    g = res.guest
    if "pswpout_after" in g and "pswpout_before" in g:
        res.pages_out = g["pswpout_after"] - g["pswpout_before"]
        res.pages_in = g["pswpin_after"] - g["pswpin_before"]
    if "pswpin_swapoff" in g and "pswpin_after" in g:
        res.pages_in_swapoff = g["pswpin_swapoff"] - g["pswpin_after"]
    if "hog_end_s" in g and "hog_start_s" in g:
        res.hog_s = round(g["hog_end_s"] - g["hog_start_s"], 2)
        if res.hog_s > 0 and res.pages_in is not None:
            res.swap_in_rate = round(res.pages_in / res.hog_s)
            res.swap_out_rate = round(res.pages_out / res.hog_s)
    with_data = [s for s in res.samples if s.get("orig_data_size", 0) > 0]
    if with_data:
        res.peak = max(with_data, key=lambda s: s["orig_data_size"])
        if res.peak.get("compr_data_size"):
            res.ratio = round(res.peak["orig_data_size"] / res.peak["compr_data_size"], 2)


def _check(res: Result, min_ratio: float) -> None:
    f = res.failures
    g, h = res.guest, res.hog
    if g.get("done_ok") != 1:
        f.append("guest did not finish its scenario (no ZRAMD-DONE ok=1)")
    if not h:
        f.append("hog printed no result")
    elif h.get("ok") != 1 or h.get("bad_pages") != 0:
        f.append(f"verification failed: {h.get('bad_pages')} bad pages, {h.get('bad_bytes')} bad bytes")
    if g.get("hog_rc") not in (0, None) and h.get("ok") == 1:
        f.append(f"hog exited with status {g.get('hog_rc')}")
    if res.pages_out is None:
        f.append("no swap counters from the guest")
    else:
        ram_pages = res.mem_mib * (1 << 20) // PAGE_BYTES
        if res.pages_out < 2 * ram_pages:
            f.append(f"only {res.pages_out} pages swapped out, less than twice the guest's RAM "
                     f"({2 * ram_pages} pages)")
        if res.pages_in <= 0:
            f.append("no page was swapped in")
    if res.server != "zramd":
        return
    # zramd's side.
    if res.peak is None:
        f.append("zramd never reported orig_data_size > 0 while the guest swapped")
    else:
        if res.ratio is None or res.ratio < min_ratio:
            f.append(f"compression ratio {res.ratio} below {min_ratio}")
        if not res.peak.get("same_pages"):
            f.append("zramd stored no same-filled page (the hog writes one page in 16 same-filled)")
    if g.get("done_ok") != 1:
        return  # the checks below judge the end of a finished scenario
    last = res.final
    if last is None:
        f.append("no zramd stats after the run")
        return
    # Reads: the guest swapped pages in (checked above) and they can only
    # have come from zramd; where zramd counts requests, check its side too.
    for key in ("num_reads", "num_writes", "num_discards"):
        if key in last and not last[key]:
            f.append(f"zramd {key}=0 after the run")
    for key in ("failed_reads", "failed_writes", "invalid_io"):
        if last.get(key):
            f.append(f"zramd {key}={last[key]}")
    # The kernel's own discards (swapon --discard): slots freed while swap is
    # on (the hog exiting) are discarded, so by the end of swapoff zramd must
    # have freed pages and given back most of its peak. Slots still in use
    # when swapoff starts are read back but not discarded (swapoff clears
    # SWP_WRITEOK first): that remainder is what the blkdiscard teardown is for.
    # (notify_free alone proves little: swapon's discard of the whole device
    # already counts every page.)
    a = res.after_swapoff
    if a is None:
        f.append("no zramd stats right after swapoff")
    elif res.peak is not None:
        if a.get("notify_free", 0) <= res.peak.get("notify_free", 0):
            f.append(f"zramd freed no page between the peak and swapoff (notify_free "
                     f"{res.peak.get('notify_free')} -> {a.get('notify_free')}): discards did not arrive")
        if a.get("orig_data_size", 0) > res.peak["orig_data_size"] * AFTER_SWAPOFF_MAX_FRACTION:
            f.append(f"after swapoff zramd still holds orig_data_size={a.get('orig_data_size')}, more "
                     f"than {AFTER_SWAPOFF_MAX_FRACTION:.0%} of its peak {res.peak['orig_data_size']}: "
                     f"the kernel's discards did not return the memory")
    for key in ("orig_data_size", "mem_used_total"):
        if last.get(key, 0) > MAX_LEFT_AFTER_TEARDOWN_BYTES:
            f.append(f"after the guest discarded the whole device zramd still has {key}={last[key]} "
                     f"(> {MAX_LEFT_AFTER_TEARDOWN_BYTES})")


def _fmt(v, unit: str = "") -> str:
    return "-" if v is None else f"{v}{unit}"


def report(results: list[Result]) -> str:
    head = ["target", "ok", "pages out", "pages in", "hog s", "total s", "swap-in/s", "ratio",
            "peak used MiB", "used after swapoff MiB", "after blkdiscard MiB"]
    mib = lambda b: "-" if b is None else f"{b / (1 << 20):.1f}"
    rows = []
    for r in results:
        peak = r.peak.get("mem_used_total") if r.peak else None
        if r.server == "zramd":
            swapoff = (r.after_swapoff or {}).get("mem_used_total")
            final = (r.final or {}).get("mem_used_total")
        elif r.server is None and "zram_mm_stat_after_swapoff" in r.guest:
            swapoff = int(str(r.guest["zram_mm_stat_after_swapoff"]).split(",")[2])
            final = None
        else:  # nbdkit memory: allocated (non-hole) bytes as nbdinfo --map sees them
            swapoff, final = r.allocated_after_swapoff_bytes, r.allocated_after_bytes
        rows.append([r.target, "PASS" if r.ok else "FAIL", _fmt(r.pages_out), _fmt(r.pages_in),
                     _fmt(r.hog_s), _fmt(r.elapsed_s), _fmt(r.swap_in_rate), _fmt(r.ratio),
                     mib(peak), mib(swapoff), mib(final)])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*", metavar="TARGET",
                    help=f"targets to run (default: all): {', '.join(TARGETS)}")
    ap.add_argument("--mem-mib", type=int, default=DEFAULT_MEM_MIB, help="guest RAM")
    ap.add_argument("--hog-mib", type=int, default=DEFAULT_HOG_MIB, help="memory the hog fills")
    ap.add_argument("--passes", type=int, default=DEFAULT_PASSES, help="hog passes")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per target")
    ap.add_argument("--corrupt-page", type=int, default=-1,
                    help="self-test: the hog corrupts this page, so verification must fail")
    ap.add_argument("--json", type=Path, default=CACHE / "results.json", help="where to write results")
    ap.add_argument("--no-build", action="store_true", help="do not run build-guest.sh first")
    args = ap.parse_args(argv)
    targets = args.targets or list(TARGETS)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    if not args.no_build:
        build_guest()
    if not qemu_binary():
        log("qemu-system-x86_64 is missing")
        return 2
    results = []
    for t in targets:
        results.append(run_target(t, mem_mib=args.mem_mib, hog_mib=args.hog_mib, passes=args.passes,
                                  timeout_s=args.timeout, corrupt_page=args.corrupt_page))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
    log("")
    log(report(results))
    log(f"\nresults: {args.json}; guest consoles: {LOGS}/")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

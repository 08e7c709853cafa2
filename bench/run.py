#!/usr/bin/env python3
"""zramd benchmark suite: zramd against its peers, one system after the other
on the same machine and the same data.

    .venv/bin/python bench/run.py            # default run, about 10 minutes
    .venv/bin/python bench/run.py --quick    # whole pipeline in about a minute
    .venv/bin/python bench/run.py --systems 'zramd-*,kernel-zram-lz4' --runtime 10
    .venv/bin/python bench/run.py --list

Systems (SYSTEMS below; adding a zramd mode is one line): every zramd codec,
nbdkit's memory plugin (C, uncompressed) and memory allocator=zstd (C,
compressed: the nearest peer), nbdkit null (C: transport ceiling), a null
Python plugin (Python ceiling, with and without the thread-state pin) and the
kernel's zram with lz4 (fio libaio on a zram device; skipped with a line
saying why where the kernel has none or it is not writable).

Datasets: "fio" is fio's compressible buffers (buffer_compress_percentage=50);
"corpus" is a swap-like corpus of real process memory (bench/corpus.py),
generated at bench time into bench/corpus/ (gitignored). Each dataset starts
on a fresh server: the whole region is written first (128 KiB sequential
writes with fio, or the corpus file through libnbd / dd), then the storage
statistics are read (compression ratio, memory per stored page), then the
workloads run on top. Reads therefore always hit written data.

Outputs in --out (default bench/results/<timestamp>/, gitignored):
results.json, results.md, iops.png, throughput.png, storage.png, logs/.
A default run also refreshes bench/results/latest.md and bench/results/latest/.

Numbers drift between runs and machines (and on a shared machine, a lot):
compare systems within one run. Nothing here asserts timings.
"""

import argparse
import dataclasses
import datetime
import fnmatch
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
import corpus as corpus_mod  # noqa: E402

PAGE_BYTES = 4096
NULL_PLUGIN = BENCH_DIR / "null_plugin.py"
ZRAM_CONTROL = Path("/sys/class/zram-control")


# --------------------------------------------------------------------------
# Systems. One line per system: name, kind, arguments, description.
#   kind "zramd":  zramd serve --socket SOCK --size SIZE <args>
#   kind "nbdkit": nbdkit -f -U SOCK <args>   ({size} and {null_plugin} expand)
#   kind "zram":   the kernel's zram, <args> = (algorithm,)
# stores=False: the system keeps no data (no corpus dataset, no storage stats).


@dataclasses.dataclass(frozen=True)
class System:
    name: str
    kind: str
    args: tuple
    description: str
    stores: bool = True


SYSTEMS = [
    System("zramd-lz4", "zramd", ("--algorithm", "lz4"), "zramd, lz4, inline compression"),
    System("zramd-zstd", "zramd", ("--algorithm", "zstd"), "zramd, zstd (default level), inline compression"),
    System("zramd-none", "zramd", ("--algorithm", "none"), "zramd, no compression"),
    System("zramd-lz4-async", "zramd", ("--algorithm", "lz4", "--compress", "async", "--workers", "1"),
           "zramd, lz4, async compression (stable writes, 1 worker)"),
    System("zramd-lz4-async2", "zramd", ("--algorithm", "lz4", "--compress", "async", "--workers", "2"),
           "zramd, lz4, async compression (stable writes, 2 workers)"),
    System("zramd-lz4-hybrid", "zramd", ("--algorithm", "lz4", "--compress", "hybrid", "--workers", "1"),
           "zramd, lz4, hybrid: async for requests >= 64 KiB, inline below"),
    System("zramd-lz4-xxh3", "zramd", ("--algorithm", "lz4", "--checksum", "xxh3"),
           "zramd, lz4, inline, per-page xxh3 checksums"),
    System("zramd-lz4-nopin", "zramd", ("--algorithm", "lz4", "--no-pin-thread-state"),
           "zramd, lz4, inline, thread state not pinned"),
    System("nbdkit-memory", "nbdkit", ("memory", "{size}"), "nbdkit memory plugin (C, uncompressed)"),
    System("nbdkit-zstd", "nbdkit", ("memory", "{size}", "allocator=zstd"),
           "nbdkit memory allocator=zstd (C, compressed)"),
    System("nbdkit-null", "nbdkit", ("null", "{size}"), "nbdkit null plugin (C): transport ceiling", stores=False),
    System("python-null", "nbdkit", ("--threads", "1", "python", "{null_plugin}", "size={size}"),
           "null Python plugin, --threads 1: Python ceiling", stores=False),
    System("python-null-pinned", "nbdkit", ("--threads", "1", "python", "{null_plugin}", "size={size}", "pin=1"),
           "null Python plugin, --threads 1, thread state kept", stores=False),
    System("kernel-zram-lz4", "zram", ("lz4",), "kernel zram, lz4 (fio libaio, direct)"),
]

ZRAM_PEER = "kernel-zram-lz4"
ZSTD_PEER = "nbdkit-zstd"


# --------------------------------------------------------------------------
# Workloads. A "fill" writes the whole region once (it is also measured);
# the others are time based on the filled region.


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    dataset: str          # "fio" or "corpus"
    rw: str               # fio rw=, or "corpus-fill"
    bs_bytes: int
    iodepth: int
    rwmixread: int = 0
    fill: bool = False


WORKLOADS = [
    Workload("seqwrite-128k", "fio", "write", 128 << 10, 16, fill=True),
    Workload("randwrite-4k-qd1", "fio", "randwrite", 4096, 1),
    Workload("randwrite-4k-qd16", "fio", "randwrite", 4096, 16),
    Workload("randread-4k-qd1", "fio", "randread", 4096, 1),
    Workload("randread-4k-qd16", "fio", "randread", 4096, 16),
    Workload("randrw70-4k-qd1", "fio", "randrw", 4096, 1, rwmixread=70),
    Workload("randrw70-4k-qd16", "fio", "randrw", 4096, 16, rwmixread=70),
    Workload("seqread-128k", "fio", "read", 128 << 10, 16),
    Workload("fill-256k", "corpus", "corpus-fill", 256 << 10, 1, fill=True),
    Workload("randread-4k-qd1", "corpus", "randread", 4096, 1),
    Workload("randread-4k-qd16", "corpus", "randread", 4096, 16),
]

FIO_DATA_OPTIONS = ["--buffer_compress_percentage=50"]


# --------------------------------------------------------------------------
# Helpers


class Progress:
    def __init__(self):
        self.t0 = time.monotonic()

    def elapsed(self):
        return time.monotonic() - self.t0

    def __call__(self, msg):
        print("[%6.1fs] %s" % (self.elapsed(), msg), flush=True)


def size_arg(nbytes):
    if nbytes % (1 << 20) == 0:
        return "%dM" % (nbytes >> 20)
    return str(nbytes)


class SkipSystem(Exception):
    """The system cannot run here; the message says why."""


class Server:
    """An NBD server process on a Unix socket (nbdkit, or zramd serve which
    runs nbdkit itself): start, wait for the socket, stop (TERM, then KILL)."""

    def __init__(self, cmd, sock, log_path):
        self.cmd = cmd
        self.sock = sock
        self.log_path = log_path
        self.proc = None

    def start(self, timeout_s=30):
        self.log = open(self.log_path, "ab")
        self.log.write(("$ %s\n" % " ".join(map(str, self.cmd))).encode())
        self.log.flush()
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited with %s: %s" % (self.proc.returncode, self.log_tail()))
            if os.path.exists(self.sock):  # nbdkit listens right after bind()
                time.sleep(0.1)
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("server did not listen on %s within %d s: %s" % (self.sock, timeout_s, self.log_tail()))

    def log_tail(self, nbytes=600):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - nbytes))
                return f.read().decode(errors="replace").strip().replace("\n", " | ")
        except OSError:
            return ""

    def pids(self):
        return corpus_mod.descendants(self.proc.pid) if self.proc and self.proc.poll() is None else []

    def rss_bytes(self):
        return corpus_mod.rss_bytes(self.pids())

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                for pid in reversed(self.pids()):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.proc.wait()
        self.proc = None
        self.log.close()
        try:
            os.unlink(self.sock)
        except FileNotFoundError:
            pass


class ZramDevice:
    """A kernel zram device of our own: hot_add a new one where the kernel
    offers zram-control, else use zram0 only if it is unused (disksize 0)."""

    def __init__(self, algorithm, size_bytes):
        self.algorithm = algorithm
        self.size_bytes = size_bytes
        self.index = None
        self.added = False

    @staticmethod
    def available():
        """None if usable, else the reason it is not."""
        if not Path("/sys/block/zram0").exists() and not ZRAM_CONTROL.exists():
            return "kernel has no zram (no /sys/block/zram0; modprobe zram if it is a module)"
        if os.geteuid() != 0:
            return "kernel zram needs root"
        return None

    @property
    def sys(self):
        return Path("/sys/block/zram%d" % self.index)

    @property
    def dev(self):
        return "/dev/zram%d" % self.index

    def setup(self):
        reason = self.available()
        if reason:
            raise SkipSystem(reason)
        try:
            self.index = int((ZRAM_CONTROL / "hot_add").read_text())
            self.added = True
        except OSError:
            self.index = 0
            if int(self.sys.joinpath("disksize").read_text()) != 0:
                raise SkipSystem("/dev/zram0 is in use (disksize set) and no new device can be added; "
                                 "not touching it")
        try:
            (self.sys / "reset").write_text("1")
            algorithms = (self.sys / "comp_algorithm").read_text().replace("[", "").replace("]", "").split()
            if self.algorithm not in algorithms:
                raise SkipSystem("kernel zram has no %s (has: %s)" % (self.algorithm, " ".join(algorithms)))
            (self.sys / "comp_algorithm").write_text(self.algorithm)
            (self.sys / "disksize").write_text(str(self.size_bytes))
        except OSError as e:
            self.teardown()
            raise SkipSystem("kernel zram not writable: %s" % e)
        deadline = time.monotonic() + 5
        while not os.path.exists(self.dev) and time.monotonic() < deadline:
            time.sleep(0.05)

    def mm_stat(self):
        names = ["orig_data_size", "compr_data_size", "mem_used_total", "mem_limit", "mem_used_max",
                 "same_pages", "pages_compacted", "huge_pages", "huge_pages_since"]
        values = [int(v) for v in (self.sys / "mm_stat").read_text().split()]
        return dict(zip(names, values))

    def teardown(self):
        if self.index is None:
            return
        try:
            (self.sys / "reset").write_text("1")
        except OSError:
            pass
        if self.added:
            try:
                (ZRAM_CONTROL / "hot_remove").write_text(str(self.index))
            except OSError:
                pass
        self.index = None


def find_zramd(explicit):
    if explicit:
        return explicit
    for candidate in (Path(sys.executable).parent / "zramd", ROOT / ".venv" / "bin" / "zramd"):
        if candidate.exists():
            return str(candidate)
    return shutil.which("zramd")


def zramd_stats(zramd, sock):
    out = subprocess.run([zramd, "stats", "--socket", sock, "--json"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError("zramd stats failed: %s" % (out.stderr.strip() or out.stdout.strip()))
    return json.loads(out.stdout)


def zramd_stats_settled(zramd, sock, timeout_s=5.0):
    """Stats once they stop changing (asynchronous modes may lag the flush)."""
    deadline = time.monotonic() + timeout_s
    prev = zramd_stats(zramd, sock)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        cur = zramd_stats(zramd, sock)
        if cur == prev:
            return cur
        prev = cur
    return prev


# --------------------------------------------------------------------------
# fio


def fio_job(target, w, region_bytes, runtime_s, ramp_s, json_path):
    cmd = ["fio", "--name=%s" % w.name, "--output-format=json", "--output=%s" % json_path,
           "--size=%d" % region_bytes, "--bs=%d" % w.bs_bytes, "--rw=%s" % w.rw,
           "--iodepth=%d" % w.iodepth, "--numjobs=1",
           # Percentiles of the whole latency (submit to completion): libaio on
           # zram completes inside io_submit, where completion latency alone is ~0.
           "--lat_percentiles=1", "--clat_percentiles=0"]
    cmd += target
    if w.rw.startswith("rand"):
        cmd += ["--norandommap", "--randrepeat=0"]
    if w.rwmixread:
        cmd += ["--rwmixread=%d" % w.rwmixread]
    if "write" in w.rw or w.rw == "randrw":
        cmd += FIO_DATA_OPTIONS
    if w.fill:
        cmd += ["--end_fsync=1"]
    else:
        cmd += ["--time_based", "--runtime=%dms" % int(runtime_s * 1000)]
        if ramp_s > 0:
            cmd += ["--ramp_time=%dms" % int(ramp_s * 1000)]
    return cmd


def run_fio(cmd, log, timeout_s):
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    log.write("$ %s\n%s%s" % (" ".join(cmd), out.stdout, out.stderr))
    json_path = [a for a in cmd if a.startswith("--output=")][0].split("=", 1)[1]
    try:
        text = Path(json_path).read_text()
        data = json.loads(text[text.index("{"):])  # the nbd engine may print a line first
    except (OSError, ValueError) as e:
        raise RuntimeError("fio failed (rc %d): %s %s" % (out.returncode, out.stderr.strip()[-400:], e))
    job = data["jobs"][0]
    if out.returncode != 0 or job.get("error"):
        raise RuntimeError("fio failed (rc %d, error %s): %s" % (out.returncode, job.get("error"),
                                                                   out.stderr.strip()[-400:]))
    result = {"elapsed_s": round(time.monotonic() - t0, 2), "usr_cpu": job.get("usr_cpu"),
              "sys_cpu": job.get("sys_cpu")}
    total_iops = total_bw = 0.0
    for direction in ("read", "write"):
        d = job[direction]
        if not d.get("total_ios") and not d.get("io_bytes"):
            continue
        pct = d.get("lat_ns", {}).get("percentile") or d.get("clat_ns", {}).get("percentile", {})
        result[direction] = {
            "iops": d["iops"],
            "bw_bytes": d["bw_bytes"],
            "p50_us": pct.get("50.000000", 0) / 1000,
            "p99_us": pct.get("99.000000", 0) / 1000,
            "mean_us": d.get("lat_ns", {}).get("mean", 0) / 1000,
            "ios": d.get("total_ios"),
        }
        total_iops += d["iops"]
        total_bw += d["bw_bytes"]
    result["iops"] = total_iops
    result["mb_per_s"] = total_bw / 1e6
    sides = [result[d] for d in ("read", "write") if d in result]
    result["p50_us"] = max(s["p50_us"] for s in sides) if sides else 0
    result["p99_us"] = max(s["p99_us"] for s in sides) if sides else 0
    return result


# --------------------------------------------------------------------------
# Filling with the corpus


def fill_corpus_nbd(sock, corpus_path, chunk_bytes):
    """Write the corpus file through libnbd (plain writes: zero pages stay
    writes, as a kernel swapping would send them)."""
    t0 = time.monotonic()
    try:
        import nbd
    except ImportError:
        nbd = None
    if nbd is not None:
        h = nbd.NBD()
        h.connect_uri("nbd+unix:///?socket=%s" % sock)
        offset = 0
        with open(corpus_path, "rb") as f:
            while True:
                chunk = f.read(chunk_bytes)
                if not chunk:
                    break
                h.pwrite(chunk, offset)
                offset += len(chunk)
        if h.can_flush():
            h.flush()
        h.shutdown()
        method = "libnbd pwrite %d KiB, one at a time" % (chunk_bytes >> 10)
    else:
        subprocess.run(["nbdcopy", "--no-extents", "--connections=1", "--requests=1",
                        "--request-size=%d" % chunk_bytes, "--flush", corpus_path,
                        "nbd+unix:///?socket=%s" % sock], check=True, capture_output=True)
        offset = os.path.getsize(corpus_path)
        method = "nbdcopy %d KiB requests, one at a time" % (chunk_bytes >> 10)
    return offset, time.monotonic() - t0, method


def fill_corpus_dev(dev, corpus_path, chunk_bytes):
    t0 = time.monotonic()
    subprocess.run(["dd", "if=%s" % corpus_path, "of=%s" % dev, "bs=%d" % chunk_bytes, "oflag=direct",
                    "conv=fsync", "status=none"], check=True, capture_output=True)
    return os.path.getsize(corpus_path), time.monotonic() - t0, "dd oflag=direct bs=%dK" % (chunk_bytes >> 10)


# --------------------------------------------------------------------------
# Storage statistics


def storage_record(system, dataset, stored_bytes, stats=None, rss_delta=None, rss_after=None):
    """Compression ratio and memory per stored page, from whatever the system
    exposes: zram/zramd stats (payload and mem_used_total) and/or RSS."""
    rec = {"system": system.name, "dataset": dataset}
    orig = stored_bytes
    if stats:
        rec["stats"] = stats
        orig = stats.get("orig_data_size") or stored_bytes
    pages = orig / PAGE_BYTES
    rec["orig_bytes"] = orig
    rec["pages"] = int(pages)
    compr = stats.get("compr_data_size") if stats else None
    mem_stats = stats.get("mem_used_total") if stats else None
    rec["compr_bytes"] = compr
    rec["mem_used_total_bytes"] = mem_stats
    rec["rss_delta_bytes"] = rss_delta
    rec["rss_after_bytes"] = rss_after
    if stats:
        rec["same_pages"] = stats.get("same_pages")
        rec["huge_pages"] = stats.get("huge_pages")
    # The memory a system needs for the data: RSS growth for processes (it
    # counts every allocator and interpreter cost), mm_stat's mem_used_total
    # for the kernel (the slot table sized at disksize is not in it).
    memory = rss_delta if rss_delta is not None else mem_stats
    rec["memory_bytes"] = memory
    rec["memory_source"] = "RSS delta" if rss_delta is not None else ("mem_used_total" if mem_stats else None)
    rec["ratio"] = orig / compr if compr else None
    rec["memory_ratio"] = orig / memory if memory and memory > 0 else None
    rec["bytes_per_page"] = memory / pages if memory is not None and pages else None
    rec["overhead_bytes_per_page"] = (memory - compr) / pages if memory is not None and compr is not None and pages else None
    rec["stats_overhead_bytes_per_page"] = ((mem_stats - compr) / pages
                                            if mem_stats is not None and compr is not None and pages else None)
    return rec


# --------------------------------------------------------------------------
# Running


class Bench:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.progress = Progress()
        self.results = []
        self.storage = []
        self.systems = []
        self.tmp = tempfile.mkdtemp(prefix="zramd-bench-")  # short socket paths
        self.zramd = find_zramd(args.zramd)
        self.corpus = None

    def workloads(self, system):
        out = []
        for w in WORKLOADS:
            if w.dataset not in self.args.datasets:
                continue
            if w.dataset == "corpus" and not system.stores:
                continue
            if self.args.workloads and not any(fnmatch.fnmatch(w.name, p) or fnmatch.fnmatch("%s/%s" % (w.dataset, w.name), p)
                                               for p in self.args.workloads):
                if not w.fill:
                    continue
            out.append(w)
        return out

    def server_cmd(self, system, sock):
        size = size_arg(self.args.region_bytes)
        if system.kind == "zramd":
            if not self.zramd:
                raise SkipSystem("zramd CLI not found (run `make setup`, or pass --zramd PATH)")
            return [self.zramd, "serve", "--socket", sock, "--size", size] + list(system.args)
        if system.kind == "nbdkit":
            if not shutil.which("nbdkit"):
                raise SkipSystem("nbdkit not installed")
            args = [a.format(size=size, null_plugin=NULL_PLUGIN) for a in system.args]
            return ["nbdkit", "-f", "-U", sock] + args
        raise ValueError(system.kind)

    def run_dataset(self, system, dataset, workloads, log):
        """Fresh target, fill, storage stats, then the timed workloads."""
        name = system.name
        server = zram = None
        sock = os.path.join(self.tmp, "%s.sock" % name)
        try:
            if system.kind == "zram":
                zram = ZramDevice(system.args[0], self.args.region_bytes)
                zram.setup()
                target = ["--ioengine=libaio", "--direct=1", "--filename=%s" % zram.dev]
            else:
                server = Server(self.server_cmd(system, sock), sock, str(self.logs / ("%s.server.log" % name)))
                server.start()
                target = ["--ioengine=nbd", "--uri=nbd+unix:///?socket=%s" % sock]
            time.sleep(0.2)
            rss_before = server.rss_bytes() if server else None
            for w in workloads:
                label = "%-18s %-6s %-17s" % (name, dataset, w.name)
                self.progress("%s ..." % label)
                if w.rw == "corpus-fill":
                    if zram:
                        nbytes, secs, method = fill_corpus_dev(zram.dev, self.corpus, w.bs_bytes)
                    else:
                        nbytes, secs, method = fill_corpus_nbd(sock, self.corpus, w.bs_bytes)
                    res = {"iops": nbytes / w.bs_bytes / secs, "mb_per_s": nbytes / 1e6 / secs,
                           "p50_us": None, "p99_us": None, "elapsed_s": round(secs, 2), "method": method}
                else:
                    json_path = self.logs / ("%s.%s.%s.json" % (name, dataset, w.name))
                    cmd = fio_job(target, w, self.args.region_bytes, self.args.runtime_s, self.args.ramp_s, json_path)
                    res = run_fio(cmd, log, timeout_s=max(300, 20 * (self.args.runtime_s + self.args.ramp_s)))
                rec = {"system": name, "dataset": dataset, "workload": w.name, "rw": w.rw,
                       "bs_bytes": w.bs_bytes, "iodepth": w.iodepth}
                rec.update(res)
                self.results.append(rec)
                p = "" if rec["p50_us"] is None else "  p50 %7.1f µs  p99 %8.1f µs" % (rec["p50_us"], rec["p99_us"])
                self.progress("%s %9.0f IOPS %8.1f MB/s%s" % (label, rec["iops"], rec["mb_per_s"], p))
                if w.fill and system.stores:
                    stats = None
                    if zram:
                        stats = zram.mm_stat()
                    elif system.kind == "zramd":
                        stats = zramd_stats_settled(self.zramd, sock)
                    rss_after = server.rss_bytes() if server else None
                    srec = storage_record(system, dataset, self.args.region_bytes, stats,
                                          None if server is None else rss_after - rss_before, rss_after)
                    self.storage.append(srec)
                    self.progress("%-18s %-6s stored %.0f MiB: ratio %s, memory %s/page (%s), overhead %s B/page" % (
                        name, dataset, srec["orig_bytes"] / 2**20, _fmt(srec["ratio"], "%.2f"),
                        _fmt(srec["bytes_per_page"], "%.0f B"), srec["memory_source"],
                        _fmt(srec["overhead_bytes_per_page"], "%.0f")))
        finally:
            if server:
                server.stop()
            if zram:
                zram.teardown()

    def run_system(self, system):
        entry = {"name": system.name, "kind": system.kind, "description": system.description,
                 "args": list(system.args), "skipped": None, "error": None,
                 "loadavg_at_start": os.getloadavg()}
        self.systems.append(entry)
        if system.kind == "zram":
            entry["command"] = "fio --ioengine=libaio --direct=1 --filename=/dev/zramN (comp_algorithm=%s)" % system.args[0]
        else:
            try:
                entry["command"] = " ".join(map(str, self.server_cmd(system, "SOCK")))
            except SkipSystem as e:
                entry["skipped"] = str(e)
                self.progress("%-18s SKIPPED: %s" % (system.name, e))
                return
        workloads = self.workloads(system)
        with open(self.logs / ("%s.fio.log" % system.name), "a") as log:
            for dataset in ("fio", "corpus"):
                ws = [w for w in workloads if w.dataset == dataset]
                if not ws:
                    continue
                try:
                    self.run_dataset(system, dataset, ws, log)
                except SkipSystem as e:
                    entry["skipped"] = str(e)
                    self.progress("%-18s SKIPPED: %s" % (system.name, e))
                    return
                except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as e:
                    entry["error"] = "%s: %s" % (dataset, e)
                    self.progress("%-18s FAILED (%s): %s" % (system.name, dataset, e))

    def run(self):
        a = self.args
        selected = [s for s in SYSTEMS if not a.systems or any(fnmatch.fnmatch(s.name, p) for p in a.systems)]
        if not selected:
            raise SystemExit("no system matches %s (see --list)" % ",".join(a.systems))
        jobs = sum(len([w for w in self.workloads(s) if not w.fill]) for s in selected)
        fills = sum(len([w for w in self.workloads(s) if w.fill]) for s in selected)
        self.progress("zramd bench: %d systems, %d timed jobs of %.1f+%.1f s, %d fills of %d MiB, out %s" % (
            len(selected), jobs, a.runtime_s, a.ramp_s, fills, a.region_bytes >> 20, self.out))
        self.progress("estimated duration: about %.0f s" % (jobs * (a.runtime_s + a.ramp_s + 0.3)
                                                            + fills * (1 + a.region_bytes / 150e6) + 10))
        if "corpus" in a.datasets and any(s.stores for s in selected):
            self.progress("corpus: %d MiB swap-like corpus in %s" % (a.region_bytes >> 20, a.corpus_dir))
            self.corpus, self.corpus_info = corpus_mod.ensure(a.corpus_dir, a.region_bytes, a.regenerate_corpus)
        else:
            self.corpus_info = None
        started = datetime.datetime.now()
        try:
            for system in selected:
                self.run_system(system)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.progress("done in %.0f s" % self.progress.elapsed())
        return {
            "meta": machine_info(a, started, self.progress.elapsed(), self.zramd),
            "corpus": self.corpus_info,
            "systems": self.systems,
            "workloads": [dataclasses.asdict(w) for w in WORKLOADS if w.dataset in a.datasets],
            "results": self.results,
            "storage": self.storage,
        }


def _fmt(value, spec):
    return "-" if value is None else spec % value


def _cmd_out(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info(args, started, duration_s, zramd):
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    os_name = ""
    try:
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    nbdkit_python = ""
    for line in _cmd_out(["nbdkit", "python", "--dump-plugin"]).splitlines():
        if line.startswith("python_version="):
            nbdkit_python = line.split("=", 1)[1]
    return {
        "started": started.isoformat(timespec="seconds"),
        "duration_s": round(duration_s, 1),
        "quick": args.quick,
        "region_bytes": args.region_bytes,
        "runtime_s": args.runtime_s,
        "ramp_s": args.ramp_s,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_bytes": mem_kib * 1024,
        "os": os_name,
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "nbdkit_python": nbdkit_python,
        "fio": _cmd_out(["fio", "--version"]),
        "nbdkit": _cmd_out(["nbdkit", "--version"]),
        "zramd": zramd,
        "fio_data_options": FIO_DATA_OPTIONS,
        "argv": sys.argv[1:],
    }


# --------------------------------------------------------------------------
# Report


def _lookup(results, system, dataset, workload):
    for r in results:
        if r["system"] == system and r["dataset"] == dataset and r["workload"] == workload:
            return r
    return None


def add_ratios(report):
    for r in report["results"]:
        for peer, key in ((ZRAM_PEER, "vs_kernel_zram"), (ZSTD_PEER, "vs_nbdkit_zstd")):
            p = _lookup(report["results"], peer, r["dataset"], r["workload"])
            r[key] = r["mb_per_s"] / p["mb_per_s"] if p and p["mb_per_s"] else None
    for s in report["storage"]:
        for peer, key in ((ZRAM_PEER, "ratio_vs_kernel_zram"), (ZSTD_PEER, "memory_vs_nbdkit_zstd")):
            p = next((x for x in report["storage"] if x["system"] == peer and x["dataset"] == s["dataset"]), None)
            if key == "ratio_vs_kernel_zram":
                s[key] = s["ratio"] / p["ratio"] if p and p["ratio"] and s["ratio"] else None
            else:
                s[key] = (s["bytes_per_page"] / p["bytes_per_page"]
                          if p and p["bytes_per_page"] and s["bytes_per_page"] is not None else None)


def evaluate_targets(report):
    """The issue's targets, per zramd system. Reported, never asserted."""
    targets = []
    res, sto = report["results"], report["storage"]

    def ratio(system, workload, peer):
        a, b = _lookup(res, system, "fio", workload), _lookup(res, peer, "fio", workload)
        return (a["mb_per_s"] / b["mb_per_s"]) if a and b and b["mb_per_s"] else None

    for s in report["systems"]:
        if s["kind"] != "zramd" or s["skipped"]:
            continue
        n = s["name"]
        for workload, peer, want, what in (
                ("randwrite-4k-qd16", ZRAM_PEER, 0.6, "4 KiB randwrite qd16 IOPS vs kernel zram"),
                ("randread-4k-qd16", ZRAM_PEER, 0.5, "4 KiB randread qd16 IOPS vs kernel zram"),
                ("randwrite-4k-qd16", ZSTD_PEER, 5.0, "4 KiB randwrite qd16 IOPS vs nbdkit zstd"),
                ("randread-4k-qd16", ZSTD_PEER, 1.3, "4 KiB randread qd16 IOPS vs nbdkit zstd"),
                ("seqwrite-128k", ZSTD_PEER, 1.0, "128 KiB seq write MB/s vs nbdkit zstd")):
            v = ratio(n, workload, peer)
            targets.append({"system": n, "target": what, "want": ">= %.1fx" % want,
                            "measured": None if v is None else "%.2fx" % v, "met": None if v is None else v >= want})
        for rec in (x for x in sto if x["system"] == n):
            v = rec["overhead_bytes_per_page"]
            targets.append({"system": n, "target": "overhead beyond payload, %s data (RSS)" % rec["dataset"],
                            "want": "<= 64 B/page", "measured": None if v is None else "%.0f B/page" % v,
                            "met": None if v is None else v <= 64})
            if n.startswith("zramd-lz4"):
                v = rec.get("ratio_vs_kernel_zram")
                targets.append({"system": n, "target": "compression ratio vs kernel zram lz4, %s data" % rec["dataset"],
                                "want": "within 3%", "measured": None if v is None else "%+.1f%%" % ((v - 1) * 100),
                                "met": None if v is None else abs(v - 1) <= 0.03})
    report["targets"] = targets


def _num(v, spec="%.0f"):
    return "-" if v is None else spec % v


def _x(v):
    return "-" if v is None else "%.2fx" % v


def _lat(r, key):
    if r.get(key) is None:
        return "-"
    if "read" in r and "write" in r:  # mixed: read/write
        return "%.0f/%.0f" % (r["read"][key], r["write"][key])
    return "%.0f" % r[key]


def markdown(report, charts=True):
    m = report["meta"]
    lines = []
    lines.append("# zramd benchmark%s" % (" (quick mode)" if m["quick"] else ""))
    lines.append("")
    lines.append("Run %s, %.0f s. Machine: %s, %d cores, %.0f GiB RAM, %s, kernel %s; load average at start %s. "
                 "%s, nbdkit %s (embedded Python %s). Region %d MiB per system; timed jobs %.1f s after %.1f s ramp." % (
                     m["started"], m["duration_s"], m["cpu"], m["cores"], m["mem_bytes"] / 2**30, m["os"], m["kernel"],
                     " ".join("%.2f" % x for x in m["loadavg_at_start"]), m["fio"], m["nbdkit"].replace("nbdkit ", ""),
                     m["nbdkit_python"], m["region_bytes"] >> 20, m["runtime_s"], m["ramp_s"]))
    lines.append("")
    lines.append("Datasets: **fio** = fio's compressible buffers (`%s`); **corpus** = swap-like corpus of real process "
                 "memory (resident anonymous pages of python3, sort and gcc started by the bench%s). "
                 "Each dataset starts on a fresh device whose whole region is written first (the fill rows), "
                 "so reads always hit written data. NBD systems use fio `ioengine=nbd` over a Unix socket; "
                 "kernel zram uses fio `libaio`, `direct=1`. Python plugins run with `nbdkit --threads 1`, "
                 "as zramd does. Numbers drift between runs; compare within one run." % (
                     " ".join(m["fio_data_options"]),
                     (", %d pages, %d zero" % (report["corpus"]["pages"], report["corpus"]["zero_pages"]))
                     if report.get("corpus") else ""))
    lines.append("")
    lines.append("| system | data | workload | IOPS | MB/s | p50 µs | p99 µs | vs kernel zram | vs nbdkit zstd |")
    lines.append("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in report["results"]:
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["system"], r["dataset"], r["workload"], _num(r["iops"]), _num(r["mb_per_s"], "%.1f"),
            _lat(r, "p50_us"), _lat(r, "p99_us"), _x(r.get("vs_kernel_zram")), _x(r.get("vs_nbdkit_zstd"))))
    lines.append("")
    lines.append("Mixed rows show read/write latency. Ratio columns compare MB/s (= IOPS at equal block size) "
                 "with the same data and workload. Fill rows: 128 KiB fio writes (fio data), "
                 "or the corpus written in 256 KiB requests one at a time (libnbd, or dd for kernel zram).")
    lines.append("")
    lines.append("## Compression and memory")
    lines.append("")
    lines.append("| system | data | stored MiB | ratio | vs kernel zram | memory | memory source | bytes/page "
                 "| overhead B/page | stats overhead B/page | same pages | huge pages |")
    lines.append("|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for s in report["storage"]:
        lines.append("| %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            s["system"], s["dataset"], s["orig_bytes"] / 2**20, _num(s["ratio"], "%.2f"),
            _x(s.get("ratio_vs_kernel_zram")),
            "-" if s["memory_bytes"] is None else "%.1f MiB" % (s["memory_bytes"] / 2**20),
            s["memory_source"] or "-", _num(s["bytes_per_page"]), _num(s["overhead_bytes_per_page"]),
            _num(s["stats_overhead_bytes_per_page"]), _num(s.get("same_pages")), _num(s.get("huge_pages"))))
    lines.append("")
    lines.append("ratio = orig_data_size / compr_data_size (payload only; same-filled pages count as free). "
                 "memory = what the data made the system use: RSS growth of the server process tree between "
                 "start and the end of the fill for processes, mm_stat mem_used_total for kernel zram (which "
                 "leaves out its per-slot table sized at disksize, as RSS deltas leave out what a server "
                 "allocates at start). bytes/page = memory / stored pages; overhead = (memory - payload) / pages; "
                 "stats overhead = (mem_used_total - compr_data_size) / pages from the system's own stats.")
    if report.get("targets"):
        lines.append("")
        lines.append("## Targets (issue 5)")
        lines.append("")
        lines.append("| system | target | want | measured | met |")
        lines.append("|---|---|---|---:|---|")
        for t in report["targets"]:
            met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**")
            lines.append("| %s | %s | %s | %s | %s |" % (t["system"], t["target"], t["want"], t["measured"] or "-", met))
    notes = [s for s in report["systems"] if s["skipped"] or s["error"]]
    if notes:
        lines.append("")
        lines.append("## Skipped or failed")
        lines.append("")
        for s in notes:
            lines.append("- %s: %s" % (s["name"], ("skipped: " + s["skipped"]) if s["skipped"] else ("failed: " + s["error"])))
    lines.append("")
    lines.append("## Systems")
    lines.append("")
    for s in report["systems"]:
        lines.append("- **%s**: %s (`%s`); load average at its start %.2f" % (
            s["name"], s["description"], s.get("command", ""), s.get("loadavg_at_start", (0,))[0]))
    if charts and report.get("charts"):
        lines.append("")
        for c in report["charts"]:
            lines.append("![%s](%s)" % (c, c))
    lines.append("")
    return "\n".join(lines)


def plot(report, out):
    """PNG charts; returns the file names written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [s["name"] for s in report["systems"] if not s["skipped"]]
    results = report["results"]
    # tab20 keeps up to 20 systems apart (the default cycle repeats after 10)
    palette = plt.get_cmap("tab20").colors
    colors = {n: palette[i % len(palette)] for i, n in enumerate(systems)}
    written = []
    title = "%s, %d cores%s" % (report["meta"]["cpu"], report["meta"]["cores"],
                                " (quick mode)" if report["meta"]["quick"] else "")

    def grouped(path, groups, value, ylabel, heading):
        fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(groups) + 4), 5.5))
        width = 0.8 / max(1, len(systems))
        for i, name in enumerate(systems):
            xs, ys = [], []
            for g, (dataset, workload) in enumerate(groups):
                r = _lookup(results, name, dataset, workload)
                if r and value(r):
                    xs.append(g - 0.4 + width * (i + 0.5))
                    ys.append(value(r))
            ax.bar(xs, ys, width, label=name, color=colors[name])
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(["%s\n(%s data)" % (w, d) for d, w in groups], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3, which="both")
        ax.set_title("%s: %s" % (heading, title), fontsize=10)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        fig.savefig(out / path, dpi=110)
        plt.close(fig)
        written.append(path)

    small, large = [], []
    for r in results:
        key = (r["dataset"], r["workload"])
        target = small if r["bs_bytes"] == 4096 else large
        if key not in target:
            target.append(key)
    if small:
        grouped("iops.png", small, lambda r: r["iops"], "IOPS (log scale)", "4 KiB random I/O")
    if large:
        grouped("throughput.png", large, lambda r: r["mb_per_s"], "MB/s (log scale)", "Large requests")

    storage = report["storage"]
    if storage:
        datasets = sorted({s["dataset"] for s in storage})
        dcolors = {d: "C%d" % i for i, d in enumerate(datasets)}
        names = [n for n in systems if any(s["system"] == n for s in storage)]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.5))
        width = 0.8 / max(1, len(datasets))
        for i, d in enumerate(datasets):
            xs, mem_ratio, xr, payload_ratio, xb, payload, overhead = [], [], [], [], [], [], []
            for k, n in enumerate(names):
                s = next((x for x in storage if x["system"] == n and x["dataset"] == d), None)
                if not s:
                    continue
                x = k - 0.4 + width * (i + 0.5)
                if s["memory_ratio"]:
                    xs.append(x)
                    mem_ratio.append(s["memory_ratio"])
                if s["ratio"]:
                    xr.append(x)
                    payload_ratio.append(s["ratio"])
                if s["bytes_per_page"] is not None:
                    xb.append(x)
                    if s["compr_bytes"] is not None and s["pages"]:
                        pay = min(s["compr_bytes"] / s["pages"], s["bytes_per_page"])
                    else:
                        pay = s["bytes_per_page"]
                    payload.append(pay)
                    overhead.append(s["bytes_per_page"] - pay)
            ax1.bar(xs, mem_ratio, width, color=dcolors[d], label="%s data: stored / memory used" % d)
            ax1.scatter(xr, payload_ratio, marker="_", s=400, color="black", zorder=3,
                        label="payload ratio (orig / compr_data_size)" if i == 0 else None)
            ax2.bar(xb, payload, width, color=dcolors[d], label="%s data: payload (all, where unknown)" % d)
            ax2.bar(xb, overhead, width, bottom=payload, color=dcolors[d], alpha=0.45, hatch="//",
                    label="%s data: overhead beyond payload" % d)
        ax2.axhline(4096, color="gray", lw=0.8, ls=":")
        for ax in (ax1, ax2):
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
            ax.grid(axis="y", alpha=0.3)
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
        ax1.set_ylabel("compression ratio")
        ax2.set_ylabel("bytes of memory per stored 4 KiB page")
        ax1.set_title("Compression ratio", fontsize=10)
        ax2.set_title("Memory per stored page (RSS growth; mm_stat for kernel zram)", fontsize=10)
        fig.suptitle("Storage: " + title, fontsize=10)
        fig.tight_layout()
        fig.savefig(out / "storage.png", dpi=110)
        plt.close(fig)
        written.append("storage.png")
    return written


def write_outputs(report, out, update_latest):
    add_ratios(report)
    evaluate_targets(report)
    try:
        report["charts"] = plot(report, out)
    except ImportError as e:
        report["charts"] = []
        print("charts skipped: matplotlib missing (%s); install the bench extra" % e, flush=True)
    (out / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    md = markdown(report)
    (out / "results.md").write_text(md)
    if update_latest:
        results_dir = BENCH_DIR / "results"
        latest = results_dir / "latest"
        if latest.is_symlink() or latest.is_file():
            latest.unlink()
        elif latest.is_dir():
            shutil.rmtree(latest)
        shutil.copytree(out, latest, ignore=shutil.ignore_patterns("logs"))
        (results_dir / "latest.md").write_text(
            markdown(report, charts=False)
            + "\n" + "\n".join("![%s](latest/%s)" % (c, c) for c in report["charts"]) + "\n")
    return md


def parse_args(argv):
    p = argparse.ArgumentParser(description="zramd benchmark suite (see the module docstring)")
    p.add_argument("--quick", action="store_true", help="tiny region and short jobs: proves the pipeline (CI)")
    p.add_argument("--out", help="output directory (default bench/results/<timestamp>/)")
    p.add_argument("--systems", help="comma-separated names or globs, e.g. 'zramd-*,kernel-zram-lz4'")
    p.add_argument("--workloads", help="comma-separated workload globs, e.g. 'randread-*,corpus/*' (fills always run)")
    p.add_argument("--datasets", default="fio,corpus", help="fio,corpus (default both)")
    p.add_argument("--size-mib", type=int, help="region written per system (default 256, quick 16)")
    p.add_argument("--runtime", type=float, help="seconds per timed job (default 4, quick 0.5)")
    p.add_argument("--ramp", type=float, help="ramp seconds before each timed job (default 1, quick 0)")
    p.add_argument("--corpus-dir", default=str(BENCH_DIR / "corpus"), help="where the corpus is kept (gitignored)")
    p.add_argument("--regenerate-corpus", action="store_true")
    p.add_argument("--zramd", help="path of the zramd CLI (default: next to this Python, or .venv/bin/zramd)")
    p.add_argument("--list", action="store_true", help="list systems and workloads, then exit")
    a = p.parse_args(argv)
    a.systems = [x for x in (a.systems or "").split(",") if x]
    a.workloads = [x for x in (a.workloads or "").split(",") if x]
    a.datasets = [x for x in a.datasets.split(",") if x]
    a.region_bytes = (a.size_mib or (16 if a.quick else 256)) << 20
    a.runtime_s = a.runtime if a.runtime is not None else (0.5 if a.quick else 4.0)
    a.ramp_s = a.ramp if a.ramp is not None else (0.0 if a.quick else 1.0)
    a.update_latest = a.out is None
    if a.out is None:
        a.out = str(BENCH_DIR / "results" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    return a


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    if a.list:
        for s in SYSTEMS:
            print("system   %-20s %s" % (s.name, s.description))
        for w in WORKLOADS:
            print("workload %-6s %-18s rw=%s bs=%d iodepth=%d%s" % (
                w.dataset, w.name, w.rw, w.bs_bytes, w.iodepth, " (fill)" if w.fill else ""))
        return 0
    missing = [t for t in ("fio",) if not shutil.which(t)]
    if missing:
        raise SystemExit("missing tools: %s (make setup installs them)" % " ".join(missing))
    bench = Bench(a)
    report = bench.run()
    md = write_outputs(report, Path(a.out), a.update_latest)
    print()
    print(md)
    print("results: %s" % a.out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Striped instances end to end: `zramd serve --instances N` through real
nbdkit processes and libnbd clients, `zramd status` and `zramd stats` over
all of them (docs/design.md#scaling-past-one-core)."""

import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from helpers import nbd

ZRAMD = [sys.executable, "-m", "zramd.cli"]
MiB = 1 << 20
PAGE0 = (b"instance 0 " * 400)[:4096]   # compressible, not same-filled


def run(*args):
    return subprocess.run(ZRAMD + list(args), capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("value,message", [
    ("0", "instances must be 1..64, not 0"),
    ("-2", "instances must be 1..64, not -2"),
    ("1.5", "instances must be a whole number, not '1.5'"),
    ("two", "instances must be a whole number, not 'two'"),
    ("65", "instances must be 1..64, not 65"),
])
def test_bad_instances_refused_with_one_line(sockdir, value, message):
    result = run("serve", "--socket", os.path.join(sockdir, "z.sock"), f"--instances={value}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zramd: error: ") and message in lines[0], \
        result.stderr
    assert result.stdout == "" and os.listdir(sockdir) == []


@pytest.mark.parametrize("args,message", [
    (["--size", "4K", "--instances", "2"], "size 4K is too small for 2 instances"),
    (["--size", "16M", "--mem-limit", "4K", "--instances", "2"], "mem_limit 4K is too small"),
])
def test_unsplittable_sizes_refused_with_one_line(sockdir, args, message):
    result = run("serve", "--socket", os.path.join(sockdir, "z.sock"), *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert os.listdir(sockdir) == []


def start(sockdir, *args):
    sock = os.path.join(sockdir, "z.sock")
    proc = subprocess.Popen(ZRAMD + ["serve", "--socket", sock, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    banner = []
    for line in proc.stdout:
        banner.append(line)
        if "Stop with Ctrl-C" in line:
            break
    assert proc.poll() is None, proc.stderr.read()
    for line in proc.stderr:  # the start, logged as one line after the banner
        if re.match(r"zramd\[\d+\]: INFO serving ", line):
            break
    assert proc.poll() is None, proc.stderr.read()
    return proc, sock, "".join(banner)


def children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().split(b"\0")


def test_two_instances_data_stats_status(sockdir):
    # 17 MiB + 1 page does not split evenly: instance 0 gets the odd page.
    proc, sock, banner = start(sockdir, "--instances", "2", "--size", str(17 * MiB + 4096),
                               "--mem-limit", "8M", "--recomp-algorithm", "zstd",
                               "--recompress-after", "600")
    try:
        paths = [f"{sock}.0", f"{sock}.1"]
        for i, p in enumerate(paths):
            assert f"instance {i}:" in banner
            assert f"nbd-client -unix {p} /dev/nbd{i} -b 4096" in banner
            assert f"server.path={p}," in banner
            assert os.path.exists(p) and os.path.exists(p + ".ctl")
        assert not os.path.exists(sock)

        # Each instance is its own device: different data through each.
        handles = []
        for i, p in enumerate(paths):
            h = nbd.NBD()
            h.connect_unix(p)
            handles.append(h)
        assert [h.get_size() for h in handles] == [8.5 * MiB + 4096, 8.5 * MiB]
        handles[0].pwrite(PAGE0, 0)                # 1 page
        handles[1].pwrite(os.urandom(4096) + b"\x07" * 8192, 4 * 4096)   # 1 huge, 2 same
        assert handles[0].pread(4096, 0) == PAGE0
        assert handles[1].pread(4096, 0) == bytes(4096)
        assert handles[1].pread(8192, 5 * 4096) == b"\x07" * 8192

        each = [json.loads(run("stats", "--socket", p, "--json").stdout) for p in paths]
        assert [s["orig_data_size"] for s in each] == [4096, 3 * 4096]
        assert [s["same_pages"] for s in each] == [0, 2]
        assert [s["mem_limit"] for s in each] == [4 * MiB, 4 * MiB]

        total = json.loads(run("stats", "--socket", sock, "--json").stdout)
        assert total["instances"] == 2
        for key in ("orig_data_size", "compr_data_size", "mem_used_total", "mem_limit",
                    "mem_used_max", "same_pages", "huge_pages", "num_writes", "num_reads",
                    "disksize"):
            assert total[key] == each[0][key] + each[1][key], key
        assert total["disksize"] == 17 * MiB + 4096
        assert total["comp_algorithm"] == "lz4"
        # A knob each instance holds whole reads as one device's, not a sum.
        assert [s["recompress_after"] for s in each] == [600, 600]
        assert total["recompress_after"] == 600
        assert total["cold_age_s"] == max(s["cold_age_s"] for s in each)

        mm = run("stats", "--socket", sock, "mm_stat").stdout.split()
        assert int(mm[0]) == 4 * 4096 and int(mm[3]) == 8 * MiB and int(mm[5]) == 2

        per = json.loads(run("stats", "--socket", sock, "--json", "--per-instance").stdout)
        assert [x["name"] for x in per["instances"]] == paths
        assert per["total"]["orig_data_size"] == 4 * 4096
        text = run("stats", "--socket", sock, "--per-instance").stdout
        assert f"# {paths[0]}" in text and f"# {paths[1]}" in text and "# total of 2" in text

        status = run("status", "--socket", sock)
        assert status.returncode == 0, status.stderr
        rows = status.stdout.splitlines()
        assert rows[0].split()[0] == "NAME" and len(rows) == 3
        assert [r.split()[0] for r in rows[1:]] == paths
        assert [r.split()[2] for r in rows[1:]] == ["4.0K", "12.0K"]   # DATA

        # Knobs act on the whole striped device: mem_limit is split again.
        assert run("set", "--socket", sock, "mem_limit", "6M").returncode == 0
        each = [json.loads(run("stats", "--socket", p, "--json").stdout) for p in paths]
        assert [s["mem_limit"] for s in each] == [3 * MiB, 3 * MiB]
        assert run("set", "--socket", sock, "recompress_after", "300").returncode == 0
        total = json.loads(run("stats", "--socket", sock, "--json").stdout)
        assert total["recompress_after"] == 300
        idle = run("idle", "--socket", sock).stdout.splitlines()
        assert [x.split(": ")[0] for x in idle] == paths    # one line per instance
        assert idle[0] == f"{paths[0]}: 1 pages idle"
        compact = run("compact", "--socket", sock)
        assert compact.returncode == 0, compact.stderr
        assert [x.split(": ")[0] for x in compact.stdout.splitlines()] == paths
        for h in handles:
            h.shutdown()

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert "INFO stopped" in proc.stderr.read()
        for p in paths:
            assert not os.path.exists(p) and not os.path.exists(p + ".ctl")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_one_instance_dies_the_others_keep_serving(sockdir):
    proc, sock, _ = start(sockdir, "--instances", "3", "--size", "12M")
    try:
        victim = next(pid for pid in children(proc.pid)
                      if f"{sock}.1".encode() in cmdline(pid))
        h = nbd.NBD()
        h.connect_unix(f"{sock}.2")
        h.pwrite(b"k" * 4096, 0)
        os.kill(victim, signal.SIGKILL)
        line = proc.stderr.readline()
        assert re.match(r"zramd\[\d+\]: ERROR instance 1 \(", line) and "status -9" in line \
            and "2 other instance(s) still serving" in line, line
        # its sockets are gone, so status lists the survivors
        assert not os.path.exists(f"{sock}.1") and not os.path.exists(f"{sock}.1.ctl")
        rows = run("status", "--socket", sock).stdout.splitlines()[1:]
        assert [r.split()[0] for r in rows] == [f"{sock}.0", f"{sock}.2"]
        assert h.pread(4096, 0) == b"k" * 4096
        h.shutdown()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 1  # an instance died: not a clean run
    finally:
        if proc.poll() is None:
            proc.kill()


def test_status_lists_a_stale_instance_as_unreachable(sockdir):
    """A control socket left behind by a killed server: its row is dashes,
    stderr names it, the status is 1, and the live instances are listed."""
    proc, sock, _ = start(sockdir, "--instances", "2", "--size", "8M")
    stale = f"{sock}.2.ctl"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(stale)  # bound, never listening: connections are refused
    try:
        result = run("status", "--socket", sock)
        assert result.returncode == 1
        rows = result.stdout.splitlines()[1:]
        assert [r.split()[0] for r in rows] == [f"{sock}.0", f"{sock}.1", f"{sock}.2"]
        assert set(rows[2].split()[1:]) == {"-"}
        assert result.stderr.count("\n") == 1 and f"{sock}.2: " in result.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_status_and_stats_without_any_instance(sockdir):
    result = run("status", "--socket", os.path.join(sockdir, "none.sock"))
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "no zramd control socket" in result.stderr

"""A memory cgroup limit (docs/design.md#memory-cgroups): without
--mem-limit, zramd serve picks one below the limit, so a fill past it fails
with ENOSPC and earlier data stays; with a mem_limit above the cgroup's the
kernel OOM-kills nbdkit, and the wrapper's line says so.  Needs a cgroup v1
memory hierarchy we may create cgroups in (root)."""

import os
import subprocess
import sys
import uuid

import pytest

from helpers import nbd
from servectl import ZRAMD

V1 = "/sys/fs/cgroup/memory"


@pytest.fixture
def memcg():
    path = os.path.join(V1, f"zt-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(path)
        with open(os.path.join(path, "memory.limit_in_bytes"), "w") as f:
            f.write("150M")
    except OSError as exc:
        pytest.skip(f"cannot make a v1 memory cgroup at {V1}: {exc}")
    yield path
    with open(os.path.join(path, "cgroup.procs")) as f:
        assert not f.read().split(), "processes left in the cgroup"
    os.rmdir(path)


def serve_in(memcg, sockdir, *args):
    sock = os.path.join(sockdir, "z.sock")
    err = open(os.path.join(sockdir, "serve.stderr"), "w+")
    cmd = ["sh", "-c", f'echo $$ > {memcg}/cgroup.procs && exec "$@"', "sh", *ZRAMD, "serve",
           "--socket", sock, "--size", "512M", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    for line in proc.stdout:
        if "Stop with Ctrl-C" in line:
            break
    return proc, sock, err


def fill(sock):
    """Write incompressible MiB until a write fails; return (MiB written, error)."""
    h = nbd.NBD()
    h.connect_unix(sock)
    first = os.urandom(1 << 20)
    h.pwrite(first, 0)
    off = 1 << 20
    try:
        while off < 512 << 20:
            h.pwrite(os.urandom(1 << 20), off)
            off += 1 << 20
    except nbd.Error as exc:
        return h, first, exc
    return h, first, None


def test_default_mem_limit_below_cgroup_limit(memcg, sockdir):
    proc, sock, err = serve_in(memcg, sockdir)
    try:
        h, first, exc = fill(sock)
        assert exc is not None and "ENOSPC" in str(exc), exc
        assert h.pread(1 << 20, 0) == first  # earlier data intact
        h.shutdown()
        proc.terminate()
        assert proc.wait(30) == 0
        err.seek(0)
        text = err.read()
        warn = [line for line in text.splitlines() if "no mem_limit given" in line]
        assert len(warn) == 1 and "the cgroup memory limit 150M" in warn[0], text
        assert "OOM killer" not in text and "exited unexpectedly" not in text
    finally:
        proc.kill()
        proc.wait()


def test_oom_kill_is_named(memcg, sockdir):
    proc, sock, err = serve_in(memcg, sockdir, "--mem-limit", "400M")
    try:
        h, first, exc = fill(sock)
        assert exc is not None  # the server is gone
        assert proc.wait(30) == 1
        err.seek(0)
        lines = err.read().splitlines()
        warn = [line for line in lines if "mem_limit 400M leaves less than" in line]
        assert len(warn) == 1, lines
        died = [line for line in lines if "killed by the kernel's OOM killer" in line]
        assert len(died) == 1, lines
        assert "cgroup memory limit 150M reached" in died[0] and "nbdkit (pid" in died[0]
    finally:
        proc.kill()
        proc.wait()

"""The `zramd serve` wrapper cannot stall or silently take down the device
(docs/design.md#security): nbdkit's stderr is a plain file descriptor (the
log file or the wrapper's own stderr), never a pipe the wrapper reads, so a
stopped wrapper blocks no request; with --swap both processes are locked in
RAM and shielded from the OOM killer, and nbdkit outlives a dead wrapper,
saying so in the log."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import nbd
from servectl import ZRAMD, Serve, wait_gone

PAGE = b"\xa5swa" * 1024

# A client in its own process, so that a hang is a timeout, not a stuck test.
FAILING_WRITES = textwrap.dedent("""
    import os, sys, nbd
    h = nbd.NBD()
    h.connect_unix(sys.argv[1])
    failed = 0
    for i in range(int(sys.argv[2])):
        try:
            h.pwrite(os.urandom(65536), (i * 65536) % (48 << 20))
        except nbd.Error:
            failed += 1
    print(failed)
""")
ROUND_TRIP = textwrap.dedent("""
    import sys, nbd
    h = nbd.NBD()
    h.connect_unix(sys.argv[1])
    h.pwrite(b"B" * 4096, 60 << 20)
    assert h.pread(4096, 60 << 20) == b"B" * 4096
    print("ok")
""")
HANG_BOUND_S = 60  # a request that has not completed by then is stuck, not slow


def client(script, *args):
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True,
                          text=True, timeout=HANG_BOUND_S)


def test_stopped_wrapper_blocks_no_request(sockdir):
    """SIGSTOP the wrapper, then fail hundreds of writes (ENOSPC at
    mem_limit) with nbdkit's debug output on: another connection still
    completes its I/O, and the error lines reach the log while the wrapper
    is stopped."""
    sock = os.path.join(sockdir, "z.sock")
    srv = Serve(sockdir, "--socket", sock, "--size", "64M", "--mem-limit", "1M", "--verbose")
    try:
        assert srv.ready, srv.stderr()
        os.kill(srv.proc.pid, signal.SIGSTOP)
        try:
            failing = client(FAILING_WRITES, sock, 800)
            assert failing.returncode == 0, failing.stderr
            assert int(failing.stdout) > 700  # 1M of random data: nearly all fail
            other = client(ROUND_TRIP, sock)
            assert other.returncode == 0 and other.stdout.strip() == "ok", other.stderr
            log = srv.stderr()
            assert "pwrite failed: ENOSPC" in log, log[-2000:]
            assert "debug" in log.lower()
        finally:
            os.kill(srv.proc.pid, signal.SIGCONT)
        srv.signal(signal.SIGTERM)
        assert srv.wait() == 0
    finally:
        srv.kill()


def oom_score_adj(pid):
    with open(f"/proc/{pid}/oom_score_adj") as f:
        return int(f.read())


def locked_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmLck:"))


@pytest.fixture
def swap_server(sockdir):
    if os.geteuid() != 0:
        pytest.skip("mlockall and oom_score_adj -1000 need root")
    sock = os.path.join(sockdir, "z.sock")
    srv = Serve(sockdir, "--socket", sock, "--size", "16M", "--swap")
    assert srv.ready, srv.stderr()
    nbdkit = srv.nbdkit_pid()
    yield srv, sock, nbdkit
    srv.kill()
    try:
        os.kill(nbdkit, signal.SIGKILL)
    except ProcessLookupError:
        pass


def can_lower_oom_score() -> bool:
    with open("/proc/self/status") as f:
        cap_eff = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    return bool(cap_eff & (1 << 24))  # CAP_SYS_RESOURCE (some sandboxes drop it)


def test_swap_locks_and_shields_both_processes(swap_server):
    """Both processes are memory-locked; both get oom_score_adj -1000, or
    the wrapper says in one line that it was refused."""
    srv, sock, nbdkit = swap_server
    for pid in (srv.proc.pid, nbdkit):
        assert locked_kb(pid) > 0, pid
    assert "cannot lock zramd serve" not in srv.stderr()
    warned = [line for line in srv.stderr().splitlines() if "cannot set oom_score_adj" in line]
    if can_lower_oom_score():
        assert not warned
        assert oom_score_adj(srv.proc.pid) == oom_score_adj(nbdkit) == -1000
    else:
        assert len(warned) == 1 and "WARNING cannot set oom_score_adj -1000: Permission " \
            "denied" in warned[0], srv.stderr()


def test_swap_device_outlives_a_killed_wrapper(swap_server, sockdir):
    """The chosen behaviour: nbdkit keeps serving every stored page, logs
    one line naming the way to stop it, and `zramd stop` still works."""
    srv, sock, nbdkit = swap_server
    h = nbd.NBD()
    h.connect_unix(sock)
    h.pwrite(PAGE, 8192)
    srv.proc.kill()
    srv.proc.wait()
    deadline = time.monotonic() + HANG_BOUND_S
    while "is gone" not in srv.stderr():
        assert time.monotonic() < deadline, srv.stderr()
        time.sleep(0.05)
    gone = [line for line in srv.stderr().splitlines() if "is gone" in line]
    assert len(gone) == 1 and f"(pid {srv.proc.pid}) is gone" in gone[0], gone
    assert "keeps serving 1 stored pages" in gone[0] and "zramd stop" in gone[0]
    assert os.path.exists(f"/proc/{nbdkit}")
    assert h.pread(4096, 8192) == PAGE  # the same connection, still served
    h2 = nbd.NBD()
    h2.connect_unix(sock)  # and new ones too
    assert h2.pread(4096, 8192) == PAGE
    h2.shutdown()
    h.shutdown()
    result = subprocess.run(ZRAMD + ["stop", "--socket", sock], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    wait_gone(nbdkit)

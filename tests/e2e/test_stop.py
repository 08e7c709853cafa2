"""Stopping while in use (docs/design.md#security): with clients connected
and pages stored, SIGTERM or Ctrl-C is refused once with a clear line and
the device keeps serving; a second signal within 5 s, `serve --force` or
`zramd stop --force` stops it; `zramd stop` alone refuses while in use."""

import os
import signal
import subprocess
import time

import pytest

from helpers import nbd
from servectl import ZRAMD, Serve

PAGE = b"swapped " * 512


def run(*args, **kwargs):
    return subprocess.run(ZRAMD + list(args), capture_output=True, text=True, timeout=60,
                          **kwargs)


def in_use(sockdir, *args):
    sock = os.path.join(sockdir, "z.sock")
    srv = Serve(sockdir, "--socket", sock, "--size", "8M", *args)
    assert srv.ready, srv.stderr()
    h = nbd.NBD()
    h.connect_unix(sock)
    h.pwrite(PAGE, 0)
    return srv, sock, h


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_signal_refused_once_then_stops(sockdir, how):
    srv, sock, h = in_use(sockdir)
    try:
        def send():
            if how == "SIGTERM":
                srv.signal(signal.SIGTERM)
            else:  # a terminal sends SIGINT to the whole foreground process group
                os.killpg(srv.proc.pid, signal.SIGINT)

        send()
        with pytest.raises(subprocess.TimeoutExpired):
            srv.wait(timeout=3)  # still serving
        assert h.pread(4096, 0) == PAGE
        h.pwrite(PAGE[::-1], 4096)
        refusal = [line for line in srv.stderr().splitlines() if "not stopping" in line]
        assert len(refusal) == 1, srv.stderr()
        assert "in use: 1 client connected and 1 page stored" in refusal[0]
        assert "zramd stop --force" in refusal[0] and "again within 5s" in refusal[0]
        send()  # the second signal within 5 s stops it
        assert srv.wait() == 0
        assert not os.path.exists(sock) and not os.path.exists(sock + ".ctl")
        with pytest.raises(nbd.Error):
            h.pread(4096, 0)
    finally:
        srv.kill()


def test_signal_stops_at_once_when_not_in_use(sockdir):
    srv, sock, h = in_use(sockdir)
    try:
        h.shutdown()  # pages stored, nobody connected
        srv.signal(signal.SIGTERM)
        assert srv.wait() == 0
        assert "not stopping" not in srv.stderr()
    finally:
        srv.kill()


def test_serve_force_stops_at_once(sockdir):
    srv, sock, h = in_use(sockdir, "--force")
    try:
        srv.signal(signal.SIGTERM)
        assert srv.wait() == 0
        assert "not stopping" not in srv.stderr()
    finally:
        srv.kill()


def test_zramd_stop_refuses_in_use_and_force_stops(sockdir):
    srv, sock, h = in_use(sockdir)
    try:
        result = run("stop", "--socket", sock)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert lines == [lines[0]] and lines[0].startswith(
            "zramd: error: in use: 1 client connected and 1 page stored"), lines
        assert h.pread(4096, 0) == PAGE  # nothing happened
        result = run("stop", "--socket", sock, "--force")
        assert result.returncode == 0 and result.stdout.strip() == "zramd: stopped", result
        assert srv.wait() == 0  # the wrapper follows: a requested stop, status 0
        assert "exited unexpectedly" not in srv.stderr()
    finally:
        srv.kill()


def test_zramd_stop_when_idle(sockdir):
    srv, sock, h = in_use(sockdir)
    try:
        h.shutdown()
        result = run("stop", "--socket", sock)
        assert result.returncode == 0, result.stderr
        assert srv.wait() == 0
    finally:
        srv.kill()


def test_two_quick_signals_stop(sockdir):
    """The second signal may arrive while the first is still being handled
    (Ctrl-C pressed twice; asking the server takes up to a second): it
    still counts as the confirmation.  (Two signals sent at the very same
    moment are one: the kernel merges pending signals.)"""
    srv, sock, h = in_use(sockdir)
    try:
        srv.signal(signal.SIGTERM)
        time.sleep(0.3)
        srv.signal(signal.SIGTERM)
        assert srv.wait() == 0
    finally:
        srv.kill()

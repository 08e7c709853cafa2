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
    return subprocess.run(ZRAMD + list(args), capture_output=True, text=True, timeout=60, **kwargs)


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
            "zramd: error: in use: 1 client connected and 1 page stored"
        ), lines
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


def hold_control(sock, n=8):
    """``n`` idle control clients: the control server's every slot taken
    (each is dropped after 10 s of silence)."""
    import socket

    held = []
    for _ in range(n):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(sock + ".ctl")
        held.append(c)
    time.sleep(0.2)  # accepted: the next client is refused
    return held


def test_signal_refused_when_control_socket_busy(sockdir):
    """A control socket that cannot answer is no "not in use": the first
    SIGTERM is refused with one line saying why, the page stays; the second
    stops it."""
    srv, sock, h = in_use(sockdir)
    held = hold_control(sock)
    try:
        srv.signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            srv.wait(timeout=3)  # still serving
        assert h.pread(4096, 0) == PAGE
        refusal = [line for line in srv.stderr().splitlines() if "not stopping" in line]
        assert len(refusal) == 1, srv.stderr()
        assert "cannot tell whether it is in use (too many control clients" in refusal[0]
        assert "zramd stop --force" in refusal[0] and "again within 5s" in refusal[0]
        for c in held:  # a forced stop needs the control socket to end the NBD clients
            c.close()
        time.sleep(0.2)
        srv.signal(signal.SIGTERM)  # the confirmation within 5 s stops it
        assert srv.wait() == 0
    finally:
        for c in held:
            c.close()
        srv.kill()


def test_forced_stop_ends_while_control_socket_busy(sockdir):
    """The confirming signal's forced stop cannot reach a full control
    socket, so nbdkit would wait for its NBD client forever: the wrapper
    forces it again after a bounded wait, and exits."""
    srv, sock, h = in_use(sockdir)
    held = hold_control(sock)
    try:
        srv.signal(signal.SIGTERM)
        time.sleep(1.5)
        srv.signal(signal.SIGTERM)  # within 5 s: force
        assert srv.wait(timeout=45) == 0, srv.stderr()
        assert not os.path.exists(sock)
    finally:
        for c in held:
            c.close()
        srv.kill()


def test_zramd_stop_refuses_when_control_socket_busy(sockdir):
    srv, sock, h = in_use(sockdir)
    held = hold_control(sock)
    try:
        h.shutdown()  # not in use, but the server cannot say so
        result = run("stop", "--socket", sock)
        assert result.returncode == 1
        assert result.stderr.startswith("zramd: error: cannot tell whether it is in use"), result
        assert srv.proc.poll() is None
    finally:
        for c in held:
            c.close()
        srv.kill()


def test_signal_refused_when_control_socket_times_out(sockdir):
    """nbdkit stopped (SIGSTOP) answers nothing: the wrapper's question times
    out, and that refuses the stop too; once it runs again the page is there."""
    srv, sock, h = in_use(sockdir)
    pid = srv.nbdkit_pid()
    try:
        os.kill(pid, signal.SIGSTOP)
        srv.signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while "not stopping" not in srv.stderr() and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(pid, signal.SIGCONT)
        refusal = [line for line in srv.stderr().splitlines() if "not stopping" in line]
        assert len(refusal) == 1 and "cannot tell whether it is in use" in refusal[0], srv.stderr()
        assert srv.proc.poll() is None
        assert h.pread(4096, 0) == PAGE
        result = run("stop", "--socket", sock, "--force")
        assert result.returncode == 0, result
        assert srv.wait() == 0
    finally:
        os.kill(pid, signal.SIGCONT) if os.path.exists(f"/proc/{pid}") else None
        srv.kill()

"""Socket and pid-file paths, readiness and restarts (docs/design.md#security):
a stale socket (nothing listening) is removed at start, a live one refuses
the start, anything that is not a socket is never deleted; the pid file is
written once the sockets listen; systemd hears READY=1; after kill -9 the
next server starts on the same paths."""

import os
import signal
import socket
import stat
import subprocess

import pytest

from helpers import nbd
from servectl import ZRAMD, Serve, stale_socket, wait_gone

PAGE = b"kill -9 " * 512


def run(*args, **kwargs):
    return subprocess.run(ZRAMD + list(args), capture_output=True, text=True, timeout=60,
                          **kwargs)


def attach(sock):
    h = nbd.NBD()
    h.connect_unix(sock)
    return h


@pytest.mark.parametrize("which", ["nbd", "control"])
def test_stale_socket_is_removed_at_start(sockdir, which):
    sock = os.path.join(sockdir, "z.sock")
    stale_socket(sock if which == "nbd" else sock + ".ctl")
    srv = Serve(sockdir, "--socket", sock, "--size", "8M")
    try:
        assert srv.ready, srv.stderr()
        h = attach(sock)
        h.pwrite(PAGE, 0)
        assert h.pread(4096, 0) == PAGE
        h.shutdown()
    finally:
        srv.kill()


@pytest.mark.parametrize("which", ["nbd", "control"])
@pytest.mark.parametrize("kind", ["file", "symlink", "directory"])
def test_something_else_at_a_socket_path_refuses_and_is_kept(sockdir, which, kind):
    sock = os.path.join(sockdir, "z.sock")
    path = sock if which == "nbd" else sock + ".ctl"
    target = os.path.join(sockdir, "precious")
    with open(target, "w") as f:
        f.write("not yours to delete\n")
    if kind == "file":
        os.link(target, path)
    elif kind == "symlink":
        os.symlink(target, path)
    else:
        os.mkdir(path)
    result = run("serve", "--socket", sock, "--size", "8M")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zramd: error: "), lines
    assert f"{path} is taken by a" in lines[0] and "not removing it" in lines[0]
    assert os.path.lexists(path)
    if kind != "directory":
        with open(path) as f:
            assert f.read() == "not yours to delete\n"


def test_live_control_socket_refuses(sockdir):
    sock = os.path.join(sockdir, "z.sock")
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(sock + ".ctl")
        live.listen()
        result = run("serve", "--socket", sock, "--size", "8M")
    assert result.returncode == 2
    assert result.stderr.strip() == (f"zramd: error: control socket {sock}.ctl is in use by "
                                     f"another server")


def test_pid_file_written_when_ready_and_removed_at_stop(sockdir):
    sock, pid_file = os.path.join(sockdir, "z.sock"), os.path.join(sockdir, "z.pid")
    srv = Serve(sockdir, "--socket", sock, "--size", "8M", "--pid-file", pid_file)
    try:
        assert srv.ready, srv.stderr()
        st = os.lstat(pid_file)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        with open(pid_file) as f:
            assert int(f.read()) == srv.proc.pid
        attach(sock).shutdown()  # the pid file means: the socket accepts
        # a second server on another socket but the same pid file is refused
        other = run("serve", "--socket", os.path.join(sockdir, "o.sock"), "--pid-file",
                    pid_file)
        assert other.returncode == 2
        assert f"pid file {pid_file} names a running process ({srv.proc.pid})" in other.stderr
        srv.signal(signal.SIGTERM)
        assert srv.wait() == 0
        assert not os.path.exists(pid_file)
    finally:
        srv.kill()


def test_pid_file_path_taken_by_something_else(sockdir):
    pid_file = os.path.join(sockdir, "z.pid")
    with open(pid_file, "w") as f:
        f.write("my notes\n")
    result = run("serve", "--socket", os.path.join(sockdir, "z.sock"), "--pid-file", pid_file)
    assert result.returncode == 2
    assert "is not a pid file: not removing it" in result.stderr
    with open(pid_file) as f:
        assert f.read() == "my notes\n"
    os.unlink(pid_file)
    os.symlink(os.path.join(sockdir, "elsewhere"), pid_file)
    result = run("serve", "--socket", os.path.join(sockdir, "z.sock"), "--pid-file", pid_file)
    assert result.returncode == 2 and "taken by a symbolic link" in result.stderr
    assert os.path.islink(pid_file) and not os.path.exists(os.path.join(sockdir, "elsewhere"))


def test_sd_notify_ready_after_the_socket_listens(sockdir):
    sock = os.path.join(sockdir, "z.sock")
    notify_path = os.path.join(sockdir, "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(notify_path)
        notify.settimeout(60)
        env = dict(os.environ, NOTIFY_SOCKET=notify_path)
        proc = subprocess.Popen(ZRAMD + ["serve", "--socket", sock, "--size", "8M"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            message = notify.recv(4096).decode()
            fields = dict(line.split("=", 1) for line in message.splitlines())
            assert fields["READY"] == "1" and int(fields["MAINPID"]) == proc.pid
            attach(sock).shutdown()  # ready means ready
            nbdkit = subprocess.run(["pgrep", "-P", str(proc.pid), "nbdkit"],
                                    capture_output=True, text=True).stdout.split()
            with open(f"/proc/{nbdkit[0]}/environ", "rb") as f:
                assert b"NOTIFY_SOCKET=" not in f.read()  # only the wrapper notifies
            proc.send_signal(signal.SIGTERM)
            assert notify.recv(4096) == b"STOPPING=1"
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.parametrize("victims", ["wrapper", "both"])
def test_kill_9_then_restart_on_the_same_paths(sockdir, victims):
    sock, pid_file = os.path.join(sockdir, "z.sock"), os.path.join(sockdir, "z.pid")
    args = ("--socket", sock, "--size", "8M", "--pid-file", pid_file)
    srv = Serve(sockdir, *args)
    try:
        assert srv.ready, srv.stderr()
        nbdkit = srv.nbdkit_pid()
        if victims == "both":
            os.kill(nbdkit, signal.SIGKILL)
        srv.proc.kill()
        srv.proc.wait()
        wait_gone(nbdkit)  # --exit-with-parent takes nbdkit down with the wrapper
        # what kill -9 leaves behind: sockets nobody listens on, a stale pid file
        assert os.path.exists(pid_file)
        for path in (sock, sock + ".ctl"):
            if os.path.exists(path):
                assert stat.S_ISSOCK(os.lstat(path).st_mode)
    finally:
        srv.kill()
    again = Serve(sockdir, *args, name="again")
    try:
        assert again.ready, again.stderr()
        h = attach(sock)
        h.pwrite(PAGE, 0)
        assert h.pread(4096, 0) == PAGE
        h.shutdown()
        with open(pid_file) as f:
            assert int(f.read()) == again.proc.pid
    finally:
        again.kill()

"""The zramd command as a user runs it: bad options, serve, stats, stop."""

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


def run(*args, **kwargs):
    return subprocess.run(ZRAMD + list(args), capture_output=True, text=True, timeout=60,
                          **kwargs)


def test_port_in_use(sockdir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run("serve", "--port", str(port), "--insecure-tcp",
                     "--control", os.path.join(sockdir, "c.ctl"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"zramd: error: port {port} on 127.0.0.1 is already in use"


def test_stats_without_server(sockdir):
    result = run("stats", "--socket", os.path.join(sockdir, "none.sock"))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "no zramd control socket" in result.stderr


def test_python_version_mismatch_is_one_line(sockdir):
    fake = os.path.join(sockdir, "nbdkit")
    with open(fake, "w") as f:  # an nbdkit that embeds another Python
        f.write("#!/bin/sh\necho python_version=3.9.2\n")
    os.chmod(fake, 0o755)
    env = dict(os.environ, PATH=sockdir + os.pathsep + os.environ["PATH"])
    result = run("serve", "--socket", os.path.join(sockdir, "z.sock"), env=env)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("zramd: error: nbdkit embeds Python 3.9.2 but zramd runs on Python 3.")


def test_version_names_nbdkit_and_embedded_python():
    result = run("--version")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    ours = ".".join(map(str, sys.version_info[:2]))
    assert re.fullmatch(rf"zramd \S+ \(Python {re.escape(ours)}\.\d+\S*\)", lines[0]), lines
    nbdkit_version = subprocess.run(["nbdkit", "--version"], capture_output=True,
                                    text=True).stdout.split()[1]
    assert re.fullmatch(rf"nbdkit {re.escape(nbdkit_version)}, python plugin embedding "
                        rf"Python {re.escape(ours)}\.\d+\S*", lines[1]), lines


def test_banner_commands_work_as_printed(sockdir):
    """The entry point from the venv, with the venv not on PATH (make run):
    the banner's stats line, pasted into a shell, reads the device."""
    entry = os.path.join(os.path.dirname(sys.executable), "zramd")
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                           if os.path.realpath(p) != os.path.realpath(os.path.dirname(entry)))
    env = dict(os.environ, PATH=path)
    proc, sock, banner = start_serve(sockdir, command=[entry], env=env)
    try:
        stats_line = next(line for line in banner.splitlines() if line.lstrip().startswith("stats"))
        command = stats_line.split(None, 1)[1]
        assert command.startswith(entry + " stats "), stats_line
        out = subprocess.run(command, shell=True, capture_output=True, text=True, env=env,
                             timeout=60)
        assert out.returncode == 0 and out.stdout.startswith("mm_stat"), out
    finally:
        proc.kill()
        proc.wait()


def start_serve(sockdir, *args, command=None, env=None):
    sock = os.path.join(sockdir, "z.sock")
    proc = subprocess.Popen((command or ZRAMD) + ["serve", "--socket", sock, "--size", "16M", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    banner = []
    for line in proc.stdout:
        banner.append(line)
        if "Stop with Ctrl-C" in line:
            break
    assert proc.poll() is None, proc.stderr.read()
    proc.early_stderr = ""  # what came before the start line (warnings)
    for line in proc.stderr:  # the start, logged as one line after the banner
        if re.match(r"zramd\[\d+\]: INFO serving ", line):
            break
        proc.early_stderr += line
    return proc, sock, "".join(banner)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_stats_and_clean_stop(sockdir, signum):
    proc, sock, banner = start_serve(sockdir, "--algorithm", "zstd", "--level", "5")
    try:
        assert f"nbd+unix:///?socket={sock}" in banner
        for hint in ("nbdinfo", "nbd-client", "qemu", "zramd.cli stats --control"):
            assert hint in banner
        h = nbd.NBD()
        h.connect_unix(sock)
        h.pwrite(b"\x01" * 4096 + b"text " * 819 + b"!", 0)
        out = run("stats", "--socket", sock).stdout.splitlines()
        assert out[0].split()[0] == "mm_stat" and len(out[0].split()) == 10
        assert out[1].split()[0] == "io_stat" and len(out[1].split()) == 5
        mm = [int(x) for x in run("stats", "--socket", sock, "mm_stat").stdout.split()]
        assert mm[0] == 2 * 4096 and mm[5] == 1  # orig_data_size, same_pages
        js = json.loads(run("stats", "--socket", sock, "--json").stdout)
        assert js["comp_algorithm"] == "zstd:5" and js["orig_data_size"] == 8192
        # stop while a client is still connected and pages are stored: the
        # first signal is refused, the second (within 5 s) stops cleanly
        proc.send_signal(signum)
        assert "WARNING not stopping: in use: 1 client" in proc.stderr.readline()
        assert h.pread(4096, 0) == b"\x01" * 4096
        proc.send_signal(signum)
        assert proc.wait(30) == 0
        stderr = proc.stderr.read()
        assert "killing" not in stderr and "INFO stopped" in stderr, stderr
        assert not os.path.exists(sock) and not os.path.exists(sock + ".ctl")
        with pytest.raises(nbd.Error):  # the server ended the connection
            h.pread(4096, 0)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_second_server_on_same_socket_is_refused(sockdir):
    proc, sock, _ = start_serve(sockdir)
    try:
        result = run("serve", "--socket", sock)
        assert result.returncode == 2
        assert result.stderr.strip() == f"zramd: error: socket {sock} is in use by another server"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def test_tcp_listens_on_loopback_only(sockdir):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(ZRAMD + ["serve", "--port", str(port), "--size", "8M",
                                     "--insecure-tcp", "--control", os.path.join(sockdir, "t.ctl")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if "Stop with Ctrl-C" in line:
                break
        h = nbd.NBD()
        h.connect_uri(f"nbd://127.0.0.1:{port}/")
        assert h.get_size() == 8 << 20
        h.shutdown()
        listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                                   text=True).stdout
        local_addresses = [line.split()[3] for line in listening.splitlines()]
        assert local_addresses == [f"127.0.0.1:{port}"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def test_swap_mode_locks_memory(sockdir):
    """--swap: nbdkit locks itself into RAM (mlockall) and zramd marks the
    process as an I/O flusher (a warning says so when it cannot)."""
    if os.geteuid() != 0:
        pytest.skip("mlockall of the whole server needs root (or a raised RLIMIT_MEMLOCK)")
    proc, sock, banner = start_serve(sockdir, "--swap")
    try:
        pid = int(subprocess.run(["pgrep", "-f", f"nbdkit -f.*{sock}"], capture_output=True,
                                 text=True).stdout.split()[0])
        with open(f"/proc/{pid}/status") as f:
            locked_kb = next(int(line.split()[1]) for line in f if line.startswith("VmLck:"))
        assert locked_kb > 1024, f"VmLck {locked_kb} kB"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    with open("/proc/self/status") as f:
        cap_eff = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    can_flusher = bool(cap_eff & (1 << 24))  # CAP_SYS_RESOURCE (some sandboxes drop it)
    warned = "cannot mark the server as an I/O flusher" in proc.early_stderr + proc.stderr.read()
    assert warned != can_flusher


@pytest.mark.parametrize("args", [
    ["--backing-size", "99999999T"], ["--size", "1P"], ["--size", "8E"], ["--size", "16E"],
    ["--size", "9" * 5000], ["--pending-limit", "99999999T"], ["--mem-limit", "16E"],
    ["--pending-limit", "4E"], ["--high-watermark", "4E"],
])
def test_impossible_sizes_are_one_line_before_nbdkit(sockdir, args):
    result = run("serve", "--control", os.path.join(sockdir, "c.ctl"), *args)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1, result.stderr[:500]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("line", [
    "size = 99999999999999999999999", 'size = "ram * 1000000000000"',
    "pending_limit = 99999999999999999999", "size = " + "9" * 5000,
])
def test_impossible_sizes_in_the_config_file_are_one_line(sockdir, line):
    path = os.path.join(sockdir, "z.toml")
    with open(path, "w") as f:
        f.write(line + "\n")
    result = run("serve", "--config", path, "--control", os.path.join(sockdir, "c.ctl"))
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1, result.stderr[:500]
    assert "Traceback" not in result.stderr

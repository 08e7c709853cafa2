"""zramd serve --config through real nbdkit: one file, no other flag needed;
a flag still wins over the file."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request

ZRAMD = [sys.executable, "-m", "zramd.cli"]


def test_serve_from_a_config_file(sockdir):
    sock = os.path.join(sockdir, "c.sock")
    log = os.path.join(sockdir, "zramd.log")
    config = os.path.join(sockdir, "zramd.toml")
    with open(config, "w") as f:
        f.write(f'socket = "c.sock"\n'             # relative to the file
                f'size = "min(ram, 64M)"\n'
                f'algorithm = "zstd"\nlevel = 5\n'
                f'mem_limit = "min(ram / 2, 16M)"\n'
                f'compress = "hybrid"\nworkers = 2\n'
                f'checksum = "xxh3"\n'
                f'log_file = "zramd.log"\n'
                f'metrics_address = "127.0.0.1:0"\n')
    proc = subprocess.Popen(ZRAMD + ["serve", "--config", config, "--size", "32M"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd="/")
    try:
        banner = []
        for line in proc.stdout:
            banner.append(line)
            if "Stop with Ctrl-C" in line:
                break
        banner = "".join(banner)
        assert f"socket={sock}" in banner, banner
        js = json.loads(subprocess.run(ZRAMD + ["stats", "--socket", sock, "--json"],
                                       capture_output=True, text=True, check=True).stdout)
        assert js["disksize"] == 32 << 20           # the flag won
        assert js["comp_algorithm"] == "zstd:5"
        assert js["mem_limit"] == 16 << 20          # from an expression of RAM
        assert js["compress_mode"] == "hybrid" and js["workers"] == 2
        # the other commands find the server through the same file
        same = json.loads(subprocess.run(ZRAMD + ["stats", "--config", config, "--json"],
                                         capture_output=True, text=True, check=True,
                                         cwd="/").stdout)
        assert same["disksize"] == js["disksize"]
        text = subprocess.run(ZRAMD + ["stats", "--config", config, "--format", "prometheus"],
                              capture_output=True, text=True, check=True).stdout
        assert f'zramd_up{{device="{sock}"}} 1.0' in text
        url = re.search(r"curl (http://\S+)", banner).group(1)
        with urllib.request.urlopen(url, timeout=30) as reply:
            text = reply.read().decode()
        assert f'zramd_disksize_bytes{{device="{sock}"}} 3.3554432e+07' in text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, proc.stderr.read()
    assert os.stat(log).st_mode & 0o777 == 0o600
    assert re.search(r"zramd\[\d+\]: INFO stopped with", open(log).read())


def test_a_bad_config_file_is_one_line_exit_2(sockdir):
    config = os.path.join(sockdir, "bad.toml")
    with open(config, "w") as f:
        f.write('socket = "x.sock"\ncompression = "zstd"\n')
    result = subprocess.run(ZRAMD + ["serve", "--config", config], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == (f"zramd: error: {config}: unknown key 'compression' "
                             f"(did you mean compress?)\n")


# -- where the config file is opened: no links, trusted directories, regular file --
NOBODY = 65534
READ_MARK = "workers must be 1..64, not 0"  # the file was opened, checked and read


def serve_config(path: str) -> subprocess.CompletedProcess:
    # the timeout: a FIFO given as the config file once blocked open() forever
    return subprocess.run(ZRAMD + ["serve", "--config", path], capture_output=True,
                          text=True, timeout=30)


def one_line_refusal(result: subprocess.CompletedProcess, words: str) -> None:
    assert result.returncode == 2, result
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert words in result.stderr, result.stderr


def write_config(directory: str, name: str = "z.toml") -> str:
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write("workers = 0\n")
    os.chmod(path, 0o644)
    return path


def as_nobody(action) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            action()
            os._exit(0)
        except BaseException:
            os._exit(1)
    assert os.waitpid(pid, 0)[1] == 0


def test_a_symlink_made_by_another_user_is_refused(sockdir):
    os.chmod(sockdir, 0o755)  # nobody may reach the shared directory
    real = write_config(sockdir)
    shared = os.path.join(sockdir, "shared")
    os.mkdir(shared)
    os.chmod(shared, 0o1777)  # sticky, as /tmp: the directory itself is fine
    link = os.path.join(shared, "z.toml")
    as_nobody(lambda: os.symlink(real, link))
    assert os.lstat(link).st_uid == NOBODY
    one_line_refusal(serve_config(link), "is a symbolic link")
    one_line_refusal(serve_config(real), READ_MARK)  # the target itself is accepted


def test_a_symlinked_directory_on_the_path_is_refused(sockdir):
    os.mkdir(os.path.join(sockdir, "real"))
    write_config(os.path.join(sockdir, "real"))
    os.symlink("real", os.path.join(sockdir, "via"))
    one_line_refusal(serve_config(os.path.join(sockdir, "via", "z.toml")),
                     "goes through")


def test_a_root_file_in_a_world_writable_non_sticky_directory_is_refused(sockdir):
    open_dir = os.path.join(sockdir, "open")
    os.mkdir(open_dir)
    path = write_config(open_dir)
    os.chmod(open_dir, 0o777)
    one_line_refusal(serve_config(path), "without the sticky bit")
    os.chmod(open_dir, 0o1777)  # sticky: nobody can replace our file
    one_line_refusal(serve_config(path), READ_MARK)


def test_a_directory_owned_by_another_user_is_refused(sockdir):
    theirs = os.path.join(sockdir, "theirs")
    os.mkdir(theirs)
    path = write_config(theirs)
    os.chown(theirs, NOBODY, NOBODY)
    one_line_refusal(serve_config(path), f"belongs to another user (uid {NOBODY})")


def test_a_fifo_is_refused_without_waiting(sockdir):
    fifo = os.path.join(sockdir, "z.toml")
    os.mkfifo(fifo, 0o644)
    one_line_refusal(serve_config(fifo), "is not a regular file")


def test_a_directory_is_refused(sockdir):
    one_line_refusal(serve_config(sockdir), "is not a regular file")

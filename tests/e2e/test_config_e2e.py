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

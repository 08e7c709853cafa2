"""The systemd units in docs/swap.md are valid units (systemd-analyze
verify) and start zramd from its config file."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def units() -> dict[str, str]:
    text = (ROOT / "docs" / "swap.md").read_text()
    found = re.findall(r"`/etc/systemd/system/([^`]+)`:\n\n```ini\n(.*?)```", text, re.S)
    return dict(found)


def test_the_server_unit_reads_the_config_file():
    server = units()["zramd.service"]
    starts = re.findall(r"^ExecStart=(.*)$", server, re.M)
    assert starts == ["/usr/local/bin/zramd serve --config /etc/zramd.toml"]


@pytest.mark.skipif(not shutil.which("systemd-analyze"),
                    reason="systemd-analyze not installed (Debian: systemd)")
def test_units_pass_systemd_analyze_verify(tmp_path):
    zramd = Path(sys.executable).with_name("zramd")
    paths = []
    for name, body in units().items():
        body = body.replace("/usr/local/bin/zramd", str(zramd))
        if name.endswith("@.service"):
            name = name.replace("@.service", "@0.service")
        path = tmp_path / name
        path.write_text(body)
        paths.append(str(path))
    assert len(paths) >= 3
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *paths],
                            capture_output=True, text=True, timeout=60)
    problems = []
    for line in (result.stdout + result.stderr).splitlines():
        m = re.search(r"Command (\S+) is not executable", line)
        if m and not os.path.exists(m.group(1)):
            continue  # a tool this machine lacks (e.g. /sbin/modprobe in a container)
        problems.append(line)
    assert not problems, problems

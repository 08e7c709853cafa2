"""What a bench run ran on: CPU, cores, memory, OS, kernel, tool versions,
load average. Printed at the top of every report: numbers are only
comparable within one run, on one machine."""

from __future__ import annotations

import os
import platform
import subprocess


def _cmd_out(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _first(path: str, prefix: str) -> str:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(prefix):
                    return line[len(prefix) :].strip()
    except OSError:
        pass
    return ""


def info(zramd: str | None) -> dict:
    mem_kib = _first("/proc/meminfo", "MemTotal:").split()
    nbdkit_python = ""
    for line in _cmd_out(["nbdkit", "python", "--dump-plugin"]).splitlines():
        if line.startswith("python_version="):
            nbdkit_python = line.split("=", 1)[1]
    return {
        "cpu": _first("/proc/cpuinfo", "model name").lstrip(":").strip(),
        "cores": os.cpu_count(),
        "mem_bytes": int(mem_kib[0]) * 1024 if mem_kib else 0,
        "os": _first("/etc/os-release", "PRETTY_NAME=").strip('"'),
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "nbdkit_python": nbdkit_python,
        "fio": _cmd_out(["fio", "--version"]),
        "nbdkit": _cmd_out(["nbdkit", "--version"]),
        "zramd": "zramd" if zramd else None,
    }

"""The log format, the rate limiter and the one-line exception format."""

from __future__ import annotations

import errno
import os
import stat
import traceback

import pytest

from zramd import logs
from zramd.settings import ConfigError


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_format_line_is_one_levelled_line():
    line = logs.format_line("WARNING", "a\nb\n", pid=42)
    assert line == "zramd[42]: WARNING a | b"
    assert logs.format_line("INFO", "x", pid=1, timestamp=True).endswith(" zramd[1]: INFO x")


def test_rate_limiter_burst_then_one_report_per_window():
    clock = Clock()
    rl = logs.RateLimiter(burst=3, interval_s=10, clock=clock)
    results = [rl.admit("k", f"m{i}") for i in range(10)]
    assert [emit for emit, _ in results] == [True] * 3 + [False] * 7
    assert rl.expired() == []             # the window is still open
    assert rl.admit("other")[0]           # kinds are limited separately
    clock.now += 10
    assert rl.expired() == [(7, "m3")]    # the first suppressed one is the sample
    assert rl.expired() == []


def test_rate_limiter_reports_closed_window_before_next_event():
    clock = Clock()
    rl = logs.RateLimiter(burst=1, interval_s=5, clock=clock)
    rl.admit("k", "a")
    rl.admit("k", "b")
    clock.now += 6
    assert rl.admit("k", "c") == (True, (1, "b"))


def test_rate_limiter_bounds_its_memory():
    clock = Clock()
    rl = logs.RateLimiter(burst=1, interval_s=5, clock=clock, max_keys=4)
    assert all(rl.admit(f"k{i}")[0] for i in range(4))
    assert rl.admit("k5") == (False, None)   # too many kinds in one window
    clock.now += 5
    assert rl.admit("k5")[0]


def test_classify_levels():
    assert logs.classify("nbdkit: python.3: error: /p.py: pwrite: error: ENOSPC: x") == \
        ("ERROR", "nbdkit: python.3: /p.py: pwrite: error: ENOSPC: x")
    assert logs.classify("nbdkit: error: cannot bind")[0] == "ERROR"
    assert logs.classify("nbdkit: python.0: debug: hello")[0] == "DEBUG"
    assert logs.classify("zramd[7]: WARNING w") == ("WARNING", "w")
    assert logs.classify("something else") == ("INFO", "something else")


def test_request_errors_are_one_kind_per_callback_and_errno():
    a = logs.rate_key("ERROR", "nbdkit: python.3: /p.py: pwrite: error: ENOSPC: mem_limit reached")
    b = logs.rate_key("ERROR", "nbdkit: python.9: /p.py: pwrite: error: ENOSPC: other words")
    c = logs.rate_key("ERROR", "nbdkit: python.9: /p.py: pread: error: ENOSPC: x")
    assert a == b != c
    assert logs.rate_key("ERROR", "read at 1234") == logs.rate_key("ERROR", "read at 99")
    assert logs.short_request_error("nbdkit: python.3: /p.py: pwrite: error: ENOSPC: m") == \
        "pwrite failed: ENOSPC: m"


def test_expected_exceptions_format_as_one_line(monkeypatch):
    monkeypatch.setattr(traceback, "format_exception", traceback.format_exception)
    logs.install_exception_format()
    try:
        raise OSError(errno.ENOSPC, "mem_limit reached")
    except OSError as exc:
        out = traceback.format_exception(type(exc), exc, exc.__traceback__)
    assert out == ["ENOSPC: mem_limit reached"]
    out = traceback.format_exception(ConfigError("size must be positive"))
    assert out == ["size must be positive"]
    try:
        {}["missing"]
    except KeyError as exc:  # a bug keeps its traceback
        out = traceback.format_exception(type(exc), exc, exc.__traceback__)
    assert out[0].startswith("Traceback") and len(out) > 1


def test_filter_rate_limits_and_forwards(tmp_path):
    path = tmp_path / "log"
    fd = logs.open_log_file(str(path))
    f = logs.StderrFilter(fd, burst=2, interval_s=60)
    f.timestamps = False
    for i in range(10):
        f.handle(f"nbdkit: python.{i}: error: /p.py: pwrite: error: ENOSPC: mem_limit reached")
    f.handle("nbdkit: python.1: error: /p.py: pread: error: Traceback (most recent call last):")
    f.handle('  File "x.py", line 1, in pread')   # continuation of the line above
    f.handle("KeyError: 'x'")
    f._report_suppressed(force=True)
    os.close(fd)
    lines = path.read_text().splitlines()
    assert sum("pwrite failed: ENOSPC: mem_limit reached" in l and "suppressed" not in l
               for l in lines) == 2
    assert any("suppressed 8 similar messages" in l for l in lines)
    assert sum("ERROR" in l for l in lines) == 5  # 2 + traceback head and its 2 lines


def test_log_file_is_owner_only_and_never_a_symlink(tmp_path):
    path = tmp_path / "zramd.log"
    os.close(logs.open_log_file(str(path)))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    link = tmp_path / "link.log"
    link.symlink_to(path)
    with pytest.raises(logs.LogFileError, match="symlink"):
        logs.open_log_file(str(link))
    os.chmod(path, 0o644)
    with pytest.raises(logs.LogFileError, match="readable or writable by others"):
        logs.open_log_file(str(path))
    with pytest.raises(logs.LogFileError, match="not a regular file"):
        logs.open_log_file(os.devnull)


def test_dropped_lines_are_reported(tmp_path, monkeypatch):
    path = tmp_path / "log"
    fd = logs.open_log_file(str(path))
    f = logs.StderrFilter(fd)
    monkeypatch.setattr(logs, "dropped_lines", 3)
    f._report_suppressed()
    f._report_suppressed()  # reported once
    os.close(fd)
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and "WARNING dropped 3 log lines" in lines[0]

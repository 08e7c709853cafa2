"""Logs through real nbdkit: a burst of failed requests is a few one-line,
levelled, rate-limited lines, never a traceback per request."""

from __future__ import annotations

import os
import re

import nbd
import pytest

from helpers import connect, stats
from zramd import logs

PAGE = 4096
LINE = re.compile(r"^(\S+ )?zramd\[\d+\]: (DEBUG|INFO|WARNING|ERROR) \S")


def _burst(server, n: int) -> None:
    """Fill the 1M mem_limit, then ``n`` writes that fail with ENOSPC."""
    h = connect(server)
    offset = 0
    try:
        while True:
            h.pwrite(os.urandom(8 * PAGE), offset)
            offset += 8 * PAGE
    except nbd.Error as exc:
        assert exc.errno == "ENOSPC"
    data = os.urandom(8 * PAGE)  # did not fit: never will
    for _ in range(n - 1):
        with pytest.raises(nbd.Error) as info:
            h.pwrite(data, offset)
        assert info.value.errno == "ENOSPC"
    h.shutdown()
    assert stats(server)["failed_writes"] == n


def _check_bounded(text: str, n: int) -> None:
    lines = text.splitlines()
    assert "Traceback" not in text
    for line in lines:
        assert LINE.match(line), f"not a levelled zramd line: {line!r}"
    failed = [l for l in lines if "pwrite failed: ENOSPC" in l and "suppressed" not in l]
    assert 1 <= len(failed) <= logs.BURST, lines
    suppressed = [int(m.group(1)) for l in lines
                  for m in [re.search(r"suppressed (\d+) similar messages .*pwrite failed: ENOSPC", l)]
                  if m]
    # every failed request is either a line or counted in a "suppressed" line
    assert len(failed) + sum(suppressed) == n, lines
    assert len(lines) <= 20, lines


def test_enospc_burst_is_bounded_one_line_output(make_server):
    n = 300
    server = make_server(size="64M", mem_limit="1M")
    with server:
        _burst(server, n)
    server.log_file.flush()
    _check_bounded(open(server.log_file.name).read(), n)


def test_log_file_gets_timestamped_lines(make_server, sockdir):
    path = os.path.join(sockdir, "zramd.log")
    n = 50
    server = make_server(size="64M", mem_limit="1M", log_file=path)
    with server:
        _burst(server, n)
    assert os.stat(path).st_mode & 0o777 == 0o600
    text = open(path).read()
    _check_bounded(text, n)
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\S* zramd\[\d+\]: INFO stopped with",
                     text, re.M), text

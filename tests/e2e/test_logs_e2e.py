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


def test_sigusr1_dumps_python_stacks_and_keeps_serving(make_server, sockdir):
    """kill -USR1 of the nbdkit process: every Python thread's stack goes to
    the log (where a stuck server waits), and the server keeps serving."""
    import signal
    import time

    path = os.path.join(sockdir, "stacks.log")
    server = make_server(size="16M", log_file=path)
    with server:
        h = connect(server)
        data = os.urandom(PAGE)
        h.pwrite(data, 0)
        os.kill(server.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while "most recent call first" not in open(path).read():
            assert time.monotonic() < deadline, open(path).read()
            time.sleep(0.05)
        assert h.pread(PAGE, 0) == data
        h.pwrite(data, PAGE)
        h.shutdown()
        assert server.running()
    text = open(path).read()
    assert re.search(r"^Thread 0x[0-9a-f]+ \(most recent call first\):", text, re.M), text
    assert "zramd/" in text  # frames of our own threads (control server, log drain)


@pytest.mark.timeout(120, method="signal")  # a blocked server fails here, not forever
def test_a_stalled_log_reader_never_blocks_requests(sockdir):
    """nbdkit's stderr is a pipe nobody reads, already full: failing and
    succeeding requests still complete (without the filter, the first
    failed request would block in write() holding the GIL, and every
    connection with it), and the data is right."""
    import fcntl
    import subprocess
    import time

    from zramd.settings import Settings
    from zramd.server import Server
    from zramd.units import parse_size

    sock = os.path.join(sockdir, "stall.sock")
    settings = Settings(size_bytes=parse_size("16M"), mem_limit_bytes=parse_size("1M"),
                        socket_path=sock)
    server = Server(settings)
    r, w = os.pipe()
    flags = fcntl.fcntl(w, fcntl.F_GETFL)
    fcntl.fcntl(w, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    try:
        while True:
            os.write(w, b"x" * 4096)
    except BlockingIOError:
        pass
    fcntl.fcntl(w, fcntl.F_SETFL, flags)  # nbdkit gets a blocking, full pipe
    proc = subprocess.Popen(server.command(), env=server.environment(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=w)
    os.close(w)
    try:
        while not os.path.exists(server.control_path):  # bounded by pytest's timeout
            assert proc.poll() is None, "nbdkit died"
            time.sleep(0.02)
        h = nbd.NBD()
        h.connect_unix(sock)
        kept = os.urandom(8 * PAGE)
        h.pwrite(kept, 0)
        offset = 8 * PAGE
        try:
            while True:
                h.pwrite(os.urandom(8 * PAGE), offset)
                offset += 8 * PAGE
        except nbd.Error:
            pass
        data = os.urandom(8 * PAGE)
        for _ in range(2000):
            with pytest.raises(nbd.Error):
                h.pwrite(data, offset)
        h2 = nbd.NBD()  # another connection is served too
        h2.connect_unix(sock)
        assert h2.pread(8 * PAGE, 0) == kept
        h.trim(8 * PAGE, 0)
        h.pwrite(data, offset)
        assert h2.pread(8 * PAGE, offset) == data
        h.shutdown()
        h2.shutdown()
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        finally:
            os.close(r)
            server.stop()

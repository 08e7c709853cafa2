"""The server's fixed footprint: what nbdkit with zramd holds before it
stores anything, plain and with ``--swap`` (memory locked).

The bounds are generous (the measured figures, about 23 MiB both ways for a
1 GiB device, are in the README and ``make bench``), but they still catch
the regressions that matter: ``--swap`` populating nbdkit's 192 MiB of unused
buffers again (mlockall without MCL_ONFAULT: 235 MiB), a thread stack locked
whole per connection, or a per-page table that grows with the device size
(docs/design.md#page-arena-and-memory-accounting).
"""

from __future__ import annotations

import os

import pytest

from helpers import connect
from zramd import process

IDLE_RSS_MAX_BYTES = 64 << 20
SWAP_RSS_MAX_BYTES = 96 << 20
CONNECTIONS = 2  # nbd-client -C 2, as the README's swap example


def status_bytes(pid: int, field: str) -> int:
    found = process.status_bytes(pid, (field,))
    assert field in found, f"no {field} in /proc/{pid}/status"
    return found[field]


def unlocked_anonymous_mappings(pid: int) -> list[str]:
    """Mappings holding resident anonymous memory without the lock flag.

    Droppable mappings (VmFlags ``dp``, MAP_DROPPABLE, Linux 6.11+) do not
    count: the kernel never locks them, and frees rather than swaps them
    under pressure, so they cannot wait on the device. glibc 2.41+ (Debian
    13) keeps each thread's vDSO getrandom state in one."""
    unlocked, header, anon = [], None, 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            key = line.split(":", 1)[0]
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):  # a mapping's header
                header, anon = line.strip(), 0
            elif key == "Anonymous":
                anon = int(line.split()[1])
            elif key == "VmFlags" and anon and not {"lo", "dp"} & set(line.split()[1:]):
                unlocked.append(f"{header} ({anon} kB)")
    return unlocked


def connected(server, n):
    handles = [connect(server) for _ in range(n)]
    for h in handles:
        h.pread(4096, 0)  # a request on each connection: its thread has run
    return handles


def test_idle_rss(make_server):
    with make_server(size="1G") as server:
        idle = status_bytes(server.pid, "VmRSS")
        handles = connected(server, CONNECTIONS)
        with_clients = status_bytes(server.pid, "VmRSS")
        for h in handles:
            h.shutdown()
    assert idle < IDLE_RSS_MAX_BYTES, f"idle VmRSS {idle >> 20} MiB"
    assert with_clients < IDLE_RSS_MAX_BYTES, f"VmRSS with clients {with_clients >> 20} MiB"


def test_swap_locks_only_what_it_touches(make_server):
    """--swap: every resident anonymous page is locked, and locking did not
    populate the reservations nobody uses."""
    if os.geteuid() != 0:
        pytest.skip("mlockall of the whole server needs root (or a raised RLIMIT_MEMLOCK)")
    with make_server(size="1G", swap=True) as server:
        handles = connected(server, CONNECTIONS)
        h = handles[0]
        h.pwrite(os.urandom(1 << 20), 0)
        assert h.pread(1 << 20, 0) != bytes(1 << 20)
        rss = status_bytes(server.pid, "VmRSS")
        locked = status_bytes(server.pid, "VmLck")
        unlocked = unlocked_anonymous_mappings(server.pid)
        for h in handles:
            h.shutdown()
    assert locked > rss, f"VmLck {locked >> 20} MiB, VmRSS {rss >> 20} MiB: not locked"
    assert unlocked == [], f"resident anonymous memory not locked: {unlocked}"
    assert rss < SWAP_RSS_MAX_BYTES, f"--swap VmRSS {rss >> 20} MiB"


FAILED_WRITES = 10_000
FAILED_WRITES_RSS_GROWTH_MAX_BYTES = 3 << 20  # 55 MiB leaked at first, then 5.3 MiB


def test_failed_writes_do_not_leak(make_server):
    """Writes refused at mem_limit (ENOSPC) cost no memory: nbdkit keeps
    every exception a Python callback raises, so the plugin raises a small
    one of its own and gives back what nbdkit kept (zramd/failures.py)."""
    with make_server(size="64M", mem_limit="1M") as server:
        h = connect(server)
        page = os.urandom(4096)  # incompressible: a huge page per write
        for i in range(200):
            h.pwrite(page, i * 4096)
        before = status_bytes(server.pid, "VmRSS")
        failed = 0
        for i in range(FAILED_WRITES):
            try:
                h.pwrite(page, (1000 + i % 10_000) * 4096)
            except Exception as exc:  # nbd.Error
                assert "No space left" in str(exc) or "ENOSPC" in str(exc), exc
                failed += 1
        growth = status_bytes(server.pid, "VmRSS") - before
        h.shutdown()
    assert failed > FAILED_WRITES * 0.9
    assert growth < FAILED_WRITES_RSS_GROWTH_MAX_BYTES, \
        f"{failed} failed writes grew VmRSS by {growth >> 20} MiB"

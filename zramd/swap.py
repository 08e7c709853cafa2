"""Serving swap to the host that runs the server.

Swap over NBD to the same host can deadlock: to free memory the kernel swaps
out to us, and we need memory (page faults, allocations, our own dirty page
cache) to accept it.  The defences applied by ``zramd serve --swap``:
nbdkit's ``--swap`` locks nbdkit into RAM (mlockall), ``lock_memory`` locks
the ``zramd serve`` wrapper too, ``PR_SET_IO_FLUSHER`` (Linux 5.6+, needs
CAP_SYS_RESOURCE) makes the kernel treat our own allocations as if from an
I/O path (no recursion into I/O during reclaim), as it does for loop and nbd
helpers, and ``oom_score_adj`` -1000 (inherited by nbdkit) keeps the OOM
killer away from both processes.

``watch_parent`` runs in nbdkit: with ``--swap`` nbdkit does not exit with
the wrapper (killing it would drop every swapped page), so a daemon thread
waits on a pidfd of the wrapper and logs one line when it is gone
(docs/design.md#security).  No other state, no locking.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import sys
import threading

PR_SET_IO_FLUSHER = 57
MCL_CURRENT = 1
MCL_FUTURE = 2
OOM_SCORE_ADJ_MIN = -1000


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def set_io_flusher() -> str | None:
    """Mark this process as an I/O flusher; return None, or why not."""
    if _libc().prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) == 0:
        return None
    return os.strerror(ctypes.get_errno())


def lock_memory() -> str | None:
    """mlockall(MCL_CURRENT | MCL_FUTURE); return None, or why not."""
    if _libc().mlockall(MCL_CURRENT | MCL_FUTURE) == 0:
        return None
    return os.strerror(ctypes.get_errno())


def set_oom_score_adj(value: int = OOM_SCORE_ADJ_MIN, pid: str = "self") -> str | None:
    """Write ``value`` to /proc/PID/oom_score_adj; return None, or why not.
    Children inherit it, so the wrapper sets it before starting nbdkit."""
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write(str(value))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def watch_parent(on_gone) -> threading.Thread | None:
    """Call ``on_gone(pid)`` once, from a daemon thread, when our parent
    process exits.  Returns the thread, or None if the parent is already
    gone or pidfds are unavailable (Linux < 5.3)."""
    ppid = os.getppid()
    try:
        fd = os.pidfd_open(ppid)
    except (OSError, AttributeError) as exc:
        print(f"zramd: warning: cannot watch the zramd serve process: {exc}", file=sys.stderr)
        return None
    if os.getppid() != ppid:  # it went between getppid and pidfd_open
        os.close(fd)
        on_gone(ppid)
        return None

    def wait():
        try:
            select.select([fd], [], [])  # readable once the process has exited
        finally:
            os.close(fd)
        on_gone(ppid)

    thread = threading.Thread(target=wait, name="zramd-watch-parent", daemon=True)
    thread.start()
    return thread

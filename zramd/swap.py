"""Serving swap to the host that runs the server.

Swap over NBD to the same host can deadlock: to free memory the kernel swaps
out to us, and we need memory (page faults, allocations, our own dirty page
cache) to accept it.  Two defences, both applied by ``zramd serve --swap``
from inside the plugin:

- ``lock_memory()``: ``mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)``.
  Every page the server has touched, or touches later, stays in RAM, but
  untouched reservations are not populated.  nbdkit's own ``--swap`` calls
  ``mlockall(MCL_CURRENT | MCL_FUTURE)``, which populates every writable
  mapping: nbdkit 1.32's 192 MiB of static zero buffers (its .bss), 8 MiB
  per thread stack and every malloc arena, 235 MiB before the first request
  (docs/design.md#page-arena-and-memory-accounting).  Kernels without
  ``MCL_ONFAULT`` (before 4.4) get the populating lock, with a warning.
- ``set_io_flusher()``: ``PR_SET_IO_FLUSHER`` (Linux 5.6+, needs
  CAP_SYS_RESOURCE) makes the kernel treat our own allocations as if from an
  I/O path (no recursion into I/O during reclaim), as it does for loop and
  nbd helpers.  It is also what makes faulting in a new page safe under
  ``MCL_ONFAULT``: the fault may reclaim, but never by swapping to us.

``set_oom_score_adj`` (-1000, inherited by nbdkit) keeps the OOM killer
away from the wrapper and nbdkit; ``watch_parent`` runs in nbdkit and logs
when the wrapper is gone (docs/design.md#security).  No state, no locking.
"""

from __future__ import annotations

import ctypes
import errno
import os

from .libc import LIBC, prctl

PR_SET_IO_FLUSHER = 57
MCL_CURRENT = 1
MCL_FUTURE = 2
MCL_ONFAULT = 4


class LockError(OSError):
    """mlockall failed; strerror says why."""


def lock_memory() -> str | None:
    """Lock the process into RAM without populating what it never touched.

    Returns None, or a warning when only the populating lock was possible;
    raises ``LockError`` when memory cannot be locked at all (no root, or
    RLIMIT_MEMLOCK too low).
    """
    if LIBC.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) == 0:
        return None
    err = ctypes.get_errno()
    if err != errno.EINVAL:  # EINVAL: a kernel without MCL_ONFAULT
        raise LockError(
            err, f"mlockall: {os.strerror(err)} (needs root or a raised RLIMIT_MEMLOCK)"
        )
    if LIBC.mlockall(MCL_CURRENT | MCL_FUTURE) == 0:
        return "this kernel has no MCL_ONFAULT: every mapping is populated and locked"
    err = ctypes.get_errno()
    raise LockError(err, f"mlockall: {os.strerror(err)} (needs root or a raised RLIMIT_MEMLOCK)")


def set_io_flusher() -> str | None:
    """Mark this process as an I/O flusher; return None, or why not."""
    return prctl(PR_SET_IO_FLUSHER, 1)


# -- the wrapper and nbdkit as a pair (docs/design.md#security) -------------

OOM_SCORE_ADJ_MIN = -1000


def set_oom_score_adj(value: int = OOM_SCORE_ADJ_MIN, pid: str = "self") -> str | None:
    """Write ``value`` to /proc/PID/oom_score_adj; return None, or why not.
    Children inherit it, so the wrapper sets it before starting nbdkit."""
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write(str(value))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


PR_SET_PDEATHSIG = 1


def outlive_parent() -> str | None:
    """Disarm the parent-death signal (nbdkit sets SIGTERM on its parent's
    death in its main, with or without --exit-with-parent); return None, or
    why not."""
    return prctl(PR_SET_PDEATHSIG, 0)


def watch_parent(on_gone):
    """Call ``on_gone(pid)`` once, from a daemon thread, when our parent
    process (the ``zramd serve`` wrapper) exits: with ``--swap`` nbdkit runs
    without ``--exit-with-parent`` and keeps serving.  The thread blocks on
    a pidfd (no polling).  Returns the thread, or None with a reason string
    if the parent cannot be watched (Linux < 5.3)."""
    import select
    import threading

    ppid = os.getppid()
    try:
        fd = os.pidfd_open(ppid)
    except (OSError, AttributeError) as exc:
        return f"cannot watch the zramd serve process: {exc}"
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

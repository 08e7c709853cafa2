"""Keep the stored pages out of core dumps and out of other processes' reach.

The server's memory is other processes' swapped-out pages, and with
``--backing-encrypt`` the only copy of the backing file's key.  A core dump
(a crash, ``gcore``, systemd-coredump) would write all of it to disk, and any
process of the same user could read it live through ``/proc/PID/mem`` or
``ptrace``.  ``forbid_dumps()`` clears the process's dumpable flag
(``prctl(PR_SET_DUMPABLE, 0)``), as sshd and gpg-agent do: no core file, no
ptrace or ``/proc/PID/mem`` access for anyone without CAP_SYS_PTRACE, and
``/proc/PID``'s private files become root's.  Only root (or a holder of
CAP_SYS_PTRACE) can still inspect the server, which is what debugging needs;
``kill -USR1`` gives the Python stacks without it (zramd/logs.py).

Called once in the plugin's ``config_complete``, before the store exists.
No state, no locking.
"""

from __future__ import annotations

from .libc import LIBC, prctl

PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4


def forbid_dumps() -> str | None:
    """Clear the dumpable flag; returns why not, or None when done."""
    why_not = prctl(PR_SET_DUMPABLE, 0)
    return why_not and f"cannot keep the stored pages out of core dumps: {why_not}"


def dumpable() -> bool:
    """This process's dumpable flag."""
    return LIBC.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0

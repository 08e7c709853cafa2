"""Ending client connections so that nbdkit can exit while clients are
still connected.

nbdkit 1.32 handles SIGTERM by waiting for every connection to end, and its
connection threads sit in a blocking read() of the next request that the
signal does not interrupt: with a client attached, ``zramd serve`` would
hang on Ctrl-C until the client hangs up (seen: 10 s kill timeouts in 3 of 4
tries).  ``disconnect_clients()`` finds this process's connected sockets and
shuts down their reading side: the blocked read returns end-of-file, nbdkit
finishes the request in progress, replies, and closes the connection as if
the client had left.  Sockets bound to ``keep_path`` (the control socket and
its clients) are left alone.  Only duplicates of the descriptors are
touched, never closed from under nbdkit.  No state, no locking.
"""

from __future__ import annotations

import os
import socket
import stat


def disconnect_clients(keep_path: str | None = None) -> int:
    """Shut down reading on every connected socket; return how many."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        with sock:
            try:
                sock.getpeername()  # raises on listening sockets
                if keep_path and sock.family == socket.AF_UNIX and sock.getsockname() == keep_path:
                    continue
                sock.shutdown(socket.SHUT_RD)
                count += 1
            except OSError:
                continue
    return count

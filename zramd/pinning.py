"""Keep nbdkit's per-OS-thread Python thread state alive between callbacks.

nbdkit's python plugin wraps every callback in PyGILState_Ensure/Release.
Its threads are not Python's, so Release destroys the thread state on every
call (an mmap+munmap per request, and ``threading.local`` resets).  One
extra ``PyGILState_Ensure()`` per OS thread keeps the state alive: 2-3x IOPS
(docs/design.md#tuning-constants).  ``close()`` of the connection releases it.

The pin is flagged with a ``threading.local`` attribute, never a thread id
(ids are reused across connections).  The attribute lives in the very thread
state we keep alive, so it vanishes exactly when the pin does.

This leans on CPython internals (CPython gh-146219): it is behind a
switch (``pin_thread_state=off``), and when the Python version changes,
verify with ``strace -c -f`` that mmap/munmap per request are gone.
With ``--threads 1`` (the default) nbdkit runs a connection's open, every
request and close on one thread, so the plugin pins in ``open()`` and
releases in ``close()``.  With more threads per connection the plugin pins
in every callback; nbdkit's extra worker threads then end with their pin
still held, leaking one thread state per worker per connection.

No locking: each thread touches only its own thread-local state.
"""

from __future__ import annotations

import ctypes
import threading

_local = threading.local()
_ensure = ctypes.pythonapi.PyGILState_Ensure
_ensure.restype = ctypes.c_int
_ensure.argtypes = []
_release = ctypes.pythonapi.PyGILState_Release
_release.restype = None
_release.argtypes = [ctypes.c_int]


def pin() -> None:
    """Pin this OS thread's thread state (idempotent, cheap when pinned)."""
    if not hasattr(_local, "gilstate"):
        _local.gilstate = _ensure()


def unpin() -> None:
    """Release this thread's pin, if it has one (call from close())."""
    state = getattr(_local, "gilstate", None)
    if state is not None:
        del _local.gilstate
        _release(state)

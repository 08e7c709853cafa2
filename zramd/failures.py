"""The exceptions the plugin's callbacks raise, and the references nbdkit
leaks with each of them.

nbdkit 1.32's python plugin turns an exception raised by a callback into an
error reply in ``check_python_failure``: ``PyErr_Fetch``, print, return -1.
It never releases the three references ``PyErr_Fetch`` hands it (the type,
the exception, the traceback), so the exception and everything its
traceback reaches stay alive for good: 5.8 KiB per write refused at
``mem_limit`` when the store's own exception went up (every frame down to
the store, with the compressed page in them); RSS then climbs past
``mem_limit`` for as long as clients keep writing
(docs/design.md#page-arena-and-memory-accounting).

Two defences:

1. ``failure(errno, message)`` builds a new exception for the callback to
   raise outside its ``except`` block, after dropping the request buffer:
   no ``__context__``, a traceback of one frame.  That alone cut the leak to
   554 bytes per failure.
2. It keeps that exception in a thread-local slot; ``format_exception``,
   which nbdkit calls (as ``traceback.format_exception``) with the very
   references it fetched, notes the traceback beside it (on Python 3.11
   the exception does not hold it; from 3.12 on, where the interpreter
   keeps only the exception, it is the exception's ``__traceback__``).
   When the same thread fails again, or its connection closes
   (``release_last()``), nbdkit is long done with the previous one (that
   callback returned), and the references it took are given back with
   ``Py_DecRef`` -- but only if the reference counts show exactly
   nbdkit's one extra reference on both the exception and the traceback
   (``EXPECTED_*``). An nbdkit that releases them, a printer that was
   bypassed, or anything else holding a reference leaves the counts
   different, and then nothing is touched (the objects just leak, as
   before). Only the thread that raised an exception ever releases it,
   so no thread can see it between the raise and nbdkit's fetch. Without
   the thread-state pin (``--no-pin-thread-state``) the slot does not
   survive between callbacks, so nothing is released.

Measured: 10,000 writes of an incompressible page refused at mem_limit grew
VmRSS by 55 MiB with the store's exception, 5.3 MiB with defence 1, and
0.4 MiB with both (tests/e2e/test_footprint.py bounds it).

State: one thread-local slot per thread and two counters (``released``,
``kept``), bumped without a lock (statistics only).
"""

from __future__ import annotations

import ctypes
import sys
import threading
import traceback

# sys.getrefcount of this thread's previous exception and of its traceback
# inside _release: release_last's variable, _release's argument,
# getrefcount's own argument, and nbdkit's leaked reference (measured with
# nbdkit 1.32.5, CPython 3.11).  Without the leak, each is one less.  From
# CPython 3.12 on the exception also holds its traceback (PyErr_Fetch hands
# out exc.__traceback__), one more on the traceback: counted in _release
# (measured with nbdkit 1.42, CPython 3.13).
EXPECTED_EXC_REFS = 4
EXPECTED_TB_REFS = 4

_local = threading.local()
_format_exception = traceback.format_exception
_decref = ctypes.pythonapi.Py_DecRef
_decref.argtypes = [ctypes.py_object]
_decref.restype = None

released = 0  # exceptions whose leaked references were given back
kept = 0  # exceptions left alone: the counts were not nbdkit's leak


def failure(errno: int, message: str) -> OSError:
    """A new exception for a callback to raise (see the module docstring)."""
    release_last()
    exc = OSError(errno, message)
    _local.last = exc
    return exc


def format_exception(*args, **kwargs):
    """``traceback.format_exception``, which nbdkit calls to print a
    callback's exception with the very references it fetched: for this
    thread's last failure, note the traceback (the exception itself does not
    hold it on 3.11), then format as the formatter installed before (zramd.logs:
    one line)."""
    value = args[1] if len(args) > 1 else kwargs.get("value")
    if value is not None and value is getattr(_local, "last", None):
        _local.last_tb = args[2] if len(args) > 2 else kwargs.get("tb")
    return _format_exception(*args, **kwargs)


def install() -> None:
    """Route nbdkit's traceback printing through ``format_exception``
    (after ``zramd.logs.install_exception_format``, which it wraps)."""
    global _format_exception
    if traceback.format_exception is not format_exception:
        _format_exception = traceback.format_exception
        traceback.format_exception = format_exception


def release_last() -> None:
    """Give back what nbdkit took with this thread's previous failure."""
    prev = getattr(_local, "last", None)
    if prev is None:
        return
    tb = getattr(_local, "last_tb", None)
    _local.last = _local.last_tb = None
    _release(prev, tb)


def _release(exc: OSError, tb) -> None:
    global released, kept
    exc_refs = sys.getrefcount(exc)
    tb_refs = sys.getrefcount(tb) if tb is not None else 0
    held_by_exc = tb is not None and exc.__traceback__ is tb
    expected_tb_refs = EXPECTED_TB_REFS + held_by_exc
    if tb is None or exc_refs != EXPECTED_EXC_REFS or tb_refs != expected_tb_refs:
        kept += 1
        return
    _decref(tb)
    _decref(exc)
    _decref(type(exc))
    released += 1

"""zramd.failures against an emulation of nbdkit 1.32's python plugin, which
keeps the references PyErr_Fetch gives it for every exception a callback
raises: they are given back on the thread's next failure, and only when
the counts show exactly that leak."""

import ctypes
import errno
import sys
import traceback
import weakref

import pytest

from zramd import failures

_incref = ctypes.pythonapi.Py_IncRef
_incref.argtypes = [ctypes.py_object]


class Marker:
    pass


def _callback(markers):
    marker = Marker()  # lives in this frame: gone only when the frame is
    markers.append(weakref.ref(marker))
    raise failures.failure(errno.ENOSPC, "mem_limit reached")


def _nbdkit_calls(markers, leak: bool):
    """What nbdkit does: call, fetch (type, value, tb), print through
    traceback.format_exception, and (leak=True) never release them."""
    try:
        _callback(markers)
    except OSError as exc:
        # nbdkit calls from C: its traceback starts at the callback's frame
        value, tb = exc, exc.__traceback__.tb_next
    if sys.version_info < (3, 12):
        value.__traceback__ = None  # and PyErr_Fetch leaves this unset
    else:
        value.__traceback__ = tb  # PyErr_Fetch hands out exc.__traceback__
    if leak:
        _incref(type(value))
        _incref(value)
        _incref(tb)
    lines = traceback.format_exception(type(value), value, tb)
    assert any("mem_limit reached" in line for line in lines)
    # The callback's frame keeps this one (f_back; nbdkit's is C, with no
    # frame): hold nothing here that nbdkit would not hold.
    del value, tb


@pytest.fixture(autouse=True)
def installed():
    failures.release_last()
    failures.install()
    yield
    failures.release_last()


def test_leaked_references_are_given_back_on_the_next_failure():
    markers, released = [], failures.released
    for _ in range(3):
        _nbdkit_calls(markers, leak=True)
    # the first two were given back when the next one was raised
    assert failures.released == released + 2
    assert [m() is None for m in markers] == [True, True, False]
    failures.release_last()  # what close() does
    assert markers[2]() is None


def test_nothing_is_touched_without_the_leak():
    markers, kept = [], failures.kept
    _nbdkit_calls(markers, leak=False)
    failures.release_last()
    assert failures.kept == kept + 1
    assert markers[0]() is None  # freed by Python as usual
    assert sys.getrefcount(OSError) > 1

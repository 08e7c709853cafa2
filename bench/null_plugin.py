# A null nbdkit Python plugin: the ceiling for any Python plugin (zramd's
# included) on this machine, the way nbdkit's C `null` plugin is the ceiling
# for the transport. Reads return zeroes, writes are dropped.
#
#   nbdkit -f --threads 1 -U SOCK python bench/null_plugin.py size=256M [pin=1]
#
# Run it with --threads 1 like zramd does (one request thread per connection
# is the measured fast shape, see docs/design.md#tuning-constants), so both pay the same
# per-request Python cost.
#
# pin=1 keeps each nbdkit thread's Python thread state alive by taking one
# extra PyGILState_Ensure() per OS thread (released in close()); without it
# nbdkit's Ensure/Release around every callback creates and destroys a thread
# state per request. This leans on CPython internals (CPython gh-146219)
# and exists here only to show the ceiling with and without the pin.
#
# keep=lz4 makes it the least store there can be: each 4 KiB page written is
# compressed with lz4 (as zramd-lz4 does it) and the result kept in a Python
# list, one slot per page; reads decompress it (never-written pages read as
# zeroes). No accounting, no limits, no stats: what any Python plugin that
# compresses pages inline and keeps them must pay at least, so the bench can
# show how far below the null plugin even that lands (docs/design.md, "What a
# 4 KiB write costs"). Requests must be page aligned (fio's are).

import ctypes
import threading

import nbdkit

API_VERSION = 2

_size_bytes = 0
_pin = False
_local = threading.local()
_ZERO = memoryview(bytes(256 * 1024))
_PAGE_BYTES = 4096
_keep_lz4 = False
_pages: list = []  # keep=lz4: one compressed page (bytes) or None per page
_compress = _decompress = None  # keep=lz4: lz4.block's


def _parse_size(text):
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper().rstrip("B").rstrip("I")
    number = text.rstrip("KMGT")
    return int(number) * units[text[len(number) :]]


def config(key, value):
    global _size_bytes, _pin, _keep_lz4, _compress, _decompress
    if key == "size":
        _size_bytes = _parse_size(value)
    elif key == "pin":
        _pin = value.lower() in ("1", "true", "yes", "on")
    elif key == "keep":
        if value != "lz4":
            raise RuntimeError(f"keep={value!r}: only keep=lz4 is known")
        import lz4.block  # only here: the plain null plugin needs nothing

        _keep_lz4 = True
        _compress, _decompress = lz4.block.compress, lz4.block.decompress
    else:
        raise RuntimeError(f"unknown parameter {key!r}")


def config_complete():
    if _size_bytes <= 0:
        raise RuntimeError("size=N is required")
    if _keep_lz4:
        _pages.extend([None] * (_size_bytes // _PAGE_BYTES))


def thread_model():
    return nbdkit.THREAD_MODEL_PARALLEL


def _pin_thread_state():
    if not hasattr(_local, "gil_state"):
        _local.gil_state = ctypes.pythonapi.PyGILState_Ensure()


def open(readonly):
    if _pin:
        _pin_thread_state()
    return 1


def close(h):
    state = getattr(_local, "gil_state", None)
    if state is not None:
        del _local.gil_state
        ctypes.pythonapi.PyGILState_Release(state)


def get_size(h):
    return _size_bytes


def can_write(h):
    return True


def can_flush(h):
    return True


def can_trim(h):
    return not _pages


def can_zero(h):  # keep=lz4: nbdkit writes zeroes through pwrite instead
    return not _pages


def can_fua(h):
    return nbdkit.FUA_NATIVE


def can_multi_conn(h):
    return True


def block_size(h):
    return (4096, 4096, 32 * 1024 * 1024)


def pread(h, buf, offset, flags):
    if _pin:
        _pin_thread_state()
    n = len(buf)
    if _pages:
        for i in range(0, n, _PAGE_BYTES):
            page = _pages[(offset + i) >> 12]
            buf[i : i + _PAGE_BYTES] = (
                _ZERO[:_PAGE_BYTES] if page is None else _decompress(page, _PAGE_BYTES)
            )
        return
    buf[:] = _ZERO[:n] if n <= len(_ZERO) else bytes(n)


def pwrite(h, buf, offset, flags):
    if _pin:
        _pin_thread_state()
    if _pages:
        if len(buf) == _PAGE_BYTES:  # the measured shape: no loop
            _pages[offset >> 12] = _compress(buf, store_size=False)
            return
        for i in range(0, len(buf), _PAGE_BYTES):
            _pages[(offset + i) >> 12] = _compress(buf[i : i + _PAGE_BYTES], store_size=False)


def flush(h, flags):
    pass


def trim(h, count, offset, flags):
    pass


def zero(h, count, offset, flags):
    pass

"""nbdkit plugin: a thin adapter from nbdkit's callbacks to the zramd package.

Run it through ``zramd serve`` (which sets up PYTHONPATH and the options), or
by hand: ``nbdkit -f --threads 1 -U SOCK python plugin/zramd_plugin.py size=1G``.

All logic lives in ``zramd``; this file maps callbacks to device calls and
errors to ``nbdkit.set_error(errno)``.  Global state: the one Device and the
control server, created before any connection (get_ready/after_fork) and
never replaced, so callbacks read them without locks.
"""

import builtins
import errno
import json
import os
import sys
import threading

import nbdkit

try:
    import zramd  # noqa: F401
except ImportError:  # run from a checkout without PYTHONPATH
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zramd import commands, failures, logs, nodump, pinning, shutdown, swap
from zramd import settings as zsettings
from zramd.control import ControlError, ControlServer
from zramd.engine.backing import BackingFile
from zramd.engine.checksums import make_checksum
from zramd.engine.codecs import make_codec, make_codecs
from zramd.engine.device import Device
from zramd.engine.packlog import PackLog
from zramd.engine.remote import RemoteBacking
from zramd.engine.store import PageStore
from zramd.engine.writeback import Writeback
from zramd.sockets import peer_uid_allowed
from zramd.units import PAGE_SHIFT, PAGE_SIZE

API_VERSION = 2

# nbdkit prints every exception a callback raises: expected errors (ENOSPC,
# EIO, a bad setting) as one line, not a traceback
# (docs/design.md#running-as-a-service).
logs.install_exception_format()

# Advertised maximum block size, and enforced: a larger read or write fails
# with EINVAL before touching the device, as nbdkit's blocksize-policy filter
# (error-policy=error) does; nbdkit 1.32 itself only refuses above 64 MiB.
MAX_REQUEST_BYTES = 32 * 1024 * 1024

_params: dict[str, str] = {}
_settings = None
_device = None
_read = None  # the store's read, bound once
_direct_write = None  # the store's write when the device adds nothing per write
_pin_each = False  # pin in every callback (more than one thread per connection)
_control = None
_pin = False
_connections = 0  # NBD clients connected now (open minus close)
_connections_lock = threading.Lock()
_log_filter = None
# nbdkit 1.38 and later tell a Python plugin its client's credentials; where
# they do, a Unix-socket client whose uid is neither ours nor root is refused
# in open(), as the control socket refuses it (SO_PEERCRED), even where the
# socket's mode was opened up.  Older nbdkit: the mode (0600) is the guard.
# A TCP peer has no credentials (Linux reports pid 0 and the overflow uid),
# nor has a Unix peer in another pid namespace (pid 0): for those the
# check is skipped, and TLS or the mode guards them.
_peer_uid = getattr(nbdkit, "peer_uid", None)
_peer_pid = getattr(nbdkit, "peer_pid", None)


def config(key, value):
    if key in _params:
        raise ValueError(f"{key} given twice")
    _params[key] = value


def config_complete():
    global _settings, _pin, _pin_each
    failures.install()  # nbdkit's error printing (zramd/failures.py)
    _settings = zsettings.from_plugin_params(_params)
    logs.configure_plugin()
    # Before any page is stored: no core dump, no /proc/PID/mem (zramd/nodump.py).
    why_not = nodump.forbid_dumps()
    if why_not:
        logs.log("WARNING", why_not)
    _pin = _settings.pin_thread_state
    # With --threads 1, nbdkit runs open, every request and close of a
    # connection on one thread (checked), so pinning in open() is enough.
    _pin_each = _pin and _settings.threads > 1
    if _settings.swap:
        # Lock now, before the store and the threads exist (zramd.swap says
        # why this and not nbdkit's --swap).
        warning = swap.lock_memory()
        if warning:
            print(f"zramd: warning: {warning}", file=sys.stderr)
        # nbdkit 1.32 arms the parent-death signal itself: serving swap, it
        # must outlive a dead wrapper (docs/design.md#security).
        why_not = swap.outlive_parent()
        if why_not:
            logs.log("WARNING", f"nbdkit will stop with the zramd serve process: {why_not}")


def config_help():
    return zsettings.plugin_help()


def thread_model():
    return nbdkit.THREAD_MODEL_PARALLEL


def get_ready():
    global _device, _read, _direct_write
    s = _settings
    backing = (
        BackingFile(s.backing_file, s.backing_size_bytes or s.size_bytes, s.backing_encrypt)
        if s.backing_file
        else None
    )
    if s.backing_uri:  # the remote tier: always encrypted (engine/remote.py)
        backing = RemoteBacking(
            s.backing_uri,
            s.backing_size_bytes or s.size_bytes,
            s.backing_encrypt,
            s.backing_timeout_s,
        )
    recomp = (
        make_codecs(s.recomp_algorithm or "zstd", s.recomp_level)
        if s.recomp_algorithm or s.recomp_level is not None
        else None
    )
    codec = make_codec(s.algorithm, s.level)
    # packed, the store reads and frees written-back pages through the packer
    pack = PackLog(backing, codec, recomp) if backing and s.writeback_compressed else None
    store = PageStore(
        s.size_bytes,
        codec,
        s.mem_limit_bytes,
        make_checksum(s.checksum),
        recomp_codec=recomp,
        backing=pack or backing,
    )
    writeback = (
        Writeback(
            store,
            backing,
            s.high_watermark_bytes,
            s.low_watermark(),
            pack=pack,
            batch_pages=s.writeback_batch_pages,
        )
        if backing
        else None
    )
    _device = Device(
        store,
        s.compress_mode,
        s.workers,
        s.pending_limit_bytes,
        stable_writes=s.fault_inject != "no-stable-writes",
        writeback=writeback,
        recompress_after_s=s.recompress_after_s,
        cold_target_pct=s.cold_target_pct,
    )
    _read = _device.read
    _direct_write = _device.direct_write
    nbdkit.debug(f"zramd: {zsettings.describe(s)}")
    if s.swap:
        why_not = swap.set_io_flusher()
        if why_not:
            logs.log("WARNING", f"cannot mark the server as an I/O flusher: {why_not}")


def after_fork():
    global _control, _log_filter
    # From here on nbdkit's stderr goes through the rate-limiting filter:
    # a burst of failed requests is a few lines, and no request thread
    # ever waits for whoever reads the log.
    dest = logs.open_log_file(_settings.log_file) if _settings.log_file else None
    _log_filter = logs.StderrFilter(dest)
    _log_filter.install()
    assert _log_filter.dest_fd is not None  # set by install()
    logs.enable_stack_dumps(_log_filter.dest_fd)  # kill -USR1: Python stacks into the log
    _device.start()  # threads: only after nbdkit's fork
    if _settings.control_path:
        _control = ControlServer(_settings.control_path, _control_request)
        _control.start()
    if _settings.swap:  # nbdkit outlives the wrapper: say so when it goes
        why_not = swap.watch_parent(_wrapper_gone)
        if isinstance(why_not, str):
            logs.log("WARNING", why_not)


def _wrapper_gone(pid):
    logs.log(
        "WARNING",
        f"the zramd serve process (pid {pid}) is gone; nbdkit (pid {os.getpid()}) keeps "
        f"serving {_device.stats()['orig_data_size'] >> PAGE_SHIFT} stored pages: stop it "
        f"with `zramd stop --control {_settings.control_path}`",
    )


def _control_request(request):
    cmd = request.get("cmd")
    if cmd in ("stop", "shutdown"):  # server life cycle, not a store knob
        force, check = commands.stop_args(request.get("args"))
        if not (force or cmd == "shutdown"):
            _refuse_stop_in_use()
        if check:  # only asking whether a stop would go ahead
            return {"in_use": False}
        nbdkit.shutdown()
        return {"disconnected": shutdown.disconnect_clients(_settings.control_path)}
    return commands.dispatch(_device, request)


def _refuse_stop_in_use():
    """Like zram refusing a reset while the device is open: stopping with
    clients connected and pages stored loses the only copy of those pages
    (docs/design.md#security)."""
    stats = _device.stats()
    pages = stats["orig_data_size"] >> PAGE_SHIFT  # same pages and written-back ones too
    if _connections and pages:
        raise ControlError(
            f"in use: {_connections} client{'s' if _connections != 1 else ''} connected and "
            f"{pages} page{'s' if pages != 1 else ''} stored (swapoff and disconnect them "
            f"first); force with `zramd stop --force`"
        )


def cleanup():
    _device.stop()  # drains pending work first
    if _control is not None:
        _control.stop()
    # The last word on what was stored: a line for the log, and all of it as
    # JSON for whoever asked (scripts, the shutdown tests).
    stats = _device.stats()
    logs.log(
        "INFO",
        f"stopped with {stats['orig_data_size'] >> PAGE_SHIFT} pages stored, "
        f"{stats['pending_pages']} pending, "
        f"{stats['compr_data_size']} bytes compressed",
    )
    if _settings.final_stats_path:
        with builtins.open(_settings.final_stats_path, "w") as f:
            json.dump(stats, f, sort_keys=True)
    if _log_filter is not None:
        _log_filter.uninstall()


def _refuse_peer():
    """Raise for a Unix-socket client of another user (see ``_peer_uid``)."""
    try:
        pid, uid = _peer_pid(), _peer_uid()
    except Exception:  # no credentials (see _peer_uid)
        return
    if pid >= 1 and not peer_uid_allowed(uid):
        nbdkit.set_error(errno.EACCES)
        raise PermissionError(
            errno.EACCES, f"refused a client of uid {uid}: only the owner and root may connect"
        )


def open(readonly):
    global _connections
    if _peer_uid is not None and _peer_pid is not None:
        _refuse_peer()
    if _pin:
        pinning.pin()
    with _connections_lock:
        _connections += 1
    return True


def close(h):
    global _connections
    with _connections_lock:
        _connections -= 1
    _device.drain()  # a client that hangs up leaves nothing half-done
    failures.release_last()  # what nbdkit kept of this thread's last error
    if _pin:
        pinning.unpin()


def get_size(h):
    return _device.store.size_bytes


def block_size(h):
    return (1, PAGE_SIZE, MAX_REQUEST_BYTES)


def is_rotational(h):
    return False


def can_write(h):
    return True


def can_flush(h):
    return True


def can_trim(h):
    return True


def can_zero(h):
    return True


def can_fast_zero(h):
    return True


def can_extents(h):
    return True


def can_multi_conn(h):
    return True


def can_fua(h):
    return nbdkit.FUA_NATIVE


def _oversize(buf):
    """Set EINVAL and return the error for a request above the maximum."""
    nbdkit.set_error(errno.EINVAL)
    return ValueError(f"request of {len(buf)} bytes above the maximum {MAX_REQUEST_BYTES}")


def pread(h, buf, offset, flags):
    if len(buf) > MAX_REQUEST_BYTES:
        raise _oversize(buf)
    if _pin_each:
        pinning.pin()
    try:
        _read(buf, offset)
        return
    except OSError as exc:
        err, message = exc.errno, exc.strerror or str(exc)
    del h, buf  # raised outside the except block (zramd/failures.py)
    nbdkit.set_error(err)
    raise failures.failure(err, message)


def pwrite(h, buf, offset, flags):
    if len(buf) > MAX_REQUEST_BYTES:
        raise _oversize(buf)
    if _pin_each:
        pinning.pin()
    try:
        if _direct_write is not None:
            _direct_write(buf, offset)  # inline: installed before we return, FUA or not
        else:
            _device.write(buf, offset, flags & nbdkit.FLAG_FUA)
        return
    except OSError as exc:
        err, message = exc.errno, exc.strerror or str(exc)
    del h, buf  # raised outside the except block (zramd/failures.py)
    nbdkit.set_error(err)
    raise failures.failure(err, message)


def trim(h, count, offset, flags):
    try:
        _device.discard(offset, count)
        return
    except OSError as exc:
        err, message = exc.errno, exc.strerror or str(exc)
    nbdkit.set_error(err)  # raised outside the except block (zramd/failures.py)
    raise failures.failure(err, message)


# Write-zeroes frees whole pages and zeroes the edges, as trim does (zram
# handles REQ_OP_WRITE_ZEROES as a discard); it is always fast.
zero = trim


def flush(h, flags):
    _device.drain()  # every write acknowledged before this is installed


def extents(h, count, offset, flags):
    try:
        return _device.extents(offset, count, bool(flags & nbdkit.FLAG_REQ_ONE))
    except OSError as exc:
        err, message = exc.errno, exc.strerror or str(exc)
    nbdkit.set_error(err)  # raised outside the except block (zramd/failures.py)
    raise failures.failure(err, message)

"""Log lines: one per event, with a level, rate-limited, never on the I/O path.

Format: ``zramd[PID]: LEVEL message`` (one line; a file destination gets an
ISO timestamp in front, the journal adds its own).  Levels: DEBUG, INFO,
WARNING, ERROR.

Two users (docs/design.md#running-as-a-service):

- The wrapper (``zramd serve``) logs through :mod:`logging` with
  :func:`configure_wrapper` (a file or stderr).
- Inside nbdkit, :class:`StderrFilter` puts a pipe between nbdkit's file
  descriptor 2 and the real destination.  nbdkit reports every failed request
  with ``nbdkit_error`` (the Python plugin prints the exception there), so an
  ENOSPC burst used to print a full traceback per request.  The write end of
  the pipe is non-blocking: a request thread that reports an error never
  waits for a reader (a full pipe drops the line).  One drain thread reads
  the pipe, gives each line a level, rate-limits WARNING and ERROR lines per
  kind of message (:class:`RateLimiter`: the first ``burst`` per
  ``interval_s``, then one "suppressed N similar" line), and writes them to
  the destination.  :func:`install_exception_format` makes nbdkit print an
  OSError (ENOSPC, EIO, EINVAL: the errors a client can cause) or a
  ConfigError as one line instead of a traceback; other exceptions are bugs
  and keep their traceback.  :func:`enable_stack_dumps`: ``kill -USR1`` of
  an nbdkit process writes every Python thread's stack to the destination.

Locking: ``RateLimiter`` is used by the drain thread only.  ``StderrFilter``'s
drain thread owns its buffer; ``log()`` from any thread is one ``os.write``
of a whole line to the pipe (atomic below PIPE_BUF).
"""

from __future__ import annotations

import errno
import faulthandler
import fcntl
import logging
import os
import re
import select
import signal
import stat
import sys
import threading
import time
import traceback

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
BURST = 5  # lines of one kind passed per interval...
INTERVAL_S = 10.0  # ...then one "suppressed N similar" line per interval
MAX_KEYS = 1024  # kinds remembered at once (a bound on memory)
MAX_LINE_BYTES = 4096  # a longer line is cut (PIPE_BUF: one atomic write)
_DIGITS = re.compile(r"\d+")


class LogFileError(OSError):
    """The log file cannot be opened safely; the message says why."""


def open_log_file(path: str) -> int:
    """Open ``path`` for appending: created owner-only if missing, never
    through a symlink, and only if it is a regular file of ours."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LogFileError(exc.errno, f"log file {path} is a symlink: refused") from None
        raise LogFileError(exc.errno, f"cannot open log file {path}: {exc.strerror}") from None
    st = os.fstat(fd)
    why = None
    if not stat.S_ISREG(st.st_mode):
        why = "is not a regular file"
    elif st.st_uid != os.getuid():
        why = "belongs to another user"
    elif st.st_mode & 0o077:
        why = f"is readable or writable by others (mode {stat.S_IMODE(st.st_mode):o})"
    if why:
        os.close(fd)
        raise LogFileError(errno.EPERM, f"log file {path} {why}: refused")
    return fd


def format_line(level: str, message: str, pid: int | None = None, timestamp: bool = False) -> str:
    """``zramd[PID]: LEVEL message`` on one line (newlines become ' | ')."""
    message = " | ".join(part for part in message.splitlines() if part.strip()) or message
    line = f"zramd[{pid or os.getpid()}]: {level} {message}"
    if timestamp:
        line = time.strftime("%Y-%m-%dT%H:%M:%S%z ") + line
    return line


class RateLimiter:
    """At most ``burst`` events of one key per ``interval_s``; counts the rest.

    ``admit(key, sample)`` returns ``(emit, closed)``: whether to emit this
    event, and ``(suppressed, sample)`` of the key's previous window if it
    ended with events suppressed (to report before this event), else None.
    ``expired()`` returns ``(suppressed, sample)`` for windows that ended
    since, with events suppressed, and forgets every ended window.
    ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        burst: int = BURST,
        interval_s: float = INTERVAL_S,
        clock=time.monotonic,
        max_keys: int = MAX_KEYS,
    ):
        self.burst = burst
        self.interval_s = interval_s
        self.clock = clock
        self.max_keys = max_keys
        self._windows: dict[str, list] = {}  # key -> [start, count, suppressed, sample]
        self._ended: list[tuple[int, str]] = []  # reports of windows evicted early

    def admit(self, key: str, sample: str = ""):
        now = self.clock()
        w = self._windows.get(key)
        closed = None
        if w is not None and now - w[0] >= self.interval_s:
            closed = (w[2], w[3]) if w[2] else None
            w = None
        if w is None:
            if len(self._windows) >= self.max_keys:
                self._ended += self.expired()
                if len(self._windows) >= self.max_keys:
                    return False, closed  # too many kinds at once: drop
            self._windows[key] = [now, 1, 0, sample]
            return True, closed
        w[1] += 1
        if w[1] <= self.burst:
            return True, None
        if not w[2]:
            w[3] = sample
        w[2] += 1
        return False, None

    def expired(self, force: bool = False) -> list[tuple[int, str]]:
        now = self.clock()
        out, self._ended = self._ended, []
        for key, w in list(self._windows.items()):
            if force or now - w[0] >= self.interval_s:
                if w[2]:
                    out.append((w[2], w[3]))
                del self._windows[key]
        return out


def classify(line: str) -> tuple[str, str]:
    """(level, message) for a line nbdkit or the plugin printed.

    ``nbdkit: python.3: error: ...`` is ERROR, ``...: debug: ...`` DEBUG,
    ``...: warning: ...`` WARNING; a line already formatted by
    :func:`format_line` keeps its level; anything else is INFO.
    """
    m = re.match(r"(?:\S+ )?zramd\[\d+\]: (DEBUG|INFO|WARNING|ERROR) (.*)$", line)
    if m:
        return m.group(1), m.group(2)
    if line.startswith("nbdkit: "):
        head, _, _ = line.partition(": ")
        rest = line[len(head) + 2 :]
        parts = rest.split(": ", 2)
        for i, word in enumerate(parts[:2]):
            level = {"error": "ERROR", "debug": "DEBUG", "warning": "WARNING"}.get(word)
            if level:
                where = ": ".join(parts[:i])
                msg = ": ".join(parts[i + 1 :])
                return level, f"nbdkit: {where + ': ' if where else ''}{msg}"
        return "INFO", line
    return "INFO", line


def rate_key(level: str, message: str) -> str:
    """Messages that differ only in numbers (offsets, thread numbers) are
    one kind; a failed request is keyed by callback and errno name."""
    m = re.search(r": (pread|pwrite|trim|zero|flush|extents|cache): error: (E[A-Z0-9]+):", message)
    if m:
        return f"{level} request {m.group(1)} {m.group(2)}"
    return level + " " + _DIGITS.sub("#", message)[:200]


def short_request_error(message: str) -> str:
    """``nbdkit: python.3: /x/zramd_plugin.py: pwrite: error: ENOSPC: mem_limit
    reached`` -> ``pwrite failed: ENOSPC: mem_limit reached``."""
    m = re.search(
        r": (pread|pwrite|trim|zero|flush|extents|cache): error: (E[A-Z0-9]+: .*)$", message
    )
    return f"{m.group(1)} failed: {m.group(2)}" if m else message


class StderrFilter:
    """Between nbdkit's fd 2 and the log destination (see the module doc)."""

    def __init__(
        self, dest_fd: int | None = None, burst: int = BURST, interval_s: float = INTERVAL_S
    ):
        self.dest_fd = dest_fd  # None: where fd 2 pointed before install()
        self.timestamps = False
        self.limiter = RateLimiter(burst, interval_s)
        self.pid = os.getpid()
        self._saved_fd2: int | None = None
        self._r: int | None = None
        self._thread: threading.Thread | None = None
        self._dropped_reported = 0
        self._continuing = False  # the last head line was passed (continuations follow it)
        self._last_level = "INFO"

    def install(self) -> None:
        """Route fd 2 (and ``sys.stderr``) through the filter."""
        r, w = os.pipe2(os.O_CLOEXEC)
        fcntl.fcntl(w, fcntl.F_SETFL, fcntl.fcntl(w, fcntl.F_GETFL) | os.O_NONBLOCK)
        sys.stderr.flush()
        self._saved_fd2 = os.dup(2)
        if self.dest_fd is None:
            self.dest_fd = self._saved_fd2
        self.timestamps = stat.S_ISREG(os.fstat(self.dest_fd).st_mode)
        os.dup2(w, 2)  # fd 2 itself stays inheritable; the original w is closed
        os.close(w)
        self._r = r
        sys.stderr = _LineWriter()
        self._thread = threading.Thread(target=self._drain, name="zramd-log", daemon=True)
        self._thread.start()

    def uninstall(self, timeout: float = 2.0) -> None:
        """Give fd 2 back; the drain thread writes what is left and ends."""
        if self._saved_fd2 is None:
            return
        os.dup2(self._saved_fd2, 2)  # closes the pipe's write end: EOF for the drain
        sys.stderr = sys.__stderr__
        if self._thread is not None:
            self._thread.join(timeout)
        if self._thread is None or not self._thread.is_alive():
            if self.dest_fd is not None and self.dest_fd != self._saved_fd2:
                os.close(self.dest_fd)
            os.close(self._saved_fd2)
        self._saved_fd2 = None

    # -- the drain thread -------------------------------------------------
    def _drain(self) -> None:
        r = self._r
        assert r is not None  # set by install() before the thread starts
        buf = b""
        while True:
            ready, _, _ = select.select([r], [], [], 1.0)
            if ready:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                if len(buf) > MAX_LINE_BYTES:
                    lines.append(buf)
                    buf = b""
                for raw in lines:
                    self.handle(raw.decode("utf-8", "replace"))
            self._report_suppressed()
        if buf:
            self.handle(buf.decode("utf-8", "replace"))
        self._report_suppressed(force=True)
        os.close(r)

    def handle(self, line: str) -> None:
        if not line.strip():
            return
        if not line.startswith(("nbdkit: ", "zramd[")) and not re.match(r"\S+ zramd\[", line):
            # a continuation (a traceback's body): follows its head line
            if self._continuing:
                self._emit(self._last_level, line)
            return
        level, message = classify(line)
        if level in ("WARNING", "ERROR"):
            key = rate_key(level, message)
            message = short_request_error(message)
            self._continuing, closed = self.limiter.admit(key, message)
            if closed:
                self._emit_suppressed(*closed)
            if not self._continuing:
                return
        else:
            self._continuing = True
        self._last_level = level
        self._emit(level, message)

    def _report_suppressed(self, force: bool = False) -> None:
        for count, sample in self.limiter.expired(force):
            self._emit_suppressed(count, sample)
        dropped = dropped_lines - self._dropped_reported
        if dropped:
            self._dropped_reported += dropped
            self._emit("WARNING", f"dropped {dropped} log lines: the log could not keep up")

    def _emit_suppressed(self, count: int, sample: str) -> None:
        self._emit(
            "WARNING",
            f"suppressed {count} similar messages in {self.limiter.interval_s:.0f}s: {sample}",
        )

    def _emit(self, level: str, message: str) -> None:
        line = format_line(level, message, self.pid, self.timestamps)
        data = line.encode("utf-8", "replace")[: MAX_LINE_BYTES - 1] + b"\n"
        if self.dest_fd is None:  # not installed
            return
        try:
            os.write(self.dest_fd, data)  # may block: only this thread waits
        except OSError:
            pass


class _LineWriter:
    """``sys.stderr`` inside nbdkit once the filter is installed: whole
    lines to fd 2, dropped (never waited for) when the pipe is full."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self):
        self._buf = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self._buf += text
            *lines, self._buf = self._buf.split("\n")
        for line in lines:
            _write_fd2(line)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            rest, self._buf = self._buf, ""
        if rest:
            _write_fd2(rest)

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return 2


# Our own lines dropped on a full pipe (a racy count: a report, not a
# ledger); nbdkit's own dropped lines cannot be counted.
dropped_lines = 0


def _write_fd2(line: str) -> None:
    global dropped_lines
    data = line.encode("utf-8", "replace")[: MAX_LINE_BYTES - 1] + b"\n"
    try:
        os.write(2, data)
    except OSError:
        dropped_lines += 1  # a full pipe: the line is dropped, the caller never waits


def enable_stack_dumps(fd: int, signum: int = signal.SIGUSR1) -> None:
    """On ``signum`` (``kill -USR1`` of an nbdkit process), write every
    Python thread's stack straight to ``fd``, the log destination: not
    through the filter's pipe, which would drop most of a long dump.  For a
    server that looks stuck; it keeps serving."""
    faulthandler.register(signum, file=fd, all_threads=True, chain=False)


def log(level: str, message: str) -> None:
    """One line from inside nbdkit (or any process): to fd 2, never waiting."""
    _write_fd2(format_line(level, message))


# -- one-line exceptions --------------------------------------------------

_original_format_exception = traceback.format_exception


def one_line(exc: BaseException) -> str | None:
    """The one line for an expected exception, or None for a bug."""
    from .settings import ConfigError

    if isinstance(exc, ConfigError):
        return f"{exc}"
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        return f"{name}: {exc.strerror or os.strerror(exc.errno)}"
    return None


def _format_exception(exc, value=None, tb=None, *args, **kwargs):
    obj = value if isinstance(value, BaseException) else exc
    if isinstance(obj, BaseException):
        line = one_line(obj)
        if line is not None:
            return [line]
    if value is None and tb is None:
        return _original_format_exception(exc, *args, **kwargs)
    return _original_format_exception(exc, value, tb, *args, **kwargs)


def install_exception_format() -> None:
    """Make ``traceback.format_exception`` (which nbdkit's Python plugin
    calls for every exception a callback raises) print expected errors as
    one line.  For the nbdkit process only."""
    traceback.format_exception = _format_exception


# -- the wrapper ------------------------------------------------------------


class _Formatter(logging.Formatter):
    def __init__(self, timestamps: bool):
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            exc = record.exc_info[1]
            short = one_line(exc) if exc is not None else None
            message += ": " + (short or "".join(_original_format_exception(*record.exc_info)))
        level = record.levelname if record.levelname in LEVELS else "ERROR"
        return format_line(level, message, record.process, self.timestamps)


def configure_wrapper(log_file: str | None, verbose: bool = False) -> None:
    """The wrapper's :mod:`logging` set-up: one formatted line per record,
    to ``log_file`` (appended, owner-only) or stderr."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if log_file:
        stream = os.fdopen(open_log_file(log_file), "a", buffering=1, encoding="utf-8")
        handler = logging.StreamHandler(stream)
        handler.setFormatter(_Formatter(timestamps=True))
    else:  # a timestamp only where nothing else adds one (a file, not the journal)
        try:
            to_file = stat.S_ISREG(os.fstat(sys.stderr.fileno()).st_mode)
        except (OSError, ValueError):
            to_file = False
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Formatter(timestamps=to_file))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


class _Fd2Handler(logging.Handler):
    """Records as one line each to fd 2, never waiting (inside nbdkit)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _write_fd2(self.format(record))
        except Exception:
            pass


def configure_plugin(verbose: bool = False) -> None:
    """:mod:`logging` inside nbdkit: one line per record through fd 2 (the
    filter, once installed)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = _Fd2Handler()
    handler.setFormatter(_Formatter(timestamps=False))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)

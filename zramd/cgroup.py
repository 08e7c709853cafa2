"""The memory cgroup a process runs in: its limit and its OOM-kill count.

A server whose cgroup limits memory dies by SIGKILL, all stored pages lost,
when the device grows past the limit; with ``mem_limit`` below it a write
fails with ENOSPC instead (docs/design.md#memory-cgroups).  This module only
reads files; every function takes the file system root (``root``, "/" on a
real machine) so that the unit tests build both layouts from plain files.

- cgroup v1: ``/proc/PID/cgroup`` has a ``N:memory:/PATH`` line; the
  directory is where the ``memory`` hierarchy is mounted (from
  ``/proc/PID/mountinfo``: mount point and mount root) plus ``PATH``
  relative to the mount root.  Limit ``memory.limit_in_bytes`` (a huge
  number: none), kills the ``oom_kill`` line of ``memory.oom_control``.
- cgroup v2: the ``0::/PATH`` line and the ``cgroup2`` mount.  Limit
  ``memory.max`` (``max``: none), kills the ``oom_kill`` line of
  ``memory.events``.
  When both exist (a hybrid set-up), the v1 ``memory`` controller wins:
  v2 then has no ``memory.max``.

The effective limit is the smallest over the cgroup and its ancestors up
to the mount point (a parent's limit binds its children).  Each cgroup
file is read once per call; nothing is cached, no state, no locking.
"""

from __future__ import annotations

import dataclasses
import errno
import os

# cgroup v1 writes "no limit" as the largest page-aligned signed 64-bit
# number; anything from 2**62 up is treated as none.
NO_LIMIT_BYTES = 1 << 62


@dataclasses.dataclass(frozen=True)
class MemoryCgroup:
    """One memory cgroup: its directory and its version (1 or 2)."""

    path: str
    version: int

    def limit_bytes(self) -> int | None:
        """The smallest memory limit of this cgroup and its ancestors (up to
        the mount point), or None when none limits memory."""
        name = "memory.limit_in_bytes" if self.version == 1 else "memory.max"
        best: int | None = None
        path = self.path
        while True:
            value = _read_limit(os.path.join(path, name))
            if value is not None and (best is None or value < best):
                best = value
            parent = os.path.dirname(path)
            if parent == path or not os.path.exists(os.path.join(parent, name)):
                return best
            path = parent

    def oom_kills(self) -> int | None:
        """How many processes the kernel's OOM killer has killed in this
        cgroup, or None when the kernel does not say."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            with open(os.path.join(self.path, name)) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            return None
        return None


def _read_limit(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 0 < value < NO_LIMIT_BYTES else None


def memory_cgroup(pid: int | str = "self", root: str = "/") -> MemoryCgroup | None:
    """The memory cgroup of process ``pid``, or None (no memory controller
    mounted, or its files cannot be read)."""
    proc = os.path.join(root, "proc", str(pid))
    try:
        with open(os.path.join(proc, "cgroup")) as f:
            lines = f.read().splitlines()
        with open(os.path.join(proc, "mountinfo")) as f:
            mounts = [parse_mountinfo_line(line) for line in f]
    except OSError:
        return None
    v1 = v2 = None
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if "memory" in controllers.split(","):
            v1 = path
        elif line.startswith("0::"):
            v2 = path
    for version, cgroup_path in ((1, v1), (2, v2)):
        if cgroup_path is None:
            continue
        for mount in mounts:
            if mount is None or not _is_memory_mount(mount, version):
                continue
            mount_root, mount_point = mount[0], mount[1]
            relative = os.path.relpath(cgroup_path, mount_root)
            if relative.startswith(".."):
                continue  # this mount does not show our cgroup
            path = os.path.normpath(os.path.join(root, mount_point.lstrip("/"), relative))
            if version == 2 and not os.path.exists(os.path.join(path, "memory.max")):
                continue  # no memory controller in v2 (hybrid, or not enabled)
            return MemoryCgroup(path, version)
    return None


def _is_memory_mount(mount: tuple[str, str, str, list[str]], version: int) -> bool:
    _, _, fstype, options = mount
    if version == 1:
        return fstype == "cgroup" and "memory" in options
    return fstype == "cgroup2"


def parse_mountinfo_line(line: str) -> tuple[str, str, str, list[str]] | None:
    """One /proc/PID/mountinfo line -> (mount root, mount point, fs type,
    super options), or None for a line that is not one."""
    fields = line.split()
    try:
        sep = fields.index("-")
        root, point = fields[3], fields[4]
        fstype, super_options = fields[sep + 1], fields[sep + 3]
    except (ValueError, IndexError):
        return None
    return _unescape(root), _unescape(point), fstype, super_options.split(",")


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def oom_kill_in_kernel_log(pid: int, lines) -> bool:
    """Whether the kernel log ``lines`` say the OOM killer killed ``pid``
    ("Out of memory: Killed process PID (nbdkit) ..." or "Memory cgroup out
    of memory: Killed process PID ...")."""
    needle = f"Killed process {pid} ("
    return any("out of memory" in line.lower() and needle in line for line in lines)


def kernel_log_lines(path: str = "/dev/kmsg", max_records: int = 100_000) -> list[str]:
    """The records the kernel log still holds (empty when it cannot be read:
    no permission, no /dev/kmsg in a container)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return []
    lines = []
    try:
        for _ in range(max_records):
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError as exc:  # EPIPE: a record was overwritten while reading
                if exc.errno == errno.EPIPE:
                    continue
                break
            if not record:
                break
            lines.append(record.decode(errors="replace").rstrip("\n"))
    finally:
        os.close(fd)
    return lines

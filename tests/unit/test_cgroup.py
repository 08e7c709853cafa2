"""zramd/cgroup.py over plain files laid out as v1 and v2 machines."""

import os

from zramd import cgroup
from zramd.server import memory_advice
from zramd.settings import Settings


def write(root, rel, text):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def test_v1(tmp_path):
    root = str(tmp_path)
    write(root, "proc/7/cgroup", "9:name=systemd:/\n4:memory:/a/b\n0::/\n")
    write(root, "proc/7/mountinfo",
          "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
          "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n")
    write(root, "sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n")
    write(root, "sys/fs/cgroup/memory/a/memory.limit_in_bytes", "157286400\n")
    write(root, "sys/fs/cgroup/memory/a/b/memory.limit_in_bytes", "9223372036854771712\n")
    write(root, "sys/fs/cgroup/memory/a/b/memory.oom_control",
          "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    cg = cgroup.memory_cgroup(7, root)
    assert cg.version == 1 and cg.path.endswith("memory/a/b")
    assert cg.limit_bytes() == 150 << 20  # the parent's limit binds
    assert cg.oom_kills() == 3


def test_v2(tmp_path):
    root = str(tmp_path)
    write(root, "proc/self/cgroup", "0::/svc\n")
    write(root, "proc/self/mountinfo", "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
    write(root, "sys/fs/cgroup/svc/memory.max", "max\n")
    write(root, "sys/fs/cgroup/svc/memory.events", "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n")
    cg = cgroup.memory_cgroup(root=root)
    assert cg.version == 2 and cg.limit_bytes() is None and cg.oom_kills() == 1
    write(root, "sys/fs/cgroup/svc/memory.max", "104857600\n")
    assert cg.limit_bytes() == 100 << 20


def test_none(tmp_path):
    assert cgroup.memory_cgroup(root=str(tmp_path)) is None


def test_kernel_log():
    lines = ["6,1,2,-;Memory cgroup out of memory: Killed process 42 (nbdkit) total-vm:1kB"]
    assert cgroup.oom_kill_in_kernel_log(42, lines)
    assert not cgroup.oom_kill_in_kernel_log(4, lines)


def test_memory_advice():
    s = Settings(size_bytes=512 << 20).with_defaults().validate()
    limit, warning = memory_advice(s, False, 150 << 20, 24 << 30)
    assert 0 < limit < 150 << 20 and "using mem_limit" in warning
    assert memory_advice(s, False, None, 24 << 30) == (0, None)  # fits in RAM
    limit, warning = memory_advice(s, True, 150 << 20, 24 << 30)  # given: kept
    assert limit == 0 and "OOM killer" in warning

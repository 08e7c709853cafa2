"""The shipped server units started for real, under systemd as PID 1.

A root of the host's Debian release (tools/systemd-root.sh, made once and
cached in /var/cache/zramd-systemd: the venv bound in runs the host's
Python) is booted with ``systemd-nspawn --boot`` on a
throw-away overlay (``--volatile=overlay``: the cached root is never
written). The checkout and its venv are bound in read-only at the same
paths, ``make install`` puts the units and the ``zramd`` command in place
inside, and every command runs in the container's namespaces (nsenter),
talking to its systemd. Systemd 252 (Debian 12) and 257 (Debian 13) boot
this way on a cgroup v1 host too.

Only the server units start here (zramd.service, zramd@NAME.service). The
swap units (zramd-swap.service, zramd-swap@.service) need the kernel's nbd
module, which a container cannot load and the test machine lacks: they are
checked with systemd-analyze verify (tests/e2e/test_units.py), and the swap
itself runs in the VM test (tests/vm)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MACHINE_ROOT = Path(os.environ.get("ZRAMD_SYSTEMD_ROOT", "/var/cache/zramd-systemd"))
VENV = Path(sys.prefix)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (debootstrap, systemd-nspawn)"),
    pytest.mark.skipif(not shutil.which("systemd-nspawn"),
                       reason="systemd-nspawn not installed (Debian: systemd-container)"),
]


class Machine:
    """A booted container: run() executes a command inside it."""

    def __init__(self, leader_pid: int):
        self.leader_pid = leader_pid

    def command(self, *argv: str) -> list[str]:
        """argv run inside: all the container's namespaces, and its root and
        working directory too (-r -w). Entering the mount namespace alone
        leaves nsenter 2.41 (Debian 13) under systemd-nspawn 257 in the
        image's on-disk root, not the container's overlay, where no systemd
        answers on /run/systemd."""
        return ["nsenter", "-t", str(self.leader_pid), "-a", "-r", "-w", "--", *argv]

    def run(self, *argv: str, stdin: str | None = None, timeout: float = 60):
        return subprocess.run(self.command(*argv),
                              input=stdin, capture_output=True, text=True, timeout=timeout)

    def ok(self, *argv: str, stdin: str | None = None, timeout: float = 60) -> str:
        done = self.run(*argv, stdin=stdin, timeout=timeout)
        assert done.returncode == 0, (argv, done.stdout, done.stderr)
        return done.stdout

    def write(self, path: str, text: str) -> None:
        self.ok("sh", "-c", f"mkdir -p \"$(dirname '{path}')\" && cat > '{path}'", stdin=text)

    def state(self, unit: str) -> str:
        return self.run("systemctl", "show", "-P", "ActiveState", unit).stdout.strip()

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "--no-pager", "-o", "cat", "-u", unit).stdout


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.fixture(scope="module")
def machine():
    made = subprocess.run([str(ROOT / "tools" / "systemd-root.sh"), str(MACHINE_ROOT)],
                          capture_output=True, text=True, timeout=1800)
    assert made.returncode == 0, made.stderr[-2000:]
    binds = [f"--bind-ro={ROOT}"]
    if not VENV.is_relative_to(ROOT):
        binds.append(f"--bind-ro={VENV}")
    # No systemd on the host: no scope to allocate (--keep-unit) and no
    # machined to register with (--register=no).
    nspawn = subprocess.Popen(
        ["systemd-nspawn", "--quiet", "--boot", "--register=no", "--keep-unit",
         "--volatile=overlay", "-D", str(MACHINE_ROOT), "-M", f"zramd-test-{os.getpid()}",
         *binds],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        box = None
        while time.monotonic() < deadline and nspawn.poll() is None:
            leaders = children(nspawn.pid)
            if leaders:
                box = Machine(leaders[0])
                state = box.run("systemctl", "is-system-running").stdout.strip()
                if state in ("running", "degraded"):
                    break
            time.sleep(0.5)
        else:
            out = nspawn.stdout.read() if nspawn.poll() is not None else ""
            pytest.fail(f"the container did not boot: {out[-2000:]}")
        assert box is not None
        # `make install` inside: the host's `make setup` made the venv already
        box.ok("make", "-s", "-o", "setup", "-C", str(ROOT), "install", f"VENV={VENV}")
        yield box
    finally:
        nspawn.send_signal(signal.SIGTERM)  # nspawn powers the container off
        try:
            nspawn.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            nspawn.kill()
            nspawn.communicate()


def wait_for(check, what: str, timeout_s: float = 30):
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def uri(socket: str) -> str:
    return f"nbd+unix:///?socket={socket}"


def test_installed_units_are_the_shipped_ones(machine):
    for unit in sorted(os.listdir(ROOT / "contrib" / "systemd")):
        shipped = (ROOT / "contrib" / "systemd" / unit).read_text()
        assert machine.ok("cat", f"/etc/systemd/system/{unit}") == shipped, unit


def test_zramd_service_starts_serves_refuses_a_stop_in_use_then_stops(machine):
    machine.write("/etc/zramd.toml", 'socket = "/run/zramd.sock"\nsize = "64M"\n')
    # Type=notify: start returns only once zramd sent READY=1
    machine.ok("systemctl", "start", "zramd.service", timeout=120)
    assert machine.state("zramd.service") == "active"
    assert machine.ok("nbdinfo", "--size", uri("/run/zramd.sock")).strip() == str(64 << 20)

    # A client connected with pages stored: the stop is refused, the
    # device keeps serving and keeps the pages (KillMode=mixed: SIGTERM
    # reaches only the zramd wrapper, which refuses; nbdkit is not signalled).
    holder = subprocess.Popen(
        machine.command("nbdsh", "-u", uri("/run/zramd.sock"), "-c",
                        "import sys\n"
                        "h.pwrite(b'\\x5a' * 65536, 4096)\n"
                        "print('written', flush=True)\n"
                        "sys.stdin.readline()\n"
                        "assert h.pread(65536, 4096) == b'\\x5a' * 65536\n"
                        "print('intact', flush=True)\n"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "written", holder.stderr
        machine.ok("systemctl", "stop", "--no-block", "zramd.service")
        wait_for(lambda: "not stopping: in use" in machine.journal("zramd.service"),
                 "zramd did not log that it refuses the stop")
        time.sleep(6)  # past the 5 s in which a second signal would force it
        assert machine.state("zramd.service") == "deactivating"
        assert machine.ok("nbdinfo", "--size", uri("/run/zramd.sock")).strip() == str(64 << 20)
        out, err = holder.communicate("\n", timeout=60)
        assert holder.returncode == 0 and "intact" in out, err
    finally:
        if holder.poll() is None:
            holder.kill()
    # The client gone, systemd's pending stop is still waiting for zramd:
    # one more SIGTERM (what a later `systemctl stop` at shutdown sends
    # after the timeout) now stops it cleanly.
    machine.ok("systemctl", "kill", "--kill-who=main", "-s", "SIGTERM", "zramd.service")
    wait_for(lambda: machine.state("zramd.service") in ("inactive", "failed"),
             "zramd.service did not stop once idle")
    assert machine.state("zramd.service") == "inactive", machine.journal("zramd.service")

    # Idle from the start: a stop is clean at once.
    machine.ok("systemctl", "start", "zramd.service", timeout=120)
    machine.ok("nbdinfo", "--size", uri("/run/zramd.sock"))
    machine.ok("systemctl", "stop", "zramd.service", timeout=60)
    assert machine.state("zramd.service") == "inactive", machine.journal("zramd.service")
    assert machine.run("test", "-e", "/run/zramd.sock").returncode != 0


def test_zramd_template_serves_its_own_config(machine):
    machine.write("/etc/zramd/fast.toml", 'socket = "/run/zramd-fast.sock"\nsize = "8M"\n')
    machine.ok("systemctl", "start", "zramd@fast.service", timeout=120)
    assert machine.state("zramd@fast.service") == "active"
    assert machine.ok("nbdinfo", "--size", uri("/run/zramd-fast.sock")).strip() == str(8 << 20)
    machine.ok("nbdsh", "-u", uri("/run/zramd-fast.sock"), "-c",
               "h.pwrite(b'z' * 4096, 0); assert h.pread(4096, 0) == b'z' * 4096")
    machine.ok("systemctl", "stop", "zramd@fast.service", timeout=60)
    assert machine.state("zramd@fast.service") == "inactive"


def test_a_bad_config_fails_the_start_with_one_line(machine):
    machine.write("/etc/zramd/bad.toml", 'socket = "/run/zramd-bad.sock"\nsize = "lots"\n')
    assert machine.run("systemctl", "start", "zramd@bad.service", timeout=120).returncode != 0
    assert machine.state("zramd@bad.service") == "failed"
    assert "Traceback" not in machine.journal("zramd@bad.service")


def test_swap_units_pass_one_dollar_to_the_shell(machine):
    # The swap units cannot start here (no nbd module), so their attach
    # line runs in a unit of its own with nbd-client's exec replaced by
    # echo: systemd must hand `$$swap` to sh as `$swap`, and sh must add
    # -swap exactly when this nbd-client's --help lists it.
    lists = "-swap" in machine.run("/sbin/nbd-client", "--help").stdout + \
        machine.run("/sbin/nbd-client", "--help").stderr
    for unit, dev in (("zramd-swap.service", "/dev/nbd0"), ("zramd-swap@.service", "/dev/nbd%i")):
        text = (ROOT / "contrib" / "systemd" / unit).read_text()
        [attach] = [line for line in text.splitlines()
                    if line.startswith("ExecStart=") and "nbd-client" in line]
        probe = attach.replace("exec /sbin/nbd-client", "exec echo /sbin/nbd-client")
        name = "attach-probe@0.service"
        machine.write(f"/etc/systemd/system/{name.replace('@0', '@')}",
                      f"[Service]\nType=oneshot\n{probe}\n")
        machine.ok("systemctl", "daemon-reload")
        machine.ok("systemctl", "start", name)
        said = [line for line in machine.journal(name).splitlines()
                if line.startswith("/sbin/nbd-client")][-1]
        want = f"/sbin/nbd-client -unix /run/zramd.sock{'.0' if '@' in unit else ''} " \
               f"{dev.replace('%i', '0')}{' -swap' if lists else ''} -b 4096"
        assert said == want, (unit, said)

"""The guest: built by vm/build-guest.sh into vm/cache/ (Debian's kernel, a
busybox initramfs whose /init is vm/guest-init.sh), booted by qemu under TCG
with one vCPU and the scenario's parameters on the kernel command line.

Two ways for the guest to reach the server's Unix socket:
  "vda"  qemu's own NBD client, a virtio disk in the guest
  "nbd"  the guest kernel's nbd driver, through qemu's user-mode network
         with restrict=on and one guestfwd rule that qemu connects to the
         socket itself: the guest can reach nothing else
  "zram" no server: the guest's own zram

Striped (``zramd serve --instances N``): N sockets, N drives or N guestfwd
rules on consecutive ports, one guest swap device each, at equal priority.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

VM_DIR = Path(__file__).resolve().parent
ROOT = VM_DIR.parent
CACHE = VM_DIR / "cache"
LOGS = CACHE / "logs"
GUEST_FWD_ADDR = "10.0.2.100"  # exists only inside qemu's user-mode network
GUEST_FWD_PORT = 10809


def qemu_binary() -> str | None:
    return shutil.which("qemu-system-x86_64")


def build_guest(force: bool = False) -> None:
    """Runs vm/build-guest.sh (idempotent; fast when the cache is current)."""
    cmd = ["bash", str(VM_DIR / "build-guest.sh")] + (["--force"] if force else [])
    subprocess.run(cmd, check=True)


DISCARD_POLICIES = ("both", "once", "pages", "none")  # vm/swapon-prio.c


def kernel_append(
    dev: str,
    hog_mib: int,
    passes: int,
    corrupt_page: int,
    ndev: int = 1,
    discard: str = "both",
    zram_mib: int | None = None,
    page_cluster: int | None = None,
) -> str:
    """The kernel command line: console, and the scenario for guest-init.sh
    (``discard``: the swapon discard policy; ``zram_mib``: dev=zram's
    disksize, guest-init.sh's default when None; ``page_cluster``:
    vm.page-cluster, the kernel's default when None)."""
    if discard not in DISCARD_POLICIES:
        raise ValueError(f"discard policy {discard!r}: one of {', '.join(DISCARD_POLICIES)}")
    return (
        f"console=ttyS0 loglevel=4 panic=-1 mitigations=off "
        f"zramd.dev={dev} zramd.hog_mib={hog_mib} zramd.passes={passes} "
        f"zramd.corrupt={corrupt_page} zramd.ndev={ndev} zramd.discard={discard}"
        + (f" zramd.zram_mib={zram_mib}" if zram_mib is not None else "")
        + (f" zramd.page_cluster={page_cluster}" if page_cluster is not None else "")
    )


def size_mib(size: str) -> int:
    """A device size as zramd's --size takes it ("1G", "256M", "512K" or
    bytes) in MiB, rounded down."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = size.strip().upper().removesuffix("B").removesuffix("I")
    scale = units.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale) >> 20


def qemu_command(
    dev: str, sock: Path | list[Path] | None, console: Path, mem_mib: int, append: str
) -> list[str]:
    """qemu's command line; ``sock`` is the server's socket, or a list of
    them (striped instances: one guest device each, in order)."""
    socks = sock if isinstance(sock, list) else [sock]
    cmd = [
        qemu_binary() or "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-m",
        f"{mem_mib}M",
        "-smp",
        "1",
        "-nodefaults",
        "-display",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
        "-serial",
        f"file:{console}",
        "-kernel",
        str(CACHE / "vmlinuz"),
        "-initrd",
        str(CACHE / "initramfs.cpio.gz"),
        "-append",
        append,
    ]
    if dev == "vda":
        # Path 1: qemu's own NBD client, a virtio disk in the guest. discard=unmap
        # passes the guest's discards on as NBD trims.
        for i, path in enumerate(socks):  # /dev/vda, /dev/vdb, ...
            cmd += [
                "-drive",
                f"driver=nbd,server.type=unix,server.path={path},if=none,id=d{i},discard=unmap",
                "-device",
                f"virtio-blk-pci,drive=d{i}",
            ]
    elif dev == "nbd":
        # Path 2: the guest's nbd driver. restrict=on cuts the guest off from
        # everything but the guestfwd rules, which qemu itself connects to the
        # sockets: port GUEST_FWD_PORT + i leads to socket i (/dev/nbdI).
        fwds = ",".join(
            f"guestfwd=tcp:{GUEST_FWD_ADDR}:{GUEST_FWD_PORT + i}-unix:{path}"
            for i, path in enumerate(socks)
        )
        cmd += [
            "-netdev",
            f"user,id=n0,restrict=on,{fwds}",
            "-device",
            "virtio-net-pci,netdev=n0",
        ]
    return cmd


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path}: missing)"
    return "\n".join(text.splitlines()[-lines:])

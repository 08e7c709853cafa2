"""A real Linux kernel swaps onto zramd, in a qemu guest.

Each test boots the guest that vm/build-guest.sh builds (Debian's kernel
under TCG, a busybox initramfs) and lets vm/run.py drive one scenario:
mkswap, `swapon --discard`, a hog that pushes more than twice the guest's
RAM through swap and verifies every byte on the way back, swapoff, a
blkdiscard teardown. vm/run.py then checks zramd's side: pages stored and
read, the compression ratio, memory given back by the discards, and its
stored pages against the guest's swap in use at the peak (vm/held.py).

Two ways in, one test each:
  zramd-virtio  qemu's own NBD client, a virtio disk in the guest
  zramd-nbd     the guest kernel's nbd driver (nbd-client -swap -b 4096),
                reaching zramd's Unix socket only through qemu's user-mode
                forwarding (restrict=on)
and both again striped: `zramd serve --instances 2`, two guest swap
devices at equal priority (striped-virtio: two virtio disks; striped-nbd:
two nbd devices on two forwarded ports); each instance must receive a fair
share of the pages (docs/design.md#scaling-past-one-core).

About 20 s and 45 s under TCG on two cores. Skipped only when qemu cannot
run at all; a guest that cannot be built is an error. `make vm-test` runs the
same scenarios with the reference targets (nbdkit memory, the guest's zram).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_vm_run():
    spec = importlib.util.spec_from_file_location("zramd_vm_run", ROOT / "vm" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


vm = _load_vm_run()

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _qemu_cannot_run() -> str | None:
    """Why qemu cannot run here at all, or None."""
    qemu = vm.qemu_binary()
    if qemu is None:
        return "qemu-system-x86_64 is not installed and vm/build-guest.sh could not install it"
    try:
        p = subprocess.run([qemu, "-accel", "help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{qemu} does not run: {e}"
    if p.returncode != 0 or "tcg" not in p.stdout:
        return f"{qemu} has no TCG accelerator: {(p.stdout + p.stderr).strip()[-200:]}"
    return None


@pytest.fixture(scope="module")
def guest():
    """Builds (or finds cached) the guest; skips only if qemu cannot run."""
    try:
        vm.build_guest()
    except subprocess.CalledProcessError:
        reason = _qemu_cannot_run()
        if reason:
            pytest.skip(reason)
        raise
    reason = _qemu_cannot_run()
    if reason:
        pytest.skip(reason)


def _explain(res) -> str:
    return ("\n".join(res.failures) + f"\n--- guest console tail ({res.console_log}):\n"
            + vm.tail(Path(res.console_log)))


@pytest.mark.parametrize("target", vm.ZRAMD_TARGETS)
def test_kernel_swaps_on_zramd(guest, target):
    ok, why = vm.zramd_available()
    assert ok, f"the zramd CLI does not work: {why}"
    res = vm.run_target(target)
    print("\n" + vm.report([res]))
    assert res.ok, _explain(res)

    # The guest: every byte came back, and enough went through swap.
    assert res.hog["ok"] == 1 and res.hog["bad_pages"] == 0
    ram_pages = res.mem_mib * 2**20 // vm.PAGE_BYTES
    assert res.pages_out >= 2 * ram_pages
    assert res.pages_in > 0
    # zramd: it stored compressed pages (some same-filled) and served reads.
    assert res.peak["orig_data_size"] > 0
    assert res.ratio >= vm.MIN_RATIO
    assert res.peak["same_pages"] > 0
    assert res.final.get("num_reads", 1) > 0
    assert res.final["failed_reads"] == 0 and res.final["failed_writes"] == 0
    # The kernel's discards gave back most of the memory by the end of
    # swapoff; the blkdiscard teardown gave back the rest.
    assert res.after_swapoff["orig_data_size"] < res.peak["orig_data_size"] * vm.AFTER_SWAPOFF_MAX_FRACTION
    assert res.after_swapoff["notify_free"] > res.peak["notify_free"]
    assert res.final["orig_data_size"] == 0
    most = vm.max_mem_left_after_teardown_bytes(res.final.get("mem_used_max", 0)) * max(
        1, res.instances)
    assert res.final["mem_used_total"] <= most
    # Stored pages against the guest's swap in use (vm/held.py), sampled
    # while the hog ran: zramd holds every slot the guest uses (bar a few
    # writes in flight), and its peak memory and RSS were read.
    h = res.held
    assert h is not None and h["pairs"] >= 3, res.held
    assert h["peak_swap_used_pages"] >= (res.hog_mib - res.mem_mib) * 2**20 // vm.PAGE_BYTES, h
    assert h["peak_stored_pages"] >= vm.MIN_STORED_OVER_SWAP_USED * h["peak_swap_used_pages"], h
    assert h["peak_stored_pages"] <= res.peak["orig_data_size"] // vm.PAGE_BYTES
    assert h["max_held_ratio"] is not None and h["max_held_ratio"] >= h["peak_held_ratio"] * 0.5
    mem = res.peak_memory
    assert mem["mem_used_max_bytes"] >= res.peak["mem_used_total"]
    assert mem["rss_max_bytes"] >= res.peak["compr_data_size"], mem
    if res.instances > 1:
        # Striped: one swap device per instance, all at one priority, and the
        # kernel's round-robin gave every instance a fair share of the pages.
        assert len(res.instance_pages) == res.instances == len(res.peak["per_instance"])
        assert sum(res.instance_pages) == res.peak["orig_data_size"] // vm.PAGE_BYTES
        for pages in res.instance_pages:
            assert pages >= vm.MIN_INSTANCE_SHARE * sum(res.instance_pages), res.instance_pages
        prios = {k: v for k, v in res.guest.items() if k.startswith("swap_prio_")}
        assert len(prios) == res.instances and len(set(prios.values())) == 1, prios
        for each in res.final["per_instance"]:
            assert each["num_writes"] > 0 and each["num_reads"] > 0


def test_corruption_is_detected(guest):
    """The scenario can fail: a hog that corrupts one page must be reported
    (the guest's own zram, a small hog: a few seconds)."""
    res = vm.run_target("guest-zram", hog_mib=48, passes=1, corrupt_page=7, quiet=True)
    assert not res.ok
    assert res.hog.get("bad_pages") == 1 and res.hog.get("ok") == 0, _explain(res)
    assert any("verification failed" in f for f in res.failures), res.failures


def test_kernel_swaps_on_zramd_with_the_cold_policy(guest):
    """The cold policy under a real kernel's swap (vm/run.py
    COLD_POLICY_ARGS): past the high watermark the coldest pages go to the
    backing file while the guest swaps, and every byte still comes back."""
    res = vm.run_target("zramd-cold-virtio")
    print("\n" + vm.report([res]))
    assert res.ok, _explain(res)
    assert res.hog["ok"] == 1 and res.hog["bad_pages"] == 0
    written_back = max(s.get("bd_count", 0) for s in res.samples)
    assert written_back > 0, "no page was written back"
    assert max(s.get("bd_reads", 0) for s in res.samples) > 0, "no page was read back"
    assert res.final["failed_reads"] == 0 and res.final["failed_writes"] == 0
    assert res.final["writeback_failed"] == 0
    assert res.final["orig_data_size"] == 0 and res.final["bd_count"] == 0
    # Written-back pages left RAM: the store stayed near its high watermark
    # (without writeback this workload peaks 1.6x above it; docs/swap.md).
    watermark = res.final["high_watermark"]
    assert watermark > 0
    assert res.peak_memory["mem_used_max_bytes"] <= 1.5 * watermark, res.peak_memory

"""The request mix (vm/run.py --request-mix, `make swap-mix`) with a real
guest: qemu's NBD client reaches zramd through nbdkit's stats filter, the
guest still swaps and verifies every byte, and what the filter counted
accounts for every page the guest swapped out and in.

About 30 s under TCG (the virtio path only; the nbd path is the same proxy
behind qemu's user-mode forwarding and takes twice as long).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from vm import mix  # noqa: E402


def _load_vm_run():
    spec = importlib.util.spec_from_file_location("zramd_vm_run_mix", ROOT / "vm" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


vm = _load_vm_run()

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
# The statsfile prints byte totals to 2 decimals of MiB or GiB: 0.01 MiB in
# 330 MiB, well under this.
BYTES_TOLERANCE = 0.001


def test_the_filter_counts_every_swapped_page(tmp_path):
    if vm.qemu_binary() is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    ok, why = mix.nbdkit_has_nbd_plugin()
    if not ok:
        pytest.skip(f"nbdkit's nbd plugin or stats filter missing: {why}")
    vm.build_guest()
    res = vm.run_target("zramd-virtio", request_mix=True, quiet=True)
    assert res.ok, "\n".join(res.failures)
    assert res.hog["ok"] == 1 and res.hog["bad_pages"] == 0
    cov = res.request_coverage
    page = vm.PAGE_BYTES
    # Every page swapped out was written through the proxy, every page
    # swapped in read through it (plus mkswap, swapon and swapoff's own).
    assert cov["write"]["bytes"] >= res.pages_out * page * (1 - BYTES_TOLERANCE)
    assert cov["read"]["bytes"] >= res.pages_in * page * (1 - BYTES_TOLERANCE)
    # The kernel's discards (swapon --discard, blkdiscard) came through as trims.
    assert cov["trim"]["requests"] > 0
    m = res.request_mix
    for op in ("read", "write"):
        assert sum(m[op].values()) == pytest.approx(1.0, abs=1e-9)
        assert all(int(k) % page == 0 for k in m[op])
        assert m["requests"][op] == cov[op]["requests"]
    # Swap-in readahead: most reads are 8 pages (page-cluster 3), none larger.
    assert max(int(k) for k in m["read"]) == 8 * page
    assert m["read"][str(8 * page)] > 0.5
    out = tmp_path / "swap_mix.json"
    assert vm.write_request_mix(out, [res])
    assert set(json.loads(out.read_text())["paths"]) == {"qemu"}

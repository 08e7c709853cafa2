"""fio through its nbd engine (libnbd), with data verification."""

import shutil

import pytest

from helpers import run_fio, stats

pytestmark = pytest.mark.skipif(not shutil.which("fio"), reason="fio not installed")


@pytest.mark.parametrize("algorithm", ["lz4", "zstd"])
def test_fio_randwrite_verify_crc32c(make_server, algorithm):
    with make_server(size="64M", algorithm=algorithm) as server:
        job = run_fio(server, "--rw=randwrite", "--bs=4k", "--size=32M", "--iodepth=16",
                      "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
                      "--buffer_compress_percentage=60", "--refill_buffers")
        assert job["write"]["io_bytes"] == 32 << 20
        assert job["read"]["io_bytes"] == 32 << 20  # the verify pass read it all back
        s = stats(server)
        assert s["orig_data_size"] == 32 << 20
        assert s["compr_data_size"] < s["orig_data_size"]
        assert s["failed_reads"] == s["failed_writes"] == 0


def test_fio_mixed_sizes_verify(make_server):
    """Mixed block sizes that straddle pages, with several jobs in flight."""
    with make_server(size="64M") as server:
        job = run_fio(server, "--rw=randwrite", "--bsrange=512-64k", "--blockalign=512",
                      "--size=16M", "--iodepth=8", "--verify=crc32c", "--do_verify=1",
                      "--verify_fatal=1", "--norandommap=0")
        assert job["write"]["io_bytes"] > 0

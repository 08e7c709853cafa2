"""Prometheus metrics from a running server under fio load: scraped over
real HTTP, parsed with prometheus_client's parser, checked against
`zramd stats --json` taken between two scrapes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from zramd import metrics
from zramd import scrape as scrape_module

ZRAMD = [sys.executable, "-m", "zramd.cli"]

pytestmark = pytest.mark.skipif(not shutil.which("fio"), reason="fio not installed")


def scrape(url: str) -> dict:
    """{metric family name: (type, {stat key: value})} for our one device."""
    with urllib.request.urlopen(url, timeout=30) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        return parse(reply.read().decode())


def parse(text: str) -> dict:
    out = {}
    for fam in text_string_to_metric_families(text):
        assert fam.documentation, fam.name
        values = {}
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            values[s.labels.get("device")] = s.value
        out[fam.name] = (fam.type, values)
    return out


def by_stat(scraped: dict, device: str) -> dict:
    """stat key -> (type, value), through the metrics table."""
    out = {}
    for key, (name, kind, _) in metrics.METRICS.items():
        fam = scraped.get(metrics.PREFIX + name)
        if fam is not None:
            assert fam[0] == kind, name
            out[key] = (kind, fam[1][device])
    return out


def test_metrics_under_fio_load(sockdir):
    sock = os.path.join(sockdir, "m.sock")
    proc = subprocess.Popen(ZRAMD + ["serve", "--socket", sock, "--size", "64M",
                                     "--metrics-address", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    fio = None
    try:
        banner = []
        for line in proc.stdout:
            banner.append(line)
            if "Stop with Ctrl-C" in line:
                break
        m = re.search(r"metrics +curl (http://127\.0\.0\.1:\d+/metrics)", "".join(banner))
        assert m, banner
        url = m.group(1)
        fio = subprocess.Popen(["fio", "--name=load", "--ioengine=nbd",
                                f"--uri=nbd+unix:///?socket={sock}", "--rw=randrw",
                                "--bs=4k", "--size=32M", "--iodepth=8", "--time_based",
                                "--runtime=30", "--buffer_compress_percentage=50",
                                "--refill_buffers"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               cwd=sockdir)
        # wait until the load is visible, then scrape, read --json, scrape
        # (a page is reused for scrape.CACHE_SECONDS: wait that long for a newer one)
        first = None
        for _ in range(200):
            first = by_stat(scrape(url), sock)
            if first["num_writes"][1] > 100:
                break
            time.sleep(0.1)
        assert first["num_writes"][1] > 100, "fio never got going"
        time.sleep(scrape_module.CACHE_SECONDS)
        js = json.loads(subprocess.run(ZRAMD + ["stats", "--socket", sock, "--json"],
                                       capture_output=True, text=True, check=True).stdout)
        time.sleep(scrape_module.CACHE_SECONDS)
        second = by_stat(scrape(url), sock)
        assert fio.poll() is None, "the load ended before the second scrape"
        assert second["num_writes"][1] > first["num_writes"][1]  # under load indeed
        for key, (kind, value) in second.items():
            before = first[key][1]
            if kind == metrics.COUNTER:
                assert before <= js[key] <= value, (key, before, js[key], value)
            else:  # a level: the --json value was the level at some moment in between
                assert isinstance(js[key], (int, float, bool)), key  # rates, ages: floats
        for key in ("mem_limit", "disksize", "pending_limit"):
            assert first[key][1] == js[key] == second[key][1]
        # every mm_stat / io_stat / bd_stat field is there
        from zramd.engine.store import BD_STAT_FIELDS, IO_STAT_FIELDS, MM_STAT_FIELDS
        for key in MM_STAT_FIELDS + IO_STAT_FIELDS + BD_STAT_FIELDS:
            assert key in second, key
        # the textfile collector's output: the same families, the same device label
        text = subprocess.run(ZRAMD + ["stats", "--socket", sock, "--format", "prometheus"],
                              capture_output=True, text=True, check=True).stdout
        textfile = parse(text)
        assert set(textfile) == set(scrape(url))
        assert textfile["zramd_up"][1] == {sock: 1.0}
        assert by_stat(textfile, sock)["disksize"][1] == 64 << 20
    finally:
        if fio is not None:  # SIGTERM: fio stops its job process too (SIGKILL would not)
            fio.terminate()
            fio.wait()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, proc.stderr.read()


def test_metrics_refuse_a_non_loopback_address(sockdir):
    result = subprocess.run(ZRAMD + ["serve", "--socket", os.path.join(sockdir, "x.sock"),
                                     "--metrics-address", "0.0.0.0:9"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "not loopback" in result.stderr and "--metrics-insecure-address" in result.stderr


def test_striped_instances_are_scraped_side_by_side(sockdir):
    """One endpoint, one `device` label per instance, each equal to that
    instance's own stats (no load: exactly)."""
    import nbd

    sock = os.path.join(sockdir, "i.sock")
    proc = subprocess.Popen(ZRAMD + ["serve", "--socket", sock, "--size", "32M",
                                     "--instances", "2", "--metrics-address", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = []
        for line in proc.stdout:
            banner.append(line)
            if "Stop with Ctrl-C" in line:
                break
        url = re.search(r"curl (http://\S+)", "".join(banner)).group(1)
        for i, pages in ((0, 3), (1, 7)):
            h = nbd.NBD()
            h.connect_unix(f"{sock}.{i}")
            h.pwrite(os.urandom(pages * 4096), 0)
            h.shutdown()
        scraped = scrape(url)
        assert scraped["zramd_up"][1] == {f"{sock}.0": 1.0, f"{sock}.1": 1.0}
        per = json.loads(subprocess.run(
            ZRAMD + ["stats", "--socket", sock, "--json", "--per-instance"],
            capture_output=True, text=True, check=True).stdout)["instances"]
        for inst in per:
            device = metrics.device_name(inst["control"])
            got = by_stat(scraped, device)
            for key, (_, value) in got.items():
                assert value == inst["stats"][key], (device, key)
        assert by_stat(scraped, f"{sock}.1")["num_writes"][1] == 1
        assert by_stat(scraped, f"{sock}.1")["orig_data_size"][1] == 7 * 4096
        text = subprocess.run(ZRAMD + ["stats", "--socket", sock, "--format", "prometheus"],
                              capture_output=True, text=True, check=True).stdout
        assert parse(text)["zramd_orig_data_size_bytes"][1] == \
            {f"{sock}.0": 3 * 4096.0, f"{sock}.1": 7 * 4096.0}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, proc.stderr.read()


def test_textfile_output_of_a_server_that_is_down_says_so(sockdir):
    sock = os.path.join(sockdir, "gone.sock")
    result = subprocess.run(ZRAMD + ["stats", "--socket", sock, "--format", "prometheus"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert parse(result.stdout)["zramd_up"][1] == {sock: 0.0}

"""The metrics table against the real stats, the exposition format, and the
metrics address rule."""

from __future__ import annotations

import pytest

from zramd import metrics
from zramd.engine.backing import BackingFile
from zramd.engine.codecs import make_codec
from zramd.settings import ConfigError, Settings
from zramd.engine.device import Device
from zramd.engine.store import PageStore
from zramd.engine.writeback import Writeback

PAGE = 4096

text_string_to_metric_families = pytest.importorskip(
    "prometheus_client.parser", reason="prometheus_client missing: run make setup"
).text_string_to_metric_families


def full_stats(tmp_path) -> dict:
    """Every stat a device can have: async workers, a backing file, writeback."""
    backing = BackingFile(str(tmp_path / "b.img"), 64 * PAGE)
    store = PageStore(64 * PAGE, make_codec("lz4"), 1 << 20, recomp_codec=make_codec("zstd"),
                      backing=backing)
    device = Device(store, "async", 1, 1 << 20, writeback=Writeback(store, backing, 1 << 20))
    device.start()
    try:
        device.write(b"x" * 2 * PAGE, 0, 0)
        device.drain()
        return device.stats()
    finally:
        device.stop()
        backing.close()


def test_every_numeric_stat_has_a_metric(tmp_path):
    stats = full_stats(tmp_path)
    missing = [k for k, v in stats.items()
               if isinstance(v, (int, float)) and k not in metrics.METRICS
               and k not in metrics.NOT_EXPORTED]
    assert not missing, f"add these stats to zramd/metrics.py METRICS: {missing}"
    texts = [k for k, v in stats.items() if isinstance(v, str) or v is None]
    for key in texts:
        assert key in metrics.INFO_LABELS or key in metrics.NOT_EXPORTED, key


def test_names_carry_units_and_types():
    names = [name for name, _, _ in metrics.METRICS.values()]
    assert len(set(names)) == len(names)
    for key, (name, kind, text) in metrics.METRICS.items():
        assert kind in (metrics.GAUGE, metrics.COUNTER)
        assert not name.endswith("_total"), "counters get _total from prometheus_client"
        assert key in name or key.replace("_size", "") in name, (key, name)
        assert text
        if key.endswith("_size") or key in ("mem_used_total", "mem_limit", "mem_used_max",
                                            "disksize"):
            assert name.endswith("_bytes"), name
    for key in ("mem_used_total", "orig_data_size", "bd_count", "pending_pages", "huge_pages"):
        assert metrics.METRICS[key][1] == metrics.GAUGE
    for key in ("failed_writes", "num_reads", "bd_writes", "notify_free", "huge_pages_since"):
        assert metrics.METRICS[key][1] == metrics.COUNTER


def test_exposition_parses_with_help_types_and_device_labels(tmp_path):
    stats = full_stats(tmp_path)
    text = metrics.exposition([("/run/a.sock", stats), ("/run/b.sock", None)])
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["zramd_failed_writes"].type == "counter"
    assert fams["zramd_mem_used_total_bytes"].type == "gauge"
    assert all(f.documentation for f in fams.values())
    up = {s.labels["device"]: s.value for s in fams["zramd_up"].samples}
    assert up == {"/run/a.sock": 1, "/run/b.sock": 0}
    orig = fams["zramd_orig_data_size_bytes"].samples
    assert [(s.labels, s.value) for s in orig] == \
        [({"device": "/run/a.sock"}, stats["orig_data_size"])]
    info = fams["zramd_device_info"].samples[0].labels
    assert info["comp_algorithm"] == "lz4" and info["compress_mode"] == "async"
    assert "zramd_num_writes_total" in text


@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:9100", ("127.0.0.1", 9100)),
    ("[::1]:9100", ("::1", 9100)),
    ("localhost:0", ("127.0.0.1", 0)),
    ("9711", ("127.0.0.1", 9711)),
])
def test_metrics_address_loopback(text, expected):
    assert metrics.parse_address(text) == expected


@pytest.mark.parametrize("text,error", [
    ("0.0.0.0:9100", "not loopback"),
    ("192.0.2.1:9100", "--metrics-insecure-address"),
    ("host9100", "HOST:PORT"),
    ("127.0.0.1:x", "must be a number"),
    ("127.0.0.1:70000", "0..65535"),
    ("example.com:1", "IP address"),
])
def test_metrics_address_errors(text, error):
    with pytest.raises(ConfigError, match=error):
        metrics.parse_address(text)


def test_remote_metrics_need_the_explicit_flag():
    assert metrics.parse_address("0.0.0.0:9100", allow_remote=True) == ("0.0.0.0", 9100)
    with pytest.raises(ConfigError, match="not loopback"):
        Settings(metrics_address="0.0.0.0:1").validate()
    Settings(metrics_address="0.0.0.0:1", metrics_insecure_address=True).validate()
    with pytest.raises(ConfigError, match="only with a metrics address"):
        Settings(metrics_insecure_address=True).validate()

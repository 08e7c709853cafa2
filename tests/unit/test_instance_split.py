"""Striped instances without nbdkit: how sizes are split, how instances are
named and found again, and how their stats add up."""


import pytest

from zramd.settings import ConfigError, Settings
from zramd.options import MAX_INSTANCES
from zramd.instances import (aggregate, discover, instance_control_path,
                             instance_settings, parse_instances, split_bytes)
from zramd.units import PAGE_SIZE


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "two", "", str(MAX_INSTANCES + 1), "1e3"])
def test_bad_instance_counts(text):
    with pytest.raises(ConfigError):
        parse_instances(text)


def test_good_instance_counts():
    assert parse_instances("1") == 1
    assert parse_instances(" 4 ") == 4
    assert parse_instances(str(MAX_INSTANCES)) == MAX_INSTANCES


@pytest.mark.parametrize("total,n", [(4096 * 10, 3), (4096 * 9, 3), (4096 * 2, 2),
                                     (1 << 30, 7), (4096 * 5 + 123, 4), (1, 1)])
def test_split_adds_up_in_whole_pages(total, n):
    parts = split_bytes(total, n)
    assert len(parts) == n and sum(parts) == total
    # every part but the first is whole pages; the first carries any sub-page tail
    assert all(p % PAGE_SIZE == 0 for p in parts[1:])
    pages = [p // PAGE_SIZE for p in parts]
    assert max(pages) - min(pages) <= 1
    # the remainder pages go to the first instances
    assert pages == sorted(pages, reverse=True)


def base(**kw):
    s = Settings(socket_path="/tmp/zt-x/z.sock", size_bytes=10 * PAGE_SIZE, **kw)
    return s.with_defaults()


def test_instance_settings_names_and_splits():
    s = base(mem_limit_bytes=5 * PAGE_SIZE + 10, backing_file="/tmp/zt-x/bf",
             high_watermark_bytes=4 * PAGE_SIZE, final_stats_path="/tmp/zt-x/f.json")
    parts = instance_settings(s, 3)
    assert [p.socket_path for p in parts] == [f"/tmp/zt-x/z.sock.{i}" for i in range(3)]
    assert [p.control_path for p in parts] == [f"/tmp/zt-x/z.sock.{i}.ctl" for i in range(3)]
    assert [p.size_bytes for p in parts] == [4 * PAGE_SIZE, 3 * PAGE_SIZE, 3 * PAGE_SIZE]
    assert [p.mem_limit_bytes for p in parts] == [2 * PAGE_SIZE + 10, 2 * PAGE_SIZE, PAGE_SIZE]
    assert sum(p.high_watermark_bytes for p in parts) == 4 * PAGE_SIZE
    assert [p.backing_file for p in parts] == [f"/tmp/zt-x/bf.{i}" for i in range(3)]
    assert [p.final_stats_path for p in parts] == [f"/tmp/zt-x/f.json.{i}" for i in range(3)]
    assert all(p.low_watermark_bytes == 0 for p in parts)  # 0: 3/4 of each high mark


def test_one_instance_is_unchanged():
    s = base()
    assert instance_settings(s, 1) == [s]


def test_no_mem_limit_stays_none():
    assert [p.mem_limit_bytes for p in instance_settings(base(), 2)] == [0, 0]


def test_ports_count_up():
    s = Settings(port=10809, size_bytes=4 * PAGE_SIZE).with_defaults()
    parts = instance_settings(s, 2)
    assert [p.port for p in parts] == [10809, 10810]
    assert len({p.control_path for p in parts}) == 2
    with pytest.raises(ConfigError, match="go past 65535"):
        instance_settings(Settings(port=65535, size_bytes=4 * PAGE_SIZE).with_defaults(), 2)


@pytest.mark.parametrize("kw,message", [
    (dict(size_bytes=PAGE_SIZE), "size 4K is too small for 2 instances"),
    (dict(size_bytes=4 * PAGE_SIZE, mem_limit_bytes=PAGE_SIZE), "mem_limit 4K is too small"),
])
def test_too_small_to_split(kw, message):
    s = Settings(socket_path="/tmp/zt-x/z.sock", **kw).with_defaults()
    with pytest.raises(ConfigError, match=message):
        instance_settings(s, 2)


def test_control_path_names():
    assert instance_control_path("/r/z.sock.ctl", 3) == "/r/z.sock.3.ctl"
    assert instance_control_path("/r/control", 3) == "/r/control.3"


def test_discover_finds_instances_in_order(tmp_path):
    for name in ["z.sock.10.ctl", "z.sock.2.ctl", "z.sock.0.ctl", "z.sock.x.ctl",
                 "zz.sock.1.ctl", "z.sock.1.ctlx"]:
        (tmp_path / name).write_text("")
    base_ctl = str(tmp_path / "z.sock.ctl")
    assert discover(base_ctl) == [(str(tmp_path / f"z.sock.{i}"), str(tmp_path / f"z.sock.{i}.ctl"))
                                  for i in (0, 2, 10)]
    (tmp_path / "z.sock.ctl").write_text("")
    assert discover(base_ctl)[0] == (str(tmp_path / "z.sock"), base_ctl)
    assert len(discover(base_ctl)) == 4
    assert discover(str(tmp_path / "none.ctl")) == []


def test_discover_escapes_glob_characters(tmp_path):
    odd = tmp_path / "a[1]"
    odd.mkdir()
    (odd / "z.sock.0.ctl").write_text("")
    assert discover(str(odd / "z.sock.ctl")) == [(str(odd / "z.sock.0"), str(odd / "z.sock.0.ctl"))]


def test_aggregate_sums_exactly():
    a = {"orig_data_size": 8192, "mem_limit": 4096, "comp_algorithm": "lz4",
         "backing_file": "/b.0", "swap": False, "ratio_like": 1.5}
    b = {"orig_data_size": 4096, "mem_limit": 4096, "comp_algorithm": "lz4",
         "backing_file": "/b.1", "swap": False, "ratio_like": 0.5}
    total = aggregate([a, b])
    assert total["orig_data_size"] == 12288
    assert total["mem_limit"] == 8192
    assert total["comp_algorithm"] == "lz4"
    assert total["backing_file"] == ["/b.0", "/b.1"]
    assert total["swap"] is False
    assert total["ratio_like"] == 2.0
    assert total["instances"] == 2


def test_aggregate_keeps_knobs_and_weighs_shares():
    """Striped stats are one device's: a knob held whole by every instance
    is not summed, a rate is weighted by what it is a share of, an age and a
    latency percentile are the largest instance's."""
    a = {"orig_data_size": 3 * PAGE_SIZE, "recompress_after": 60, "cold_target": 0.2,
         "promotion_rate_pct_min": 2.0, "cold_age_s": 90.0, "bd_blocks": 0,
         "bd_pack_fill_percent": 0, "remote_read_latency_p99_seconds": 0.004,
         "high_watermark": 4096}
    b = {"orig_data_size": PAGE_SIZE, "recompress_after": 60, "cold_target": 0.2,
         "promotion_rate_pct_min": 6.0, "cold_age_s": 120.0, "bd_blocks": 10,
         "bd_pack_fill_percent": 80, "remote_read_latency_p99_seconds": 0.009,
         "high_watermark": 4096}
    total = aggregate([a, b])
    assert total["recompress_after"] == 60 and total["cold_target"] == 0.2
    assert total["promotion_rate_pct_min"] == 3.0  # (2*3 + 6*1) / 4 pages
    assert total["cold_age_s"] == 120.0
    assert total["bd_pack_fill_percent"] == 80
    assert total["remote_read_latency_p99_seconds"] == 0.009
    assert total["high_watermark"] == 8192  # split in pages over the instances: summed
    assert aggregate([a, {**b, "recompress_after": 30}])["recompress_after"] == [60, 30]
    idle = aggregate([{**a, "orig_data_size": 0}, {**b, "orig_data_size": 0}])
    assert idle["promotion_rate_pct_min"] == 6.0  # no pages stored: the largest


def test_the_option_table_drives_the_split(monkeypatch):
    """A row's ``split`` alone decides how a field is shared out: give the
    log file a ``suffix`` split and its instances get ``.i`` logs."""
    import dataclasses

    from zramd import instances, options

    rows = tuple(dataclasses.replace(o, split="suffix") if o.name == "log-file" else o
                 for o in options.OPTIONS)
    s = Settings(size_bytes=4 * PAGE_SIZE, socket_path="/r/z.sock",
                 log_file="/r/z.log").with_defaults()
    assert [p.log_file for p in instance_settings(s, 2)] == ["/r/z.log"] * 2
    monkeypatch.setattr(instances, "OPTIONS", rows)
    assert [p.log_file for p in instance_settings(s, 2)] == ["/r/z.log.0", "/r/z.log.1"]


@pytest.mark.parametrize("kind", __import__("zramd.options").options.SPLITS)
def test_every_split_kind_has_a_splitter(kind):
    from zramd.instances import split_value
    from zramd.options import BY_NAME
    import dataclasses

    value = {"pages": 9 * PAGE_SIZE, "count": 7, "port": 10809}.get(kind, "/r/x.ctl")
    parts = split_value(dataclasses.replace(BY_NAME["size"], split=kind), value, 2)
    assert len(parts) == 2 and parts[0] != parts[1]


def test_an_unknown_split_kind_is_refused_when_the_row_is_made():
    from zramd.options import BY_NAME
    import dataclasses

    with pytest.raises(ValueError, match="split"):
        dataclasses.replace(BY_NAME["size"], split="halves")

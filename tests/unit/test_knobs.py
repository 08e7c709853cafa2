"""Runtime knobs come from the option table: ``zramd set``'s choices, its
help and its per-instance split, the control command ``set`` and its
checks.  A real control socket and a real device (no nbdkit)."""

from __future__ import annotations

import os
import re

import pytest

from zramd import cli, commands, options
from zramd.control import ControlError, ControlServer, call
from zramd.engine.backing import BackingFile
from zramd.engine.codecs import make_codec
from zramd.engine.device import Device
from zramd.engine.store import PageStore
from zramd.engine.writeback import Writeback
from zramd.options import BY_NAME, KNOBS, ROWS, Option, Runtime

PAGE = 4096
M = 1 << 20


@pytest.fixture
def device_control(sockdir, tmp_path):
    """A device with a backing file (so writeback knobs exist) behind a socket."""
    made = []

    def factory(backing: bool = True):
        store = PageStore(16 * M, make_codec("lz4"))
        bf = wb = None
        if backing:  # the policy thread is not started: knobs are only stored
            bf = BackingFile(str(tmp_path / f"b{len(made)}.img"), 16 * M)
            store.backing = bf
            wb = Writeback(store, bf)
        device = Device(store, writeback=wb)
        path = os.path.join(sockdir, f"k{len(made)}.ctl")
        srv = ControlServer(path, lambda request: commands.dispatch(device, request))
        srv.start()
        made.append((srv, bf))
        return device, path

    yield factory
    for srv, bf in made:
        srv.stop()
        if bf is not None:
            bf.close()


def test_set_choices_and_help_are_the_tables_knobs():
    parser = cli.build_parser()
    text = parser.format_help()
    assert "watermarks HIGH [LOW]" in cli.set_help()
    assert "mem_used_max 0" in cli.set_help()
    assert set(KNOBS) == {o.runtime.knob for o in ROWS if o.runtime}
    assert "set" in text
    for opt in options.OPTIONS:
        if opt.runtime:
            assert f"zramd set {opt.runtime.knob}" in opt.help_text()


def test_a_new_row_is_a_knob_with_help_choices_and_split(monkeypatch, capsys):
    """A throwaway runtime row: it shows up in `zramd set`'s choices and help,
    and its value is split over striped instances as its row says."""
    seen = []
    row = Option("test-pages", "test_pages", options.INT, None, "a test knob", serve=False,
                 runtime=Runtime("test_pages", lambda d, v: seen.append(v), metavar="N"),
                 split="count")
    monkeypatch.setattr(cli, "KNOBS", options.knobs(ROWS + (row,)))
    assert "test_pages N" in cli.set_help()
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["set", "bogus", "1"])
    assert re.search(r"\btest_pages\b'?\)", capsys.readouterr().err)  # a choice (3.13: no quotes)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["set", "--help"])
    assert "test_pages N: a test knob" in capsys.readouterr().out
    sent = []
    monkeypatch.setattr(cli, "_each", lambda args: [("a: ", "A"), ("b: ", "B")])
    monkeypatch.setattr(cli, "call", lambda path, cmd, **kw: sent.append((path, cmd, kw)))
    assert cli.main(["set", "test_pages", "5"]) == 0
    assert sent == [("A", "set", {"test_pages": 3}), ("B", "set", {"test_pages": 2})]


def test_set_splits_sizes_in_pages_over_instances(monkeypatch):
    sent = []
    monkeypatch.setattr(cli, "_each", lambda args: [("a: ", "A"), ("b: ", "B")])
    monkeypatch.setattr(cli, "call", lambda path, cmd, **kw: sent.append((path, cmd, kw)))
    assert cli.main(["set", "watermarks", "8M"]) == 0
    assert sent == [("A", "set", {"high_watermark": 4 * M}),
                    ("B", "set", {"high_watermark": 4 * M})]
    sent.clear()
    assert cli.main(["set", "mem_used_max", "0"]) == 0
    assert [kw for _, _, kw in sent] == [{"mem_used_max": 0}] * 2


@pytest.mark.parametrize("argv,message", [
    (["set", "mem_used_max", "5"], "mem_used_max can only be reset, with 0 (as in zram)"),
    (["set", "writeback_limit", "lots"], "writeback_limit must be a whole number"),
    (["set", "watermarks", "1M", "2M", "3M"], "set takes watermarks HIGH [LOW]"),
    (["set", "mem_limit", "huge"], "mem_limit not a size: 'huge'"),
])
def test_bad_set_values_are_one_line_before_any_call(argv, message, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_each", lambda args: [("", "A")])
    monkeypatch.setattr(cli, "call", lambda *a, **k: pytest.fail("called the server"))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_set_command_sets_knobs_together(device_control):
    device, path = device_control()
    result = call(path, "set", high_watermark="8M", low_watermark="6M", mem_limit="12M")
    assert (result["high_watermark"], result["low_watermark"]) == (8 * M, 6 * M)
    assert device.store.mem_limit == 12 * M
    result = call(path, "set", high_watermark="8M")  # the low one: its default, 3/4
    assert result["low_watermark"] == 6 * M
    call(path, "set", writeback_limit=10, writeback_limit_enable=True)
    assert (device.writeback.writeback_limit, device.writeback.writeback_limit_enable) == (10, True)
    device.store.write(os.urandom(PAGE), 0)
    call(path, "set", mem_used_max=0)
    assert device.store.mem_used_max == device.store.mem_used_total


@pytest.mark.parametrize("args,message", [
    ({}, "set needs one or more of"),
    ({"high_watermark": "4M", "low_watermark": "6M"}, "low watermark must not be above"),
    ({"low_watermark": "1M"}, "watermarks needs high_watermark"),
    ({"mem_limit": "12M", "high_watermark": "lots"}, "not a size"),
    ({"mem_limit": "12M", "high_watermark": -1}, "high_watermark must not be negative"),
    ({"mem_limit": "12M", "mem_used_max": 3}, "can only be reset"),
    ({"mem_limit": "12M", "writeback_limit": True}, "writeback_limit must be an int"),
    ({"writeback_limit": 10**40}, "writeback_limit must be 0.."),
    ({"mem_limit": "12M", "bogus": 1}, "does not take bogus"),
    ({"mem_limit": None}, "mem_limit needs a value"),
    ({"mem_limit": "1E"}, "at most"),
    ({"mem_limit": "12M", "recompress_after": -1}, "recompress_after must be 0.."),
    ({"mem_limit": "12M", "recompress_after": 1.5}, "recompress_after must be an int"),
    ({"mem_limit": "12M", "cold_target": 101}, "percentage 0..100"),
    ({"mem_limit": "12M", "cold_target": "often"}, "cold_target"),
    ({"mem_limit": "12M", "writeback_batch_size": 0}, "writeback_batch_size must be 1..4096"),
    ({"writeback_batch_size": "many"}, "writeback_batch_size must be a whole number"),
])
def test_a_bad_set_changes_nothing(device_control, args, message):
    device, path = device_control()
    call(path, "set", mem_limit="5M", high_watermark="2M")
    before = call(path, "stats")
    with pytest.raises(ControlError, match=message):
        call(path, "set", **args)
    assert call(path, "stats") == before


def test_writeback_knobs_need_a_backing_file(device_control):
    device, path = device_control(backing=False)
    for args in ({"high_watermark": 0}, {"writeback_limit": 1}, {"writeback_limit_enable": "on"},
                 {"writeback_batch_size": 8}):
        with pytest.raises(ControlError, match="no backing file"):
            call(path, "set", mem_limit="3M", **args)
        assert device.store.mem_limit == 0


def test_cold_knobs_need_something_to_act_on(device_control):
    device, path = device_control(backing=False)  # and no secondary algorithm
    for args in ({"recompress_after": 60}, {"cold_target": 0.5}):
        with pytest.raises(ControlError, match="need a secondary algorithm"):
            call(path, "set", mem_limit="3M", **args)
        assert device.store.mem_limit == 0 and device.cold.stats()["cold_state"] == "off"
    call(path, "set", cold_target=0)  # nothing is ever cold: nothing needed
    assert call(path, "stats")["cold_state"] == "impossible target"


def test_every_knob_row_has_an_example_its_set_takes(device_control):
    _, path = device_control()
    for knob, rows in KNOBS.items():
        args = {opt.label: opt.example for opt in rows}
        if knob == "watermarks":
            args = {"high_watermark": "8M", "low_watermark": "4M"}
        call(path, "set", **args)
        for opt in rows:
            if opt.runtime.stat:
                value = options.BY_LABEL[opt.label].from_text(args[opt.label])
                assert call(path, "stats")[opt.runtime.stat] == value, opt.label


def test_a_knobs_metric_comes_from_its_row():
    """The running value of a knob is a gauge named after its row's field."""
    from zramd import metrics

    stats_rows = [o for rows in KNOBS.values() for o in rows if o.runtime.stat]
    assert {o.runtime.stat for o in stats_rows} >= {"mem_limit", "high_watermark"}
    for opt in stats_rows:
        assert metrics.METRICS[opt.runtime.stat] == (
            opt.field, metrics.GAUGE, opt.runtime.metric_help or opt.help)

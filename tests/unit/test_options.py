"""The option table (zramd/options.py) is the one source of every serve
option: each row round-trips CLI -> Settings -> plugin parameters ->
Settings, the README's flags all parse, and config_help lists every key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from zramd import cli
from zramd.settings import ConfigError, Settings, from_plugin_params, plugin_help
from zramd.options import BY_NAME, OPTIONS, PLUGIN_KEYS, Option

ROOT = Path(__file__).resolve().parents[2]

# Other options an example needs to be valid (cross-field checks).
COMPANIONS = {
    "level": ["--algorithm", "zstd"],
    "fault-inject": ["--unlock-fault-injection", "--compress", "async"],
    "high-watermark": ["--backing-file", "b.img"],
    "backing-encrypt": ["--backing-file", "b.img"],
    "writeback-compressed": ["--backing-file", "b.img"],
    "low-watermark": ["--backing-file", "b.img", "--high-watermark", "8M"],
    "address": ["--port", "10809", "--insecure-tcp"],
    "port": ["--insecure-tcp"],
    "insecure-tcp": ["--port", "10809"],
    "tls": ["--tls-psk", "keys.psk"],
    "tls-verify-peer": ["--tls-certificates", "pki"],
    "metrics-insecure-address": ["--metrics-address", "0.0.0.0:9711"],
    "recompress-after": ["--recomp-algorithm", "zstd"],
    "cold-target": ["--backing-file", "b.img"],
}


def parse_serve(argv: list[str]) -> Settings:
    return cli.settings_from_args(cli.build_parser().parse_args(["serve", *argv]))


def example_args(opt: Option) -> list[str]:
    if opt.type.python is bool:
        return [opt.flags[0]]
    return [opt.flags[0], opt.example]


def test_every_row_is_complete():
    fields = [opt.field for opt in OPTIONS]
    assert len(set(fields)) == len(fields)
    assert len({opt.name for opt in OPTIONS}) == len(OPTIONS)
    assert set(Settings.__dataclass_fields__) == set(fields)
    for opt in OPTIONS:
        assert opt.example is not None, f"{opt.name}: give the row an example"
        value = opt.from_text(opt.example)
        assert value != opt.default, f"{opt.name}: the example must not be the default"
        opt.check_value(opt.default)


def test_defaults_are_the_tables():
    s = parse_serve([])
    for opt in OPTIONS:
        assert getattr(s, opt.field) == opt.default == getattr(Settings(), opt.field)


@pytest.mark.parametrize("opt", OPTIONS, ids=lambda o: o.name)
def test_option_round_trips_cli_plugin_settings(opt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = parse_serve(COMPANIONS.get(opt.name, []) + example_args(opt)).validate()
    expected = opt.from_text(opt.example)
    assert getattr(s, opt.field) == expected
    params = s.plugin_params()
    keys = [p.split("=", 1)[0] for p in params]
    assert len(keys) == len(set(keys))
    back = from_plugin_params(dict(p.split("=", 1) for p in params))
    if opt.plugin_key is None:
        assert opt.field not in keys and getattr(back, opt.field) == opt.default
        return
    assert opt.plugin_key in keys
    if opt.type.name == "path":
        expected = str(tmp_path / expected)
    assert getattr(back, opt.field) == expected
    for other in OPTIONS:  # nothing else changed on the way
        if other.plugin_key and other.type.name != "path":
            assert getattr(back, other.field) == getattr(s, other.field), other.name


def test_readme_flags_all_parse():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### `zramd serve` options") : readme.index("Bad options exit")]
    flags = set(re.findall(r"`(--?[a-z][a-z-]*)", table))
    assert len(flags) > 25
    known = {flag for opt in OPTIONS for flag in opt.flags}
    assert flags <= known, flags - known


def test_runtime_knobs_exist():
    """A row's ``runtime`` names the `zramd set` knob that changes it live."""
    knobs = {opt.runtime.knob for opt in OPTIONS if opt.runtime}
    assert knobs and knobs <= set(cli.KNOBS)
    assert "zramd set mem_limit" in BY_NAME["mem-limit"].help_text()


def test_config_help_lists_every_plugin_key():
    text = plugin_help()
    assert [line.split("=", 1)[0] for line in text.splitlines()] == list(PLUGIN_KEYS)


def test_typed_values_from_other_sources():
    """What a config file hands over: text is parsed, typed values are checked."""
    assert BY_NAME["mem-limit"].from_value("1G") == 1 << 30
    assert BY_NAME["mem-limit"].from_value(4096) == 4096
    assert BY_NAME["swap"].from_value(True) is True
    assert BY_NAME["swap"].from_value("off") is False
    with pytest.raises(ConfigError, match="workers must be 1..64, not 0"):
        BY_NAME["workers"].from_value(0)
    with pytest.raises(ConfigError, match="swap must be a bool, not 1"):
        BY_NAME["swap"].from_value(1)
    with pytest.raises(ConfigError, match="workers must be an int, not True"):
        BY_NAME["workers"].from_value(True)
    with pytest.raises(ConfigError, match="compress must be one of inline, async, hybrid"):
        BY_NAME["compress"].from_value("later")
    with pytest.raises(ConfigError, match="threads must be a whole number, not 'x'"):
        BY_NAME["threads"].from_text("x")

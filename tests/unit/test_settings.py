import pytest

from zramd.settings import ConfigError, Settings, from_plugin_params


def test_plugin_params_round_trip():
    s = Settings(size_bytes=1 << 30, algorithm="zstd", level=7, mem_limit_bytes=1 << 20,
                 control_path="/tmp/x.ctl", pin_thread_state=False, swap=True)
    params = dict(p.split("=", 1) for p in s.plugin_params())
    back = from_plugin_params(params)
    for field in ("size_bytes", "algorithm", "level", "mem_limit_bytes", "control_path",
                  "pin_thread_state", "swap"):
        assert getattr(back, field) == getattr(s, field)


@pytest.mark.parametrize("params,message", [
    ({"size": "0"}, "greater than 0"),
    ({"size": "4097"}, "whole number of 4096-byte pages"),
    ({"algorithm": "lzo"}, "algorithm must be one of lz4, none, zstd"),
    ({"algorithm": "zstd", "level": "99"}, "zstd level"),
    ({"algorithm": "zstd", "level": "x"}, "level must be a whole number"),
    ({"algorithm": "lz4", "level": "1"}, "only to zstd"),
    ({"mem_limit": "lots"}, "not a size"),
    ({"pin_thread_state": "maybe"}, "on or off"),
    ({"colour": "red"}, "unknown parameter 'colour'"),
])
def test_plugin_params_rejected(params, message):
    with pytest.raises(ConfigError, match=message):
        from_plugin_params(params)


@pytest.mark.parametrize("kwargs,message", [
    ({"port": 0}, "port must be 1..65535"),
    ({"port": 10809, "socket_path": "/tmp/a.sock"}, "not both"),
    ({"threads": 0}, "threads must be"),
    ({"socket_path": "/nonexistent-dir/zramd.sock"}, "directory does not exist"),
])
def test_settings_rejected(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Settings(**kwargs).validate()


def test_defaults_fill_in_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    s = Settings().with_defaults()
    assert s.socket_path == str(tmp_path / "zramd.sock")
    assert s.control_path == s.socket_path + ".ctl"
    t = Settings(port=10809).with_defaults()
    assert t.socket_path is None and t.control_path.endswith("zramd-10809.sock.ctl")

"""The control socket and its commands, with a real socket and a real store."""

import os
import stat

import pytest

from zramd import commands
from zramd.engine.codecs import make_codec
from zramd.control import ControlError, ControlServer, call
from zramd.engine.device import Device
from zramd.engine.store import PageStore


@pytest.fixture
def control(sockdir):
    store = PageStore(1 << 20, make_codec("lz4"))
    path = os.path.join(sockdir, "c.ctl")
    device = Device(store)
    srv = ControlServer(path, lambda request: commands.dispatch(device, request))
    srv.start()
    yield store, path
    srv.stop()
    assert not os.path.exists(path)


def test_socket_is_owner_only(control):
    _, path = control
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def test_stats(control):
    store, path = control
    store.write(b"\x01" * 4096, 0)
    result = call(path, "stats")
    assert result["same_pages"] == 1 and result["orig_data_size"] == 4096


def test_mem_limit_command(control):
    store, path = control
    assert call(path, "mem_limit", size="1M")["mem_limit"] == 1 << 20
    assert store.mem_limit == 1 << 20
    assert call(path, "mem_limit", size="0")["mem_limit"] == 0


@pytest.mark.parametrize("cmd,args,message", [
    ("nonsense", {}, "unknown command 'nonsense'"),
    ("stats", {"x": 1}, "takes no arguments"),
    ("mem_limit", {}, "missing argument size"),
    ("mem_limit", {"size": "huge"}, "not a size"),
    ("mem_limit", {"size": "1M", "extra": 2}, "does not take extra"),
])
def test_bad_commands_change_nothing(control, cmd, args, message):
    store, path = control
    before = store.stats()
    with pytest.raises(ControlError, match=message):
        call(path, cmd, **args)
    assert store.stats() == before


def test_malformed_requests(control):
    import socket
    _, path = control
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        f = s.makefile("rwb")
        for line in (b"not json\n", b"[1,2]\n", b'{"cmd": 5}\n'):
            f.write(line)
            f.flush()
            reply = f.readline()
            assert b'"ok": false' in reply and b"malformed" in reply


def test_second_server_on_same_path_is_refused(control):
    _, path = control
    with pytest.raises(ControlError, match="in use"):
        ControlServer(path, lambda r: None).start()


def test_no_server():
    with pytest.raises(ControlError, match="no zramd control socket"):
        call("/tmp/definitely-not-here.ctl", "stats")

"""The control socket against broken and hostile clients, with a real
socket and a real device (no nbdkit): bounded lines, idle timeout, a cap
on clients, one error line for any malformed input, numbers range-checked."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

from zramd import commands
from zramd.engine.codecs import make_codec
from zramd.control import MAX_LINE_BYTES, ControlError, ControlServer, call
from zramd.engine.device import Device
from zramd.engine.store import PageStore
from zramd.units import physical_memory_bytes

PAGE = 4096


@pytest.fixture
def make_control(sockdir):
    servers = []

    def factory(**kwargs):
        store = PageStore(1 << 20, make_codec("lz4"))
        store.write(os.urandom(PAGE) + b"\x07" * PAGE, 0)
        device = Device(store)
        path = os.path.join(sockdir, f"c{len(servers)}.ctl")
        srv = ControlServer(path, lambda request: commands.dispatch(device, request), **kwargs)
        srv.start()
        servers.append(srv)
        return device, path, srv

    yield factory
    for srv in servers:
        srv.stop()


def client(path: str, timeout: float = 30.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(path)
    return s


def read_line(s: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def ask(s: socket.socket, raw: bytes) -> dict:
    s.sendall(raw + b"\n")
    line = read_line(s)
    assert line.count(b"\n") == 1, line
    return json.loads(line)


def test_an_endless_line_is_not_buffered(make_control):
    """200 MiB without a newline used to be read whole; now the server stops
    reading after the bound, answers one line and hangs up."""
    device, path, _ = make_control()
    before = device.stats()
    s = client(path)
    chunk = b"x" * (1 << 20)
    sent = 0
    with pytest.raises(OSError):  # EPIPE / ECONNRESET once the server hung up
        while sent < 64 << 20:
            s.sendall(chunk)
            sent += len(chunk)
    assert sent < 16 << 20  # the bound plus what the socket buffers hold
    reply = json.loads(read_line(s))
    assert reply == {"ok": False, "error": f"request longer than {MAX_LINE_BYTES} bytes"}
    s.close()
    assert call(path, "stats") == before


def test_a_silent_client_is_disconnected(make_control):
    _, path, _ = make_control(idle_timeout_s=0.1)
    s = client(path, timeout=30)
    assert s.recv(1) == b""  # closed by the server, not by our timeout
    s.close()
    s = client(path, timeout=30)
    s.sendall(b'{"cmd": "st')  # half a request, then nothing
    assert s.recv(1) == b""
    s.close()
    assert call(path, "stats")["orig_data_size"] == 2 * PAGE


def test_a_trickling_client_is_disconnected(make_control):
    """A byte now and then does not keep a connection: the whole line must
    arrive within the timeout."""
    _, path, _ = make_control(idle_timeout_s=0.2)
    s = client(path, timeout=30)
    sent = 0
    try:
        for byte in b'{"cmd": "stats"' * 100:
            s.sendall(bytes([byte]))
            sent += 1
            time.sleep(0.02)
    except OSError:
        pass
    assert sent < 200  # cut off long before the line could end
    s.close()


def test_clients_are_capped(make_control):
    _, path, srv = make_control(max_clients=2)
    a, b = client(path), client(path)
    assert ask(a, b'{"cmd": "stats"}')["ok"] and ask(b, b'{"cmd": "stats"}')["ok"]
    c = client(path)
    assert json.loads(read_line(c)) == {
        "ok": False,
        "error": "too many control clients (at most 2 at once)",
    }
    assert c.recv(1) == b""
    c.close()
    assert srv.refused_clients == 1
    a.close()
    deadline = time.monotonic() + 30  # the server notices the hang-up
    while True:
        try:
            assert call(path, "stats")["orig_data_size"] == 2 * PAGE
            break
        except ControlError:  # still refused: the slot is not back yet
            assert time.monotonic() < deadline
            time.sleep(0.05)
    b.close()


@pytest.mark.parametrize(
    "raw,error",
    [
        (b"[" * 60000, "malformed request: not JSON"),
        (b"{" * 60000, "malformed request: not JSON"),
        (b'{"cmd": "stats", "args": {"a": ' + b"[" * 500 + b"]" * 500 + b"}}",
         "malformed request: nested deeper than 8"),
        (b"\xff\xfe\x00garbage", "malformed request: not JSON"),
        (b"1" * 5000, "malformed request: not JSON"),
        (b'{"cmd": "mem_limit", "args": {"size": 1e38}}', "size must be a size"),
        (b'{"cmd": "mem_limit", "args": {"size": "1e38"}}', "size: not a size: '1e38'"),
        (b'{"cmd": "mem_limit", "args": {"size": ' + str(10**38).encode() + b"}}",
         "size must be at most"),
        (b'{"cmd": "mem_limit", "args": {"size": "1E"}}', "size must be at most"),
        (b'{"cmd": "idle", "args": {"age": 1e999}}', "age must be a whole number"),
        (b'{"cmd": "idle", "args": {"age": "' + b"9" * 4000 + b'"}}', "age must be at most"),
        (b'{"cmd": "idle", "args": {"age": NaN}}', "age must be a whole number"),
        (b'{"cmd": "' + b"x" * 50000 + b'"}', "unknown command 'xxxx"),
        (b'{"cmd": "stats", "args": [1]}', "args must be an object"),
    ],
)
def test_malformed_input_gets_one_error_line(make_control, raw, error):
    device, path, _ = make_control()
    before = device.stats()
    s = client(path)
    reply = ask(s, raw)
    assert reply["ok"] is False and reply["error"].startswith(error), reply
    assert len(reply["error"]) <= 300  # never the request echoed back whole
    assert ask(s, b'{"cmd": "stats"}')["result"] == before  # same connection still served
    s.close()


def test_mem_limit_is_bounded_by_physical_memory(make_control):
    device, path, _ = make_control()
    ram = physical_memory_bytes()
    with pytest.raises(ControlError, match="at most .* \\(the physical memory\\)"):
        call(path, "mem_limit", size=str(ram + PAGE))
    assert device.store.mem_limit == 0
    assert call(path, "mem_limit", size=str(ram))["mem_limit"] == ram

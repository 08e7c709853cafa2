"""A few thousand random and malformed control messages against a real
server (nbdkit, a backing file, a secondary codec: every command exists):
each gets exactly one error line, the server keeps answering, its stats
do not change, and the device's data is intact.  Seeded: a failure
reproduces."""

from __future__ import annotations

import json
import os
import random
import socket

from helpers import connect, stats
from zramd.commands import COMMANDS, KNOB_ROWS

PAGE = 4096
MESSAGES = 3000
SEED = 20261126

# Values no argument accepts, whatever its kind (size, count, type, on/off);
# None is "not given" for the optional counts, so only for the others.
BAD_ANYWHERE = [
    [], {}, [1, 2], {"a": 1}, 1.5, 1e38, -1, -(10**30), 10**40, "", " ", "-1", "1e38",
    "nan", "inf", "12Q", "9" * 5000, "\u00e9\u00e8", "on off", [[[[[]]]]], {"x": {"y": {}}},
]
BAD_BY_KEY = {
    "size": BAD_ANYWHERE + [None], "high": BAD_ANYWHERE + [None], "low": BAD_ANYWHERE + [None],
    "limit": BAD_ANYWHERE + [0], "pages": BAD_ANYWHERE, "age": BAD_ANYWHERE,
    "threshold": BAD_ANYWHERE + [5000], "type": BAD_ANYWHERE + [None, "bogus", "IDLE", "all "],
    "enable": BAD_ANYWHERE + [None, 2, "maybe"],
    # the set command's keys: the knobs' labels (zramd/options.py)
    "mem_limit": BAD_ANYWHERE + [None], "high_watermark": BAD_ANYWHERE + [None],
    "low_watermark": BAD_ANYWHERE + [None], "writeback_limit": BAD_ANYWHERE + [None, True],
    "writeback_limit_enable": BAD_ANYWHERE + [None, 2, "maybe"],
    "mem_used_max": BAD_ANYWHERE + [None, 5, "1M"],
}
KEYS = {
    "mem_limit": ["size"], "writeback": ["type", "limit"], "idle": ["age"],
    "recompress": ["type", "threshold", "limit"], "writeback_limit": ["pages", "enable"],
    "watermarks": ["high", "low"], "reset_mem_used_max": [], "stats": [],
    "set": sorted(KNOB_ROWS),
}


def junk_bytes(rng: random.Random) -> bytes:
    return bytes(rng.choice([b for b in range(256) if b != 10]) for _ in range(rng.randrange(200)))


def nested(rng: random.Random) -> bytes:
    depth = rng.choice([50, 500, 1000, 5000, 60000])
    opener = rng.choice([b"[", b"{\"a\":", b"[{\"b\":"])
    return opener * depth


def bad_command(rng: random.Random) -> dict:
    """A known command whose arguments are wrong in at least one way, so
    that it must be refused as a whole (commands check before acting)."""
    name = rng.choice(sorted(KEYS))
    keys = KEYS[name]
    args: dict = {}
    for key in keys:
        if rng.random() < 0.5:  # sometimes a good-looking value beside the bad one
            args[key] = rng.choice(["1M", "huge", 1, "on", "idle"])
    if keys and rng.random() < 0.7:
        key = rng.choice(keys)
        args[key] = rng.choice(BAD_BY_KEY.get(key, BAD_ANYWHERE + [None]))
    else:
        args["".join(rng.choice("abcxyz_") for _ in range(rng.randrange(1, 12)))] = 1
    return {"cmd": name, "args": args}


def message(rng: random.Random) -> bytes:
    kind = rng.randrange(10)
    if kind == 0:
        return junk_bytes(rng)
    if kind == 1:
        return nested(rng)
    if kind == 2:
        return json.dumps(rng.choice(BAD_ANYWHERE)).encode()
    if kind == 3:
        return json.dumps({"cmd": rng.choice(BAD_ANYWHERE), "args": {}}).encode()
    if kind == 4:
        name = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randrange(30)))
        if name in COMMANDS or name in ("shutdown", "stop"):
            name += "_not"
        return json.dumps({"cmd": name, "args": {}}).encode()
    if kind == 5:
        cmd = rng.choice(sorted(KEYS))
        return json.dumps({"cmd": cmd, "args": rng.choice([[], 5, "x", [1]])}).encode()
    if kind == 6:  # valid JSON cut short
        text = json.dumps(bad_command(rng)).encode()
        return text[: rng.randrange(1, len(text))]
    return json.dumps(bad_command(rng), allow_nan=True).encode()


def test_control_fuzz_changes_nothing_and_the_server_keeps_answering(make_server, sockdir):
    rng = random.Random(SEED)
    with make_server(size="16M", backing_file=os.path.join(sockdir, "b.img"),
                     recomp_algorithm="zstd") as server:
        h = connect(server)
        data = os.urandom(8 * PAGE) + b"text page " * 1638 + b"1234"
        h.pwrite(data, 0)
        before = stats(server)
        sock = None
        replies = 0
        for i in range(MESSAGES):
            if sock is None:
                sock = socket.socket(socket.AF_UNIX)
                sock.settimeout(60)
                sock.connect(server.control_path)
                stream = sock.makefile("rb")
            if i % 1000 == 999:  # now and then a line over the bound
                raw = b"x" * (70 * 1024)
            else:
                raw = message(rng)
            try:
                sock.sendall(raw + b"\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            line = stream.readline()
            assert line.endswith(b"\n") and line.count(b"\n") == 1, (i, raw[:200], line)
            reply = json.loads(line)
            assert reply["ok"] is False, (i, raw[:200], reply)
            assert isinstance(reply["error"], str) and 0 < len(reply["error"]) <= 300
            replies += 1
            if len(raw) > 64 * 1024:  # the server hung up after that one
                try:
                    assert stream.readline() == b""
                except ConnectionResetError:  # it had not read all we sent
                    pass
                stream.close()
                sock.close()
                sock = None
        if sock is not None:
            stream.close()
            sock.close()
        assert replies == MESSAGES
        assert stats(server) == before
        assert h.pread(len(data), 0) == data
        h.shutdown()


NON_OBJECT_ARGS = [[1], [], 1, 1.5, "x", "", True, [{"a": 1}]]
HUGE_SIZES = ["99999999T", "16E", "8E", 10**30, "9" * 5000, (1 << 63)]


def test_non_object_args_and_huge_sizes_answer_one_line_and_change_nothing(make_server):
    with make_server(size="16M") as server:
        h = connect(server)
        data = os.urandom(4 * PAGE)
        h.pwrite(data, 0)
        before = stats(server)
        requests = [{"cmd": cmd, "args": args}
                    for cmd in sorted(COMMANDS) + ["stop"] for args in NON_OBJECT_ARGS]
        requests += [{"cmd": "mem_limit", "args": {"size": s}} for s in HUGE_SIZES]
        requests += [{"cmd": "watermarks", "args": {"high": s}} for s in HUGE_SIZES]
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(60)
            sock.connect(server.control_path)
            stream = sock.makefile("rb")
            for request in requests:
                sock.sendall(json.dumps(request).encode() + b"\n")
                line = stream.readline()
                assert line.endswith(b"\n") and line.count(b"\n") == 1, (request, line)
                reply = json.loads(line)
                assert reply["ok"] is False, (request, reply)
                assert "internal error" not in reply["error"], (request, reply)
                assert "\n" not in reply["error"] and len(reply["error"]) <= 300
            stream.close()
        assert stats(server) == before
        assert h.pread(len(data), 0) == data
        h.shutdown()


BAD_STOP_ARGS = [{"force": "maybe"}, {"force": [1]}, {"force": 1}, {"check": "yes"},
                 {"check": None}, {"now": True}]


def test_a_stop_with_bad_arguments_is_refused_and_stops_nothing(make_server):
    """With no client connected a valid stop would go ahead at once, so each
    of these requests would end the server if a bad value slipped through."""
    with make_server(size="16M") as server:
        h = connect(server)
        data = os.urandom(2 * PAGE)
        h.pwrite(data, 0)
        h.shutdown()
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(60)
            sock.connect(server.control_path)
            stream = sock.makefile("rb")
            for args in BAD_STOP_ARGS:
                sock.sendall(json.dumps({"cmd": "stop", "args": args}).encode() + b"\n")
                reply = json.loads(stream.readline())
                assert reply["ok"] is False, (args, reply)
                assert "internal error" not in reply["error"], (args, reply)
            stream.close()
        h = connect(server)
        assert h.pread(len(data), 0) == data
        h.shutdown()

"""What a flood of scrapes or control messages costs the device: fio 4 KiB
random reads with and without the flood, interleaved in the same test, as
a ratio (never a timed assertion).  The metrics flood is what any local
user can do (the endpoint is a loopback TCP port): many scrapers at once
plus connections that send half a request and hold it."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import threading
import time

import pytest

from helpers import nbd, stats
from servectl import Serve
from zramd import scrape

pytestmark = [
    pytest.mark.skipif(not shutil.which("fio"), reason="fio not installed"),
    pytest.mark.skipif(nbd is None, reason="libnbd Python bindings missing"),
]

PAGE = 4096
FILL_BYTES = 32 << 20
ROUNDS = 2
FIO_SECONDS = 3
SCRAPERS = 32
HELD = 60
MIN_RATIO = 0.6  # generous: 2 shared cores vary a lot between seconds


def fill(h) -> None:
    """Half-compressible pages, as swap is."""
    chunk = b"".join(os.urandom(PAGE // 2) + bytes(PAGE // 2) for _ in range(256))
    for off in range(0, FILL_BYTES, len(chunk)):
        h.pwrite(chunk, off)


def read_iops(socket_path: str, workdir: str) -> float:
    result = subprocess.run(
        ["fio", "--name=r", "--ioengine=nbd", f"--uri=nbd+unix:///?socket={socket_path}",
         "--rw=randread", "--bs=4k", f"--size={FILL_BYTES}", "--iodepth=8", "--time_based",
         f"--runtime={FIO_SECONDS}", "--output-format=json"],
        capture_output=True, text=True, check=True, cwd=workdir, timeout=120)
    return json.loads(result.stdout[result.stdout.index("{"):])["jobs"][0]["read"]["iops"]


def interleaved(socket_path: str, workdir: str, flood) -> tuple[list[float], list[float]]:
    """IOPS without and with ``flood`` (a context manager), ROUNDS rounds each."""
    quiet, flooded = [], []
    for _ in range(ROUNDS):
        quiet.append(read_iops(socket_path, workdir))
        with flood():
            flooded.append(read_iops(socket_path, workdir))
    return quiet, flooded


def ratio(quiet: list[float], flooded: list[float]) -> float:
    return statistics.median(flooded) / statistics.median(quiet)


def threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def lowest_weight() -> None:
    """Put this (forked) process in its own scheduling group of the lowest
    weight: the flood's own CPU is not what is measured (any busy process of
    another user costs the device that much); it takes what is left over,
    so the ratio shows what the flood makes the *server* spend."""
    os.setsid()
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write("19")
    except OSError:  # no autogroups: plain nice
        os.setpriority(os.PRIO_PROCESS, 0, 19)


class ScrapeFlood:
    """For the length of a ``with``: SCRAPERS threads scraping in a loop (in
    a forked child of the lowest weight), HELD half-sent requests, and a
    sampler of the wrapper's thread count."""

    workers = SCRAPERS
    held_count = HELD

    def __init__(self, host: str, port: int, wrapper_pid: int):
        self.addr = (host, port)
        self.wrapper_pid = wrapper_pid
        self.statuses: dict[int, int] = {}
        self.down_pages = 0  # 200 pages that said zramd_up 0
        self.errors = 0  # connections reset or timed out
        self.max_threads = 0
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._child = 0

    def once(self) -> None:
        try:
            with socket.create_connection(self.addr, timeout=30) as s:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: zramd\r\n\r\n")
                data = bytearray()
                while chunk := s.recv(65536):
                    data += chunk
        except OSError:
            with self._lock:
                self.errors += 1
            return
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
        down = status == 200 and re.search(rb"^zramd_up\{[^}]*\} 0", data, re.M) is not None
        with self._lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.down_pages += down

    def _scraper(self) -> None:
        while not self._stop.is_set():
            self.once()

    def _flood(self, stop_fd: int, result_fd: int) -> None:
        """The child: scrape until ``stop_fd`` is readable, then report."""
        lowest_weight()
        threads = [threading.Thread(target=self._scraper) for _ in range(self.workers)]
        for t in threads:
            t.start()
        os.read(stop_fd, 1)
        self._stop.set()
        for t in threads:
            t.join()
        report = {"statuses": self.statuses, "down": self.down_pages, "errors": self.errors}
        os.write(result_fd, json.dumps(report).encode())

    def _sampler(self) -> None:
        while not self._stop.is_set():
            self.max_threads = max(self.max_threads, threads_of(self.wrapper_pid))
            time.sleep(0.01)

    def __enter__(self) -> ScrapeFlood:
        self._stop.clear()
        stop_r, self._stop_w = os.pipe()
        self._result_r, result_w = os.pipe()
        self._child = os.fork()
        if self._child == 0:
            try:
                self._flood(stop_r, result_w)
            finally:
                os._exit(0)
        os.close(stop_r)
        os.close(result_w)
        for _ in range(self.held_count):
            s = socket.create_connection(self.addr, timeout=30)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: zr")  # and never the rest
            self.held.append(s)
        self._threads = [threading.Thread(target=self._sampler)]
        self._threads[0].start()
        return self

    def __exit__(self, *exc) -> None:
        os.write(self._stop_w, b"x")
        with os.fdopen(self._result_r, "rb") as results:
            report = json.loads(results.read() or b"{}")
        os.close(self._stop_w)
        os.waitpid(self._child, 0)
        self._stop.set()
        for t in self._threads:
            t.join()
        self.statuses = {int(k): v for k, v in report.get("statuses", {}).items()}
        self.down_pages = report.get("down", 0)
        self.errors = report.get("errors", 0)


def closed_by_server(s: socket.socket, timeout_s: float) -> bool:
    """Whether the server hangs up on ``s`` (EOF or reset) within timeout_s."""
    s.settimeout(timeout_s)
    try:
        while s.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_scrape_flood_costs_the_device_little_and_the_wrapper_bounded_threads(sockdir):
    sock = os.path.join(sockdir, "f.sock")
    serve = Serve(sockdir, "--socket", sock, "--size", "64M", "--metrics-address", "127.0.0.1:0")
    try:
        assert serve.ready, serve.stderr()
        port = int(re.search(r"curl http://127\.0\.0\.1:(\d+)/metrics", serve.banner).group(1))
        h = nbd.NBD()
        h.connect_unix(sock)
        fill(h)
        h.shutdown()
        idle_threads = threads_of(serve.proc.pid)
        floods = []

        def flood():
            floods.append(ScrapeFlood("127.0.0.1", port, serve.proc.pid))
            return floods[-1]

        quiet, flooded = interleaved(sock, sockdir, flood)
        statuses: dict[int, int] = {}
        for f in floods:
            for status, count in f.statuses.items():
                statuses[status] = statuses.get(status, 0) + count
        down = sum(f.down_pages for f in floods)
        most = max(f.max_threads for f in floods)
        got = ratio(quiet, flooded)
        print(f"scrape flood: quiet {quiet} flooded {flooded} ratio {got:.2f}; "
              f"statuses {statuses}, {down} saying zramd_up 0; "
              f"errors {sum(f.errors for f in floods)}; threads {idle_threads} idle, {most} at most")
        assert statuses.get(200, 0) > 100, statuses  # the flood did scrape
        assert set(statuses) <= {200, 503}, statuses  # a refusal is a quick 503
        assert down == 0  # never zramd_up 0 while the device is up
        # threads: the idle ones plus at most one per scrape slot
        assert most <= idle_threads + scrape.MAX_SCRAPES, (idle_threads, most)
        # the held connections are closed once their time is up
        held = [s for f in floods for s in f.held]
        start = time.monotonic()
        assert all(closed_by_server(s, scrape.READ_TIMEOUT_SECONDS + 10) for s in held)
        assert time.monotonic() - start < scrape.READ_TIMEOUT_SECONDS + 10
        for s in held:
            s.close()
        # a quiet scrape afterwards gets the page
        after = ScrapeFlood("127.0.0.1", port, serve.proc.pid)
        after.once()
        assert after.statuses == {200: 1} and after.down_pages == 0
        assert got >= MIN_RATIO, (quiet, flooded)
        serve.signal(2)
        assert serve.wait() == 0, serve.stderr()
    finally:
        serve.kill()


CONTROL_MESSAGES = [
    b"\x00junk" * 20, b"[" * 60000, b'{"a":' * 5000, b'{"cmd": "stats", "args": {}}',
    b'{"cmd": "mem_limit", "args": {"size": "12Q"}}', b'{"cmd": "nope", "args": {}}',
]


class ControlFlood(ScrapeFlood):
    """CONTROL_WORKERS connections (leaving the wrapper and the CLI their
    slots) sending malformed messages and stats requests as fast as the
    server answers; ``statuses`` counts replies by ok (1) or not (0)."""

    workers = 6
    held_count = 0

    def __init__(self, control_path: str, nbdkit_pid: int):
        super().__init__("", 0, nbdkit_pid)
        self.control_path = control_path

    def once(self) -> None:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(30)
                s.connect(self.control_path)
                with s.makefile("rb") as stream:
                    for raw in CONTROL_MESSAGES * 5:
                        s.sendall(raw + b"\n")
                        ok = int(json.loads(stream.readline())["ok"])
                        with self._lock:
                            self.statuses[ok] = self.statuses.get(ok, 0) + 1
        except OSError:
            with self._lock:
                self.errors += 1


def test_a_control_flood_costs_the_device_little(make_server):
    with make_server(size="64M") as server:
        h = nbd.NBD()
        h.connect_unix(server.socket_path)
        fill(h)
        h.shutdown()
        before = stats(server)
        pid = server.pid
        floods = []

        def flood():
            floods.append(ControlFlood(server.control_path, pid))
            return floods[-1]

        workdir = os.path.dirname(server.socket_path)
        quiet, flooded = interleaved(server.socket_path, workdir, flood)
        replies = {k: sum(f.statuses.get(k, 0) for f in floods) for k in (0, 1)}
        got = ratio(quiet, flooded)
        print(f"control flood: quiet {quiet} flooded {flooded} ratio {got:.2f}; "
              f"replies {replies}; errors {sum(f.errors for f in floods)}")
        assert replies[0] > 100 and replies[1] > 10, replies  # the flood did reach it
        after = stats(server)
        assert after["mem_limit"] == before["mem_limit"]  # a bad command changed nothing
        assert got >= MIN_RATIO, (quiet, flooded)

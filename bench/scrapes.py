"""The metrics section: what a scrape flood on ``zramd serve
--metrics-address`` costs the device (docs/design.md#metrics).

Per round: a fresh zramd with a metrics port, the region filled, then fio
4 KiB random reads (iodepth 16) twice, without and with SCRAPERS threads
of this process scraping the endpoint in a loop (order alternating from
round to round).  Reported: the per-round IOPS ratio flooded/quiet, the
scrapes answered per second, and the wrapper's CPU per scrape (utime+stime
of the ``zramd serve`` process, where the endpoint runs).

Data (results.json "sections"/"scrapes"): runs (one per round and mode),
summary (the spreads).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

from bench import measure
from bench.context import Context
from bench.formats import outcome_lines, tenths, times, with_spread
from bench.servers import server_command, zramd_serve_has
from bench.stats import per_round_ratio, spread
from bench.systems import Workload, by_name
from zramd import process

SCRAPERS = 32
READ = Workload("randread-4k-qd16", "fio", "randread", 4096, 16)


class Scrapers:
    """SCRAPERS threads scraping ``port`` in a loop while in a ``with``."""

    def __init__(self, port: int):
        self.port = port
        self.answered = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(SCRAPERS)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
                    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
                    while s.recv(65536):
                        pass
                self.answered += 1  # a lost increment now and then does not matter
            except OSError:
                pass

    def __enter__(self) -> Scrapers:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


class ScrapeCost:
    name = "scrapes"
    title = "Metrics scrape flood"

    def run(self, ctx: Context) -> dict:
        a = ctx.args
        data: dict = {"rounds": a.rounds, "scrapers": SCRAPERS, "runs": [], "skipped": {}}
        if not ctx.zramd or not zramd_serve_has(ctx.zramd, "--metrics-address"):
            data["skipped"]["all"] = "this zramd has no --metrics-address"
            return data
        ctx.progress(
            f"scrapes: {a.rounds} rounds, 4 KiB reads without and with {SCRAPERS} scrapers"
        )
        with open(ctx.logs / "scrapes.fio.log", "a") as log:
            measure.rounds(
                ctx, data, "scrapes", ["zramd-lz4"], lambda _, rnd: self._round(ctx, data, rnd, log)
            )
        return data

    def derive(self, data: dict) -> None:
        runs = data["runs"]
        flooded = [r for r in runs if r["mode"] == "flooded"]
        data["summary"] = {
            "iops_ratio": per_round_ratio(flooded, [r for r in runs if r["mode"] == "quiet"]),
            "scrapes_per_s": spread([r["scrapes_per_s"] for r in flooded]),
            "wrapper_us_per_scrape": spread([r["wrapper_us_per_scrape"] for r in flooded]),
        }

    def _round(self, ctx: Context, data: dict, rnd: int, log) -> None:
        sock = str(ctx.tmp / "scrapes.sock")
        extra = ("--metrics-address", "127.0.0.1:0")
        cmd = server_command(by_name("zramd-lz4"), sock, ctx.region_bytes, ctx.zramd, extra)
        # a log of its own each round: the banner names the port
        with measure.serving(ctx, cmd, [sock], f"scrapes-r{rnd}") as server:
            port = self._port(server.log_path)
            measure.fill(ctx, server, log, f"scrapes-r{rnd}")
            for mode in ("quiet", "flooded") if rnd % 2 == 0 else ("flooded", "quiet"):
                assert server.proc is not None
                cpu0, t0 = process.cpu_seconds(server.proc.pid), time.monotonic()
                if mode == "quiet":
                    res, answered = measure.job(ctx, server, READ, log, f"scrapes-{mode}-r{rnd}"), 0
                else:
                    with Scrapers(port) as flood:
                        res = measure.job(ctx, server, READ, log, f"scrapes-{mode}-r{rnd}")
                    answered = flood.answered
                wrapper_s = process.cpu_seconds(server.proc.pid) - cpu0
                data["runs"].append(
                    {
                        "mode": mode,
                        "round": rnd,
                        "iops": res["iops"],
                        "scrapes_per_s": answered / (time.monotonic() - t0),
                        "wrapper_us_per_scrape": wrapper_s * 1e6 / answered if answered else None,
                    }
                )

    @staticmethod
    def _port(log_path: Path) -> int:
        for _ in range(100):
            m = re.search(r"curl http://127\.0\.0\.1:(\d+)/metrics", log_path.read_text())
            if m:
                return int(m.group(1))
            time.sleep(0.1)
        raise RuntimeError("no metrics port in the banner")

    def markdown(self, data: dict) -> list[str]:
        lines = [
            f"## {self.title}",
            "",
            f"fio 4 KiB random reads (iodepth 16) without and with {data['scrapers']} threads "
            "scraping the metrics endpoint in a loop, interleaved; "
            f"{data['rounds']} round(s), median (min-max).",
            "",
            "| reads flooded / quiet | scrapes answered per s | wrapper CPU µs per scrape |",
            "|---:|---:|---:|",
        ]
        s = data.get("summary")
        if s:
            lines.append(
                f"| {with_spread(s['iops_ratio'], times)} | "
                f"{with_spread(s['scrapes_per_s'], tenths)} | "
                f"{with_spread(s['wrapper_us_per_scrape'], tenths)} |"
            )
        return lines + outcome_lines(data)

    def plots(self, data: dict, out: Path, title: str) -> list[str]:
        return []

    def summary(self, data: dict) -> list[str]:
        s = data.get("summary")
        if not s or not s["iops_ratio"]["n"]:
            return []
        return [
            f"A metrics scrape flood ({data['scrapers']} scrapers) keeps 4 KiB reads at "
            f"{with_spread(s['iops_ratio'], times)} of the same run without it."
        ]

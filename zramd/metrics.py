"""Prometheus metrics: zram's counters in the text exposition format.

Data structure: ``METRICS`` is the one table from a stat (a key of the
``stats`` control command, zram's names) to its metric: name under the
``zramd_`` prefix with its unit (``_bytes``, ``_pages``, ``_blocks``),
type, and HELP text.  Counters (only ever grow while the device lives) are
exposed as Prometheus counters (``..._total``); levels as gauges.  Text
stats (algorithm, mode, backing file) are labels of ``zramd_device_info``.
Every sample has a ``device`` label: the NBD socket path (the control
socket path without ``.ctl``), so several devices, or the instances of a
striped one, are told apart on one scrape and across scrapes.

Where it runs (docs/design.md#running-as-a-service): ``StatsCollector``
reads the stats over the control socket, in the wrapper process (``zramd
serve --metrics-address``) or in ``zramd stats --format prometheus``.
nbdkit's request threads never see a scrape: the control socket's
``stats`` command takes the store lock once, as ``zramd stats`` does.
``MetricsServer`` serves the page with zramd/scrape.py: concurrent scrapes
share one read, a page is reused for ``scrape.CACHE_SECONDS``, so the
endpoint holds at most one control connection at a time however it is
scraped.  A device that does not answer yields ``zramd_up 0`` and no other
samples for it, never an HTTP error.

prometheus_client is imported only where it is used, so the rest of zramd
(and nbdkit's interpreter) never loads it.

Locking: none of its own (the page cache has its own, zramd/scrape.py);
``read`` and ``collect`` keep no state between calls.
"""

from __future__ import annotations

from typing import Any

from . import scrape
from .control import ControlError, call
from .options import KNOBS, ConfigError, parse_metrics_address

PREFIX = "zramd_"
GAUGE, COUNTER = "gauge", "counter"

# stat key -> (metric name without prefix (counters: without _total), type, HELP)
METRICS: dict[str, tuple[str, str, str]] = {
    # mm_stat
    "orig_data_size": (
        "orig_data_size_bytes",
        GAUGE,
        "mm_stat orig_data_size: uncompressed size of the stored pages "
        "(same-filled pages included)",
    ),
    "compr_data_size": (
        "compr_data_size_bytes",
        GAUGE,
        "mm_stat compr_data_size: compressed size of the stored pages (a huge page counts 4096)",
    ),
    "mem_used_total": (
        "mem_used_total_bytes",
        GAUGE,
        "mm_stat mem_used_total: the page arena's blocks (free space included), their "
        "bookkeeping, the per-page table of stored pages and pending snapshots",
    ),
    "mem_used_max": (
        "mem_used_max_bytes",
        GAUGE,
        "mm_stat mem_used_max: peak of mem_used_total since start or reset",
    ),
    "same_pages": (
        "same_pages",
        GAUGE,
        "mm_stat same_pages: pages stored as one repeated 8-byte word",
    ),
    "pages_compacted": (
        "pages_compacted",
        COUNTER,
        "mm_stat pages_compacted: pages freed by compaction",
    ),
    "huge_pages": ("huge_pages", GAUGE, "mm_stat huge_pages: incompressible pages stored raw"),
    "huge_pages_since": (
        "huge_pages_since",
        COUNTER,
        "mm_stat huge_pages_since: huge pages stored since start",
    ),
    # io_stat
    "failed_reads": ("failed_reads", COUNTER, "io_stat failed_reads: read requests that failed"),
    "failed_writes": (
        "failed_writes",
        COUNTER,
        "io_stat failed_writes: write requests that failed (ENOSPC at mem_limit included)",
    ),
    "invalid_io": (
        "invalid_io",
        COUNTER,
        "io_stat invalid_io: requests beyond the end of the device",
    ),
    "notify_free": (
        "notify_free_pages",
        COUNTER,
        "io_stat notify_free: pages freed by trim or write-zeroes",
    ),
    # bd_stat
    "bd_count": ("bd_count_pages", GAUGE, "bd_stat bd_count: pages in the backing file"),
    "bd_reads": ("bd_reads_pages", COUNTER, "bd_stat bd_reads: pages read from the backing file"),
    "bd_writes": (
        "bd_writes_pages",
        COUNTER,
        "bd_stat bd_writes: pages written to the backing file",
    ),
    # requests
    "num_reads": ("num_reads", COUNTER, "read requests served"),
    "num_writes": ("num_writes", COUNTER, "write requests served"),
    "num_discards": ("num_discards", COUNTER, "trim and write-zeroes requests served"),
    # the device
    "disksize": ("disksize_bytes", GAUGE, "disksize: size of the device"),
    "idle_pages": ("idle_pages", GAUGE, "stored pages marked idle"),
    "incompressible_pages": (
        "incompressible_pages",
        GAUGE,
        "pages the secondary algorithm could not shrink",
    ),
    # the page arena (docs/design.md#page-arena-and-memory-accounting)
    "arena_blocks": ("arena_blocks", GAUGE, "mmap blocks the page arena holds"),
    "arena_block_bytes": (
        "arena_block_bytes",
        GAUGE,
        "bytes of the page arena's blocks, free space inside them included",
    ),
    "arena_free_bytes": (
        "arena_free_bytes",
        GAUGE,
        "free object spots inside the page arena's blocks",
    ),
    "arena_meta_bytes": (
        "arena_meta_bytes",
        GAUGE,
        "bookkeeping of the page arena's blocks (mmap objects, table slots, spare ids)",
    ),
    "slot_meta_bytes": (
        "slot_meta_bytes",
        GAUGE,
        "per-page table bytes (handle, flags, atime, checksum) of the stored pages",
    ),
    "compactable_bytes": (
        "compactable_bytes",
        GAUGE,
        "block bytes that compaction could give back now",
    ),
    "compact_runs": ("compact_runs", COUNTER, "automatic compaction runs"),
    "read_retries": (
        "read_retries",
        COUNTER,
        "lockless reads done again because compaction or a free raced them",
    ),
    "arena_release_errors": (
        "arena_release_errors",
        COUNTER,
        "empty blocks munmap refused (vm.max_map_count); their pages were still given back",
    ),
    "recompressed_pages": (
        "recompressed_pages",
        GAUGE,
        "pages stored compressed by the secondary algorithm",
    ),
    "promoted_recompressed": (
        "promoted_recompressed_pages",
        COUNTER,
        "promotions: reads of pages stored by a secondary algorithm",
    ),
    "promoted_backed": (
        "promoted_backed_pages",
        COUNTER,
        "promotions: reads of written-back pages (rewrites not counted)",
    ),
    "promotion_rate_pct_min": (
        "promotion_rate_pct_min",
        GAUGE,
        "cold-page promotions per minute in percent of the pages stored (averaged over 60 s)",
    ),
    "cold_age_s": (
        "cold_age_s",
        GAUGE,
        "age in seconds past which a page is cold (recompressed; written back at twice it "
        "with both tiers)",
    ),
    "cold_recompressed_bytes": (
        "cold_recompressed_bytes",
        GAUGE,
        "cold tier 1: compressed bytes of the pages stored by a secondary algorithm",
    ),
    "cold_backed_bytes": (
        "cold_backed_bytes",
        GAUGE,
        "cold tier 2: bytes of pages written back to the backing file",
    ),
    "cold_passes": ("cold_passes", COUNTER, "passes of the cold-page sweeper over the slots"),
    "cold_swept_pages": (
        "cold_swept_pages",
        COUNTER,
        "cold pages the sweeper tried to recompress (recompressed or found incompressible)",
    ),
    "cold_superseded": (
        "cold_superseded_pages",
        COUNTER,
        "cold pages the sweeper skipped: rewritten or changed since its scan",
    ),
    "cold_writeback_runs": (
        "cold_writeback_runs",
        COUNTER,
        "idle writeback runs the cold-page sweeper asked for",
    ),
    "checksum_errors": (
        "checksum_errors",
        COUNTER,
        "reads whose page did not match its checksum (answered EIO)",
    ),
    "stable_writes": (
        "stable_writes",
        GAUGE,
        "1 if writes are snapshotted before an asynchronous compression",
    ),
    # async compression
    "workers": ("workers", GAUGE, "compression worker threads"),
    "pending_pages": (
        "pending_pages",
        GAUGE,
        "pages accepted and waiting for a compression worker",
    ),
    "pending_limit": (
        "pending_limit_bytes",
        GAUGE,
        "most uncompressed data waiting for workers, 0 when inline",
    ),
    "pages_staged": ("pages_staged", COUNTER, "pages handed to compression workers"),
    "pages_superseded": (
        "pages_superseded",
        COUNTER,
        "staged pages overwritten before a worker installed them",
    ),
    "pages_compressed_async": (
        "pages_compressed_async",
        COUNTER,
        "pages compressed and installed by workers",
    ),
    "worker_backlog": (
        "worker_backlog_batches",
        GAUGE,
        "write batches submitted to workers and not done",
    ),
    "worker_errors": ("worker_errors", COUNTER, "batches a compression worker failed on"),
    "worker_trims": (
        "worker_trims",
        COUNTER,
        "heap trims by the compression workers once a burst was compressed",
    ),
    "backpressure_inline": (
        "backpressure_inline",
        COUNTER,
        "writes compressed inline because pending_limit was reached",
    ),
    "fua_inline": ("fua_inline", COUNTER, "FUA writes compressed inline"),
    # writeback
    "backing_blocks": ("backing_blocks", GAUGE, "4 KiB blocks in the backing file"),
    "backing_used_blocks": ("backing_used_blocks", GAUGE, "backing file blocks holding a page"),
    "backing_touched_blocks": ("backing_touched_blocks", GAUGE, "backing file blocks ever written"),
    "bd_write_errors": ("bd_write_errors", COUNTER, "failed writes to the backing file"),
    "bd_full_events": ("bd_full_events", COUNTER, "writebacks that found the backing file full"),
    "writeback_runs": ("writeback_runs", COUNTER, "writeback commands and policy passes run"),
    "writeback_superseded": (
        "writeback_superseded_pages",
        COUNTER,
        "pages rewritten while being written back (kept in RAM)",
    ),
    "writeback_failed": (
        "writeback_failed_pages",
        COUNTER,
        "pages a writeback could not write (kept in RAM)",
    ),
    "policy_runs": ("policy_runs", COUNTER, "automatic writeback passes"),
    "throttled_writes": ("throttled_writes", COUNTER, "writes that waited for automatic writeback"),
    "throttle_skipped": (
        "throttle_skipped_writes",
        COUNTER,
        "writes above the high watermark that did not wait: writeback was stalled",
    ),
    "writeback_stalled": (
        "writeback_stalled",
        GAUGE,
        "1 while automatic writeback cannot progress (backing file full, writeback_limit "
        "used up, write errors)",
    ),
    "writeback_stalls": ("writeback_stalls", COUNTER, "times automatic writeback stalled"),
    "bd_blocks": (
        "bd_blocks",
        GAUGE,
        "backing blocks the written-back pages occupy (fewer than bd_count when packed)",
    ),
    "writeback_compressed": (
        "writeback_compressed",
        GAUGE,
        "1 if written-back pages keep their compressed form, packed",
    ),
    "bd_packed_bytes": ("bd_packed_bytes", GAUGE, "compressed bytes of packed written-back pages"),
    "bd_pack_fill_percent": (
        "bd_pack_fill_percent",
        GAUGE,
        "live bytes of packed backing blocks, percent of their size",
    ),
    "bd_dead_blocks": (
        "bd_dead_blocks",
        GAUGE,
        "packed backing blocks holding freed objects beside live ones (to repack)",
    ),
    "bd_repack_runs": ("bd_repack_runs", COUNTER, "repack runs of packed backing blocks"),
    "bd_repacked_blocks": (
        "bd_repacked_blocks",
        COUNTER,
        "packed backing blocks rewritten to drop freed objects",
    ),
    "bd_repacked_pages": (
        "bd_repacked_pages",
        COUNTER,
        "packed pages moved to new backing blocks by repacking",
    ),
    "backing_discarded_blocks": (
        "backing_discarded_blocks",
        COUNTER,
        "freed backing blocks punched out (discarded) before reuse",
    ),
    "backing_discard_errors": (
        "backing_discard_errors",
        COUNTER,
        "backing blocks that could not be discarded",
    ),
    "bd_auth_errors": (
        "bd_auth_errors",
        COUNTER,
        "encrypted backing blocks that failed authentication on read (EIO)",
    ),
    "bd_checksum_errors": (
        "bd_checksum_errors",
        COUNTER,
        "plain backing blocks that did not match their check on read (EIO)",
    ),
    # the remote tier (engine/remote.py), only with --backing-uri
    "remote_connected": (
        "remote_connected",
        GAUGE,
        "1 while the remote tier's export answers, 0 while disconnected (writeback stalls)",
    ),
    "remote_held_bytes": (
        "remote_held_bytes",
        GAUGE,
        "written-back pages held on the remote export",
    ),
    "remote_export_bytes": ("remote_export_bytes", GAUGE, "size of the remote export"),
    "remote_read_errors": (
        "remote_read_errors",
        COUNTER,
        "reads of remote pages that failed or timed out (EIO for that request)",
    ),
    "remote_read_timeouts": (
        "remote_read_timeouts",
        COUNTER,
        "reads of remote pages that waited --backing-timeout and failed",
    ),
    "remote_disconnects": ("remote_disconnects", COUNTER, "connections to the remote lost"),
    "remote_reconnects": ("remote_reconnects", COUNTER, "connections to the remote regained"),
    "remote_write_pending_pages": (
        "remote_write_pending_pages",
        GAUGE,
        "written-back pages sent to the remote and not yet acknowledged (kept sealed in RAM)",
    ),
    "remote_write_failures": (
        "remote_write_failures",
        COUNTER,
        "remote writes refused or lost with their connection (sent again, never dropped)",
    ),
    "remote_write_timeouts": (
        "remote_write_timeouts",
        COUNTER,
        "remote writes not acknowledged within --backing-timeout",
    ),
    "remote_quarantined_blocks": (
        "remote_quarantined_blocks",
        GAUGE,
        "remote blocks never reused: a write or trim there timed out and may still land",
    ),
    "remote_read_latency_p50_seconds": (
        "remote_read_latency_p50_seconds",
        GAUGE,
        "median latency of the last 1024 remote page reads",
    ),
    "remote_read_latency_p99_seconds": (
        "remote_read_latency_p99_seconds",
        GAUGE,
        "99th percentile latency of the last 1024 remote page reads",
    ),
    "remote_write_latency_p50_seconds": (
        "remote_write_latency_p50_seconds",
        GAUGE,
        "median latency of the last 1024 remote page writes",
    ),
    "remote_write_latency_p99_seconds": (
        "remote_write_latency_p99_seconds",
        GAUGE,
        "99th percentile latency of the last 1024 remote page writes",
    ),
}

# A knob's running value (options.Runtime.stat of a row of the option table):
# a gauge named after the row's field, which carries its unit, with the row's
# metric_help; declared in the row, not here.
for _rows in KNOBS.values():
    for _opt in _rows:
        if _opt.runtime is not None and _opt.runtime.stat is not None:
            METRICS[_opt.runtime.stat] = (_opt.field, GAUGE, _opt.runtime.metric_help or _opt.help)

# Text stats: labels of zramd_device_info.
INFO_LABELS = (
    "comp_algorithm",
    "compress_mode",
    "recomp_algorithm",
    "backing_file",
    "backing_encryption",
    "backing_tier",
)
# Stats deliberately not exported, and why.
NOT_EXPORTED = {
    "bd_last_error": "free text (the last backing-file error): in zramd stats --json",
    "instances": "a count added by zramd stats when it sums striped instances",
    "writeback_stall_reason": "free text (why writeback is stalled): see writeback_stalled",
    "cold_state": "free text (what the cold-page sweeper does): see cold_age_s",
    "cold_last_error": "free text (the sweeper's last error): in zramd stats --json",
}


def device_name(control_path: str) -> str:
    """The ``device`` label: the NBD socket path (control path minus .ctl)."""
    return control_path[:-4] if control_path.endswith(".ctl") else control_path


def families(stats_by_device: list[tuple[str, dict | None]]):
    """Metric families for ``[(device, stats or None if unreachable)]``."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    up = GaugeMetricFamily(
        PREFIX + "up", "1 if the device answered on its control socket", labels=["device"]
    )
    info = GaugeMetricFamily(
        PREFIX + "device_info",
        "the device's algorithms, mode and backing file (always 1)",
        labels=["device", *INFO_LABELS],
    )
    fams: dict[str, Any] = {}
    for key, (name, metric_type, text) in METRICS.items():
        cls = CounterMetricFamily if metric_type == COUNTER else GaugeMetricFamily
        fams[key] = cls(PREFIX + name, text, labels=["device"])
    for device, stats in stats_by_device:
        up.add_metric([device], 1 if stats is not None else 0)
        if stats is None:
            continue
        info.add_metric([device, *(str(stats.get(k) or "") for k in INFO_LABELS)], 1)
        for key, fam in fams.items():
            value = stats.get(key)
            if isinstance(value, bool):
                value = int(value)
            if isinstance(value, (int, float)):
                fam.add_metric([device], value)
    yield up
    yield info
    for fam in fams.values():
        if fam.samples:
            yield fam


class StatsCollector:
    """A prometheus_client collector: at each scrape, the stats of every
    control socket in ``targets`` ([(device label, control path)])."""

    def __init__(self, targets: list[tuple[str, str]], timeout: float = 5.0):
        self.targets = list(targets)
        self.timeout = timeout

    def read(self) -> list[tuple[str, dict | None]]:
        """[(device, stats)] now; None for a server that does not answer."""
        results: list[tuple[str, dict | None]] = []
        for device, path in self.targets:
            try:
                results.append((device, call(path, "stats", timeout=self.timeout)))
            except (ControlError, ValueError):
                results.append((device, None))
        return results

    def collect(self):
        yield from families(self.read())


def exposition(stats_by_device: list[tuple[str, dict | None]]) -> str:
    """The text exposition of already-read stats (``zramd stats --format
    prometheus``, for node_exporter's textfile collector)."""
    from prometheus_client.core import CollectorRegistry
    from prometheus_client.exposition import generate_latest

    class _Once:
        def collect(self):
            yield from families(stats_by_device)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Once())
    return generate_latest(registry).decode()


def parse_address(text: str, allow_remote: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); see options.parse_metrics_address."""
    return parse_metrics_address(text, allow_remote)


class MetricsServer:
    """The HTTP endpoint: zramd/scrape.py's bounded server of one page, the
    exposition of ``targets``' stats, read again at most every
    ``scrape.CACHE_SECONDS`` over one control connection at a time."""

    def __init__(self, host: str, port: int, targets: list[tuple[str, str]]):
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        collector = StatsCollector(targets)
        self.cache = scrape.PageCache(lambda: exposition(collector.read()).encode())
        try:
            self._server = scrape.PageServer(
                host,
                port,
                self.cache,
                CONTENT_TYPE_LATEST,
                # a scrape waits for a read in flight as long as that read may take
                wait_seconds=collector.timeout * len(collector.targets) + 1,
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
            ) from None
        self.host = host
        self.port = self._server.port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        self._server.stop()

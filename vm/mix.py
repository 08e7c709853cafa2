"""The request mix: which request sizes a guest kernel sends while it swaps.

``StatsProxy`` runs nbdkit's nbd plugin under its stats filter between the
guest and the server under test, one proxy per server socket::

    guest -> PROXY.sock  nbdkit --filter=stats nbd socket=SERVER.sock  -> server

Every request passes through unchanged; when the proxy stops (SIGTERM,
nbdkit unloads the filter) the stats filter writes its statsfile. One
thread (the run's) starts and stops it.

``parse_stats`` turns that file into ``{op: OpStats}``; ``op_mix`` turns one
operation into ``{size_bytes: share}``; ``path_mix`` and ``write_mix`` make the
bench's swap-mix file (docs/bench/swap-mix.md)::

    {"measured": "<one sentence>",
     "paths": {"qemu": {"read": {"32768": 0.93, ...}, "write": {...},
                        "requests": {"read": N, "write": N}},
               "nbd": {...}}}

``merge_stats`` sums statsfiles (instances, rounds); ``render_markdown``
writes docs/bench/swap-mix.md. Pure functions but for the proxy; plain
data, no locking.

What the stats filter gives (nbdkit 1.32, seen in its output and source):
per operation the request count, and a histogram of request sizes by
power-of-two bucket ("15 bits" = 32768 to 65535 bytes) with each bucket's
request count and total bytes (in human units, 3 to 6 significant digits).
A bucket's size here is its mean request size rounded to a whole page (all
of a swap device's requests are whole pages, so a bucket holding one size
reads back as exactly that size). Two buckets with the same request count
collide in the filter's table and only one is printed; the requests no
printed bucket accounts for are ``OpStats.unlisted``, and what the printed
buckets leave of the operation's bytes gives their size
(``OpStats.unlisted_bucket``).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from zramd import process

PAGE_BYTES = 4096
# Print every bucket, not the filter's default 95th percentile.
STATS_THRESHOLD_PERCENT = 100
# Sizes below this share of an operation's requests are dropped from the
# mix and the rest renormalised (docs/bench/swap-mix.md#how-it-was-measured).
MIN_SHARE = 0.005
SHARE_DIGITS = 4
OPS = ("read", "write", "trim", "zero")
# The VM harness's guest device kinds (vm/guest.py) -> the mix file's path names.
PATH_NAMES = {"vda": "qemu", "nbd": "nbd"}

_UNITS = {"bytes": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
_OP_LINE = re.compile(r"^(\w+): (\d+) ops, [\d.]+ s, ([\d.]+) (bytes|KiB|MiB|GiB|TiB)\b")
_BUCKET_LINE = re.compile(
    r"^\s+(\d+) bits:\s+[\d.]+% \((\d+) reqs, ([\d.]+) (bytes|KiB|MiB|GiB|TiB) total\)"
)
_OTHER_LINE = re.compile(r"^\s+other sizes:\s+[\d.]+% \((\d+) reqs,")


@dataclass
class Bucket:
    """One power-of-two size bucket: 2**bits <= size < 2**(bits+1)."""

    bits: int
    requests: int
    total_bytes: float  # as printed: rounded to 2 decimals of its unit

    def size_bytes(self) -> int:
        """The bucket's mean request size, rounded to a whole page when a page
        or more, kept inside the bucket."""
        low, high = 1 << self.bits, (2 << self.bits) - 1
        mean = self.total_bytes / self.requests
        if low >= PAGE_BYTES:
            high -= PAGE_BYTES - 1
            mean = round(mean / PAGE_BYTES) * PAGE_BYTES
        return int(min(max(round(mean), low), high))


@dataclass
class OpStats:
    """One operation's lines of the statsfile."""

    requests: int
    total_bytes: float
    buckets: list[Bucket] = field(default_factory=list)
    other_requests: int = 0  # the filter's "other sizes" line (below its threshold)

    @property
    def unlisted(self) -> int:
        """Requests in no printed bucket ("other sizes" and collided buckets)."""
        return self.requests - sum(b.requests for b in self.buckets)

    def unlisted_bucket(self) -> Bucket | None:
        """The unlisted requests as one bucket, from what the printed ones
        leave of the operation's requests and bytes (None when all are
        printed). A single collided bucket comes back as itself, to the
        precision of the printed byte totals; several as their mean."""
        if self.unlisted <= 0:
            return None
        left_bytes = self.total_bytes - sum(b.total_bytes for b in self.buckets)
        mean_bytes = max(left_bytes / self.unlisted, 1.0)
        return Bucket(int(mean_bytes).bit_length() - 1, self.unlisted, mean_bytes * self.unlisted)

    def all_buckets(self) -> list[Bucket]:
        """The printed buckets, and the unlisted requests as one more."""
        extra = self.unlisted_bucket()
        return self.buckets + ([extra] if extra else [])


def _bytes(number: str, unit: str) -> float:
    return float(number) * _UNITS[unit]


def parse_stats(text: str) -> dict[str, OpStats]:
    """The statsfile's operations (read, write, trim, zero, flush, extents,
    whichever had requests) by name; the "total" line is not one of them.
    ValueError when a bucket line comes before any operation line."""
    ops: dict[str, OpStats] = {}
    current: OpStats | None = None
    for line in text.splitlines():
        m = _OP_LINE.match(line)
        if m:
            name, requests, number, unit = m.groups()
            current = None
            if name != "total":
                current = ops[name] = OpStats(int(requests), _bytes(number, unit))
            continue
        m = _BUCKET_LINE.match(line)
        if m:
            if current is None:
                raise ValueError(f"stats: a size bucket outside an operation: {line!r}")
            bits, requests, number, unit = m.groups()
            current.buckets.append(Bucket(int(bits), int(requests), _bytes(number, unit)))
            continue
        m = _OTHER_LINE.match(line)
        if m and current is not None:
            current.other_requests = int(m.group(1))
    return ops


def merge_stats(parts: list[dict[str, OpStats]]) -> dict[str, OpStats]:
    """Several statsfiles (striped instances, rounds) as one: counts and
    bytes summed per operation and per bucket, each file's unlisted
    requests first made the bucket they come back as."""
    out: dict[str, OpStats] = {}
    for part in parts:
        for name, op in part.items():
            into = out.setdefault(name, OpStats(0, 0.0))
            into.requests += op.requests
            into.total_bytes += op.total_bytes
            into.other_requests += op.other_requests
            for b in op.all_buckets():
                same = [x for x in into.buckets if x.bits == b.bits]
                if same:
                    same[0].requests += b.requests
                    same[0].total_bytes += b.total_bytes
                else:
                    into.buckets.append(Bucket(b.bits, b.requests, b.total_bytes))
    return out


def op_mix(op: OpStats | None, min_share: float = MIN_SHARE) -> dict[str, float]:
    """{size in bytes (a string): share of the operation's requests}, largest
    share first: shares of all its requests (the unlisted ones as one more
    bucket), those below ``min_share``
    dropped, the rest renormalised to sum 1 and rounded to SHARE_DIGITS
    places (the largest absorbs the rounding). {} without requests."""
    if op is None or op.requests == 0:
        return {}
    counts: dict[int, int] = {}
    for b in op.all_buckets():
        counts[b.size_bytes()] = counts.get(b.size_bytes(), 0) + b.requests
    kept = {size: n for size, n in counts.items() if n / op.requests >= min_share}
    if not kept:
        return {}
    total = sum(kept.values())
    order = sorted(kept, key=lambda size: (-kept[size], size))
    shares = {str(size): round(kept[size] / total, SHARE_DIGITS) for size in order}
    first = str(order[0])
    shares[first] = round(1.0 - sum(v for k, v in shares.items() if k != first), SHARE_DIGITS)
    return shares


def path_mix(stats: dict[str, OpStats]) -> dict:
    """One path's entry of the mix file."""
    return {
        "read": op_mix(stats.get("read")),
        "write": op_mix(stats.get("write")),
        "requests": {op: stats[op].requests if op in stats else 0 for op in ("read", "write")},
    }


def coverage(stats: dict[str, OpStats]) -> dict[str, dict]:
    """Per operation: requests, and how many no printed bucket accounts for
    (for results.json and the docs page; the mix renormalises them away)."""
    return {
        name: {"requests": op.requests, "unlisted": op.unlisted, "bytes": round(op.total_bytes)}
        for name, op in stats.items()
        if name in OPS
    }


def write_mix(path: Path, measured: str, paths: dict[str, dict]) -> dict:
    """Writes the mix file (``paths``: path name -> path_mix()); returns it."""
    doc = {"measured": measured, "paths": paths}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def measured_sentence(
    mem_mib: int, hog_mib: int, passes: int, server: str = "zramd", rounds: int = 1
) -> str:
    times = "once" if rounds == 1 else f"{rounds} times per path, summed"
    return (
        f"A qemu TCG guest with {mem_mib} MiB RAM swapping onto {server} while a "
        f"{hog_mib} MiB hog ran {passes} passes (fill, rewrite, verify), {times}, "
        f"each request counted by nbdkit's stats filter in an nbd-plugin proxy in "
        f"front of the server."
    )


def _bucket_of(size_bytes: int) -> int:
    return size_bytes.bit_length() - 1


def _bucket_share(shares: dict[str, float], bits: int) -> float:
    """A round's share of one power-of-two bucket (its sizes summed)."""
    return sum(v for k, v in shares.items() if _bucket_of(int(k)) == bits)


def _cell(share: float | None, rounds: list[float]) -> str:
    if share is None:
        return "-"
    cell = f"{100 * share:.2f}%"
    if len(rounds) > 1:
        cell += f" ({100 * min(rounds):.2f}-{100 * max(rounds):.2f})"
    return cell


def mix_table(entry: dict, rounds: list[dict] | None = None) -> list[str]:
    """One path's Markdown table: size, share of reads, share of writes, and
    with several rounds each round's share of that size's bucket, min-max."""
    rounds = rounds or []
    sizes = sorted({int(k) for op in ("read", "write") for k in entry[op]})
    lines = [
        "| request size (bytes) | KiB | share of reads | share of writes |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for size in sizes:
        cells = []
        for op in ("read", "write"):
            per_round = [_bucket_share(r[op], _bucket_of(size)) for r in rounds]
            cells.append(_cell(entry[op].get(str(size)), per_round))
        lines.append(f"| {size} | {size / 1024:g} | {cells[0]} | {cells[1]} |")
    n = entry["requests"]
    lines.append(f"| requests | | {n['read']} | {n['write']} |")
    return lines


def _human(nbytes: float) -> str:
    return f"{nbytes / 1024:.1f} KiB" if nbytes < 1 << 20 else f"{nbytes / (1 << 20):.1f} MiB"


def _mean_line(pooled: dict) -> str:
    """The mean request size per operation, all rounds together."""
    parts = [
        f"{op}s {_human(c['bytes'] / c['requests'])} ({c['requests']} requests)"
        for op, c in pooled.items()
        if c["requests"]
    ]
    return "Mean request size: " + ", ".join(parts) + "." if parts else ""


def _run_lines(run: dict) -> list[str]:
    """What the page says about one path's rounds."""
    rounds = run.get("rounds", [])
    mean = _mean_line(run.get("pooled") or {})
    out = [mean, ""] if mean else []
    for i, r in enumerate(rounds, 1):
        cov = r.get("coverage") or {}
        ops = ", ".join(
            f"{op} {c['requests']}" + (f" ({c['unlisted']} unlisted)" if c["unlisted"] else "")
            for op, c in cov.items()
        )
        out.append(
            f"- round {i}: the guest swapped out {r.get('pages_out')} pages and in "
            f"{r.get('pages_in')} during the hog, in {r.get('elapsed_s')} s (qemu start "
            f"to exit); requests: {ops}"
        )
    return out + ([""] if out else [])


def render_markdown(doc: dict, runs: dict[str, dict], command: str, versions: str) -> str:
    """docs/bench/swap-mix.md from the mix file and, per path, its runs
    (``{"target": T, "rounds": [{"mix": path_mix(), "pages_out": N,
    "pages_in": N, "elapsed_s": S, "coverage": coverage()}, ...]}``)."""
    out = [
        "# Swap request mix",
        "",
        "<!-- Generated by `make swap-mix` (vm/run.py --request-mix); edits are overwritten. -->",
        "",
        "Which request sizes a real guest kernel sends to the NBD server while it",
        "swaps, on both NBD paths of the VM test; bench/swap_mix.json holds the",
        "same numbers for the bench to replay. A share is of all the rounds'",
        "requests together; in brackets, the lowest and highest share of that",
        "size's power-of-two bucket in one round.",
        "",
    ]
    for name, entry in doc["paths"].items():
        run = runs.get(name, {})
        mixes = [r["mix"] for r in run.get("rounds", []) if r.get("mix")]
        out += [f"## Path `{name}`: {run.get('target', '?')}", ""]
        out += [*mix_table(entry, mixes), "", *_run_lines(run)]
    out += [
        "## How it was measured",
        "",
        "```",
        command,
        "```",
        "",
        doc["measured"],
        f"Versions: {versions}.",
        "",
        "The proxy, `nbdkit -f -U PROXY --filter=stats nbd socket=SERVER "
        f"statsfile=FILE statsthreshold={STATS_THRESHOLD_PERCENT}`, sits between "
        "qemu (its NBD client, or the user-mode forwarding the guest's nbd "
        "driver goes through) and the zramd server; it stops after the guest, "
        "and the stats filter writes the file that vm/mix.py reads. The "
        "targets run in turn, round after round. Through the proxy the guest "
        "sees the server's own export: size, flags and block sizes "
        "(tests/e2e/test_swap_mix.py).",
        "",
        "- The stats filter counts requests in power-of-two buckets (2^n to "
        "2^(n+1)-1 bytes) with each bucket's total bytes; a size here is its "
        "bucket's mean request size, rounded to a whole page. A bucket of one "
        "size (the reads of 32 KiB) is that size exactly; a bucket that mixes "
        "sizes (the large writes of qemu's path) shows as its mean.",
        "- nbdkit prints only one of two buckets with the same request count; "
        "the requests no printed bucket holds (unlisted), and the bytes the "
        "printed ones leave, are one more bucket.",
        f"- Shares are of an operation's requests; sizes under {100 * MIN_SHARE:g}% "
        "are dropped and the rest renormalised (4 places). The requests counts "
        "are all of them, summed over the rounds.",
        "",
    ]
    return "\n".join(out)


class StatsProxy:
    """nbdkit's nbd plugin under the stats filter in front of each of the
    server's sockets: start() returns once every proxy socket exists, stop()
    ends them with SIGTERM (so the filter writes its file) and parses it."""

    def __init__(self, upstream: list[Path], workdir: Path, log_path: Path):
        self.upstream = upstream
        self.sockets = [workdir / f"mix{i}.sock" for i in range(len(upstream))]
        self.statsfiles = [workdir / f"mix{i}.stats" for i in range(len(upstream))]
        self.log_path = log_path
        self.procs: list[process.ServerProcess] = []
        self.texts: list[str] = []

    def command(self, i: int) -> list[str]:
        return [
            "nbdkit",
            "-f",
            "-U",
            str(self.sockets[i]),
            "--filter=stats",
            "nbd",
            f"socket={self.upstream[i]}",
            f"statsfile={self.statsfiles[i]}",
            f"statsthreshold={STATS_THRESHOLD_PERCENT}",
        ]

    def start(self, timeout_s: float = 30) -> list[Path]:
        for i in range(len(self.upstream)):
            proc = process.ServerProcess(self.command(i), [self.sockets[i]], self.log_path)
            self.procs.append(proc)
            proc.start(timeout_s)
        return self.sockets

    def alive(self) -> bool:
        return bool(self.procs) and all(p.alive() for p in self.procs)

    def stop(self, timeout_s: float = 20) -> dict[str, OpStats]:
        """Stops every proxy; their stats merged. RuntimeError when one did
        not exit on SIGTERM or wrote no stats."""
        codes = [p.stop(timeout_s) for p in self.procs]
        self.procs = []
        bad = [rc for rc in codes if rc not in (0, -signal.SIGTERM, None)]
        if bad:
            raise RuntimeError(f"stats proxy exited with status {bad[0]} on SIGTERM")
        self.texts = []
        for f in self.statsfiles:
            if not f.exists() or not f.read_text().strip():
                raise RuntimeError(f"stats proxy wrote no stats to {f.name}")
            self.texts.append(f.read_text())
        return merge_stats([parse_stats(t) for t in self.texts])


def nbdkit_has_nbd_plugin() -> tuple[bool, str]:
    """Whether nbdkit here has the nbd plugin and the stats filter."""
    try:
        p = subprocess.run(
            ["nbdkit", "--filter=stats", "nbd", "--version"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    return p.returncode == 0, (p.stderr or p.stdout).strip()[-300:]

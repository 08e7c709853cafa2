"""zramd's benchmark suite: zramd against its peers, side by side in one run.

Entry point: ``bench/run.py`` (``make bench``, ``make bench-quick``). The run
is a list of *sections*; each measures one thing and renders its own tables
and charts into one report:

    matrix    every system (systems.SYSTEMS) x every workload (systems.WORKLOADS)
              on a freshly filled device: IOPS, latency, compression, memory,
              and the targets (ratios against peers measured in the same run)
    scaling   4 KiB random I/O with 1, 2 and 4 NBD connections at the same
              total iodepth, interleaved over rounds
    cpu       server CPU time per 4 KiB request (/proc utime+stime of the
              nbdkit processes) and the throughput it projects on N cores
    scrapes   4 KiB reads with and without a metrics scrape flood, wrapper CPU per scrape
    backing   the cost of --backing-encrypt: writeback MB/s and read-back
              latency with and without encryption, interleaved over rounds
    memory    zramd's real memory (VmRSS above idle) next to kernel zram's
              mem_used_total over fill, rewrite, trims and compaction; the
              --mem-limit overshoot; the fixed footprint; the compression
              ratio at fio compressibility 0-90% and on the corpus
    swap      the request sizes a swapping guest sends (bench/swap_mix.json),
              replayed as swap-out and swap-in, interleaved over rounds
    vm        the VM test's swap workload timed per target (zramd inline and
              async, nbdkit memory, the guest's own zram) on both NBD paths
    cold      the cold-page policy on real program memory under a Zipf read
              trace: memory against kernel zram, the promotion rate against
              its target, hot-path IOPS against no policy, packed writeback
    remote    the cold tier on a local file against a remote NBD export over
              Unix, TCP, TLS and a delay: writeback, read-back, read latency,
              and the swap mix with the tier active

Modules, one job each:

    run.py          command line, SECTIONS (the list of sections), progress, outputs
    context.py      Context (what every section gets) and Progress
    systems.py      System and Workload tables, peers, selection
    servers.py      NBD server command lines (zramd/process.py runs them), zramd stats
    kernel_zram.py  the kernel zram peer (/dev/zramN), under an optional flock
    fio.py          fio command lines and their JSON results
    measure.py      one timed job with CPU per request; the interleaved rounds
                    (rounds, serving, recorded) the sections run jobs in
    fill.py         writing the corpus through NBD or onto a block device
    storage.py      compression ratio and memory per page from stats and RSS
    targets.py      ratios against peers and the targets they are judged by
    matrix.py, scaling.py, cpu.py, baseline.py, backing.py, scrapes.py, memory.py,
                    swap.py, vm_section.py, cold.py, remote.py
                    the sections
    memory_report.py  the memory section's tables, README lines and charts
    stats.py        medians and spreads over rounds
    formats.py      how the report prints numbers (ratios, IOPS, spreads)
    plots.py        PNG charts (matplotlib, Agg)
    report.py       results.md, results.json, docs/bench and README's block
    machine.py      what the run ran on
    corpus.py       the swap-like corpus of real process memory
    null_plugin.py  the Python null plugin (the ceiling of any Python plugin);
                    keep=lz4 makes it the least lz4 store, the floor of any
                    Python plugin that compresses inline

Adding a system: one line in ``systems.SYSTEMS`` (kind "zramd" takes
``zramd serve`` arguments, kind "nbdkit" an nbdkit command line). Every
section that runs a list of systems names them there.

Adding a section: a module with a class that has ``name``, ``title`` and

    run(ctx: Context) -> dict                 measure; the dict goes to results.json
    derive(data: dict) -> None                medians, ratios (rerun by --render)
    markdown(data: dict) -> list[str]         its part of results.md (## headings)
    plots(data: dict, out: Path, title: str) -> list[str]   PNG files written into out
    summary(data: dict) -> list[str]          lines for README's block ([] for none)

then one line in ``run.SECTIONS``. ``--sections NAME`` runs only it, and
``--sections NAME --publish`` replaces only its part of docs/bench/.
Interleave systems over rounds (``measure.rounds``) and report medians with
the spread (``stats.spread``): a shared 2-core machine varies by 30-50% between minutes.

Numbers drift between runs and machines: compare within one run. Nothing in
here asserts a timing; the only published numbers are the files a default
run writes to docs/bench/ and the block it rewrites in README.md.
"""

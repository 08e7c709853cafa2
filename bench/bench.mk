# Benchmarks: zramd against its peers, side by side in one run. Included from
# the top Makefile, which defines VENV, PY and setup. Layout, and how to add
# a system or a section: bench/__init__.py.
#   make bench          full run, about 17 minutes; publishes docs/bench/ and
#                       README.md's generated block (logs in bench/results/)
#   make bench-quick    the whole pipeline in about two minutes (what CI runs);
#                       publishes nothing
# BENCH_ARGS passes options through, e.g.
#   make bench BENCH_ARGS="--sections scaling --rounds 5"
#   make bench BENCH_ARGS="--zram-lock /run/lock/zram.lock"   (zram shared with others)
#   make bench BENCH_ARGS=--list
BENCH_ARGS   ?=

.PHONY: bench bench-quick

# matplotlib comes with the package's `bench` extra, which `setup` installs.
bench: setup
	$(PY) bench/run.py $(BENCH_ARGS)

bench-quick: setup
	$(PY) bench/run.py --quick $(BENCH_ARGS)

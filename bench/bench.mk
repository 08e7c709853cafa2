# Benchmarks (issue 5). Included from the top Makefile, which defines VENV,
# PY and setup.
#   make bench          default run, about 10 minutes; results in
#                       bench/results/<timestamp>/, latest in bench/results/latest.md
#   make bench-quick    the whole pipeline in about a minute (what CI runs)
# BENCH_ARGS passes options through, e.g.
#   make bench BENCH_ARGS="--systems zramd-*,kernel-zram-lz4 --runtime 10"
#   make bench BENCH_ARGS=--list
BENCH_ARGS   ?=

.PHONY: bench bench-quick

# matplotlib comes with the package's `bench` extra, which `setup` installs.
bench: setup
	$(PY) bench/run.py $(BENCH_ARGS)

bench-quick: setup
	$(PY) bench/run.py --quick $(BENCH_ARGS)

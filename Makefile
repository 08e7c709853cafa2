# zramd: `make run` serves a device with sensible defaults, `make test` runs
# the test suite. Both install what they need first (Debian packages, a venv).
VENV    ?= .venv
PY      := $(VENV)/bin/python
ZRAMD   := $(VENV)/bin/zramd
ARGS    ?=

.PHONY: all setup run test test-fast clean

all: setup

setup:
	@tools/bootstrap.sh $(VENV) test,bench

run: setup
	$(ZRAMD) serve $(ARGS)

test: setup
	$(PY) -m pytest -ra $(ARGS)

test-fast: setup
	$(PY) -m pytest -ra -m "not slow" $(ARGS)

include bench/bench.mk
include vm/vm.mk

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info zramd/__pycache__ tests/__pycache__

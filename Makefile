# zramd: `make run` serves a device with sensible defaults, `make test` runs
# the test suite. Both install what they need first (Debian packages, a venv).
VENV    ?= .venv
PY      := $(VENV)/bin/python
ZRAMD   := $(VENV)/bin/zramd
ARGS    ?=

.PHONY: all setup run lint format test test-fast test-unit test-e2e test-debian13 clean

all: setup

setup:
	@tools/bootstrap.sh $(VENV) test,bench

run: setup
	$(ZRAMD) serve $(ARGS)

# Must pass before landing (CONTRIBUTING.md); .ci/run runs it before the tests.
lint: setup
	$(VENV)/bin/ruff check zramd plugin bench vm tools
	$(VENV)/bin/ruff format --check zramd plugin bench vm tools
	$(VENV)/bin/mypy

# Rewrites zramd/, plugin/, bench/, vm/ and tools/ into the shape `make lint` wants.
format: setup
	$(VENV)/bin/ruff check --fix-only zramd plugin bench vm tools
	$(VENV)/bin/ruff format zramd plugin bench vm tools

test: setup
	$(PY) -m pytest -ra $(ARGS)

# The layers (tests/conftest.py marks each folder): unit runs in seconds
# without nbdkit; e2e starts real nbdkit servers; tests/vm boots a qemu
# guest (`make test ARGS=tests/vm`; `make vm-test` is the full comparison).
test-fast test-unit: setup
	$(PY) -m pytest -ra tests/unit $(ARGS)

test-e2e: setup
	$(PY) -m pytest -ra tests/e2e $(ARGS)

# The suite once more in a Debian 13 root (README.md: tested systems).
DEBIAN13_ROOT ?= /var/cache/zramd-debian13
DEBIAN13_CMD  ?= CI=true bash .ci/run
test-debian13:
	nice tools/debian13.sh $(DEBIAN13_ROOT) $(DEBIAN13_CMD)

include bench/bench.mk
include vm/vm.mk

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info zramd/__pycache__ tests/__pycache__

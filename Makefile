# zramd: `make run` serves a device with sensible defaults, `make test` runs
# the test suite. Both install what they need first (Debian packages, a venv).
VENV    ?= .venv
PY      := $(VENV)/bin/python
ZRAMD   := $(VENV)/bin/zramd
ARGS    ?=

.PHONY: all setup run lint format test test-fast test-unit test-e2e test-debian13 install clean

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
# DEBIAN13_CMD is one shell command line run in the copied checkout there,
# e.g. DEBIAN13_CMD="CI=true make test ARGS=tests/e2e/test_cli.py". It
# reaches the script whole and unexpanded by make (through the environment,
# as $(value)), so &&, quotes and $ in it work.
DEBIAN13_ROOT ?= /var/cache/zramd-debian13
DEBIAN13_CMD  ?= CI=true bash .ci/run
test-debian13: export ZRAMD_DEBIAN13_CMD := $(value DEBIAN13_CMD)
test-debian13:
	nice tools/debian13.sh "$(DEBIAN13_ROOT)" "$$ZRAMD_DEBIAN13_CMD"

# `make install`: a `zramd` command on PATH (a two-line script that runs
# this checkout's venv) and the systemd units of contrib/systemd
# (docs/swap.md), their zramd path rewritten to the one installed.
PREFIX  ?= /usr/local
UNITDIR ?= /etc/systemd/system
DESTDIR ?=
UNITS   := $(wildcard contrib/systemd/*.service)
install: setup
	install -d -m 755 $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(UNITDIR)
	printf '#!/bin/sh\nexec %s "$$@"\n' "$(abspath $(ZRAMD))" > $(DESTDIR)$(PREFIX)/bin/zramd.tmp
	chmod 755 $(DESTDIR)$(PREFIX)/bin/zramd.tmp
	mv -f $(DESTDIR)$(PREFIX)/bin/zramd.tmp $(DESTDIR)$(PREFIX)/bin/zramd
	for u in $(UNITS); do \
	  sed 's#/usr/local/bin/zramd#$(PREFIX)/bin/zramd#' $$u > $(DESTDIR)$(UNITDIR)/$$(basename $$u).tmp && \
	  chmod 644 $(DESTDIR)$(UNITDIR)/$$(basename $$u).tmp && \
	  mv -f $(DESTDIR)$(UNITDIR)/$$(basename $$u).tmp $(DESTDIR)$(UNITDIR)/$$(basename $$u); \
	done
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "installed $(DESTDIR)$(PREFIX)/bin/zramd and $(notdir $(UNITS)) in $(DESTDIR)$(UNITDIR)"

include bench/bench.mk
include vm/vm.mk

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info zramd/__pycache__ tests/__pycache__

# `make vm-test`: a real Linux kernel swaps onto zramd in a qemu guest (TCG),
# through qemu's NBD client (virtio disk) and through the guest kernel's nbd
# driver, with every byte verified; the same onto two striped instances
# (zramd serve --instances 2) at equal swap priority, both ways, each
# instance getting a fair share; then the same workload on the reference
# targets (nbdkit's memory plugin on both paths, the guest's own zram).
# The guest is built from Debian packages and cached in vm/cache/ (not in git).
# Included by the main Makefile, which defines VENV, PY and `setup`.
#   make vm-test                          all targets, table + vm/cache/results.json
#   make vm-test VM_TARGETS="zramd-nbd"   some of them (see vm/run.py --help)
#   make vm-test VM_ARGS="--hog-mib 256"  other knobs
#   make swap-mix                         the request sizes the guest sends on
#                                         each NBD path, through nbdkit's stats
#                                         filter: bench/swap_mix.json and
#                                         docs/bench/swap-mix.md
VM_TARGETS ?=
VM_ARGS    ?=
# swap-mix: rounds per path, the two paths in turn (docs/bench/swap-mix.md)
MIX_ROUNDS ?= 3

.PHONY: vm-test vm-guest vm-clean swap-mix

vm-guest:
	vm/build-guest.sh

vm-test: setup vm-guest
	ZRAMD_CLI=$(abspath $(VENV))/bin/zramd $(PY) vm/run.py --no-build $(VM_ARGS) $(VM_TARGETS)

swap-mix: setup vm-guest
	ZRAMD_CLI=$(abspath $(VENV))/bin/zramd nice $(PY) vm/run.py --no-build $(VM_ARGS) \
	  --rounds $(MIX_ROUNDS) --request-mix bench/swap_mix.json --request-mix-md docs/bench/swap-mix.md \
	  zramd-virtio zramd-nbd

vm-clean:
	rm -rf vm/cache

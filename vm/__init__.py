"""zramd's VM test: a real Linux kernel swaps onto zramd in a qemu guest.

Entry point: ``vm/run.py`` (``make vm-test``; tests/vm/test_vm.py drives the
same functions). Modules, one job each:

    run.py      command line, the targets, one guest run per target
    guest.py    the guest image (vm/build-guest.sh), qemu's command line
    console.py  the guest's console protocol: lines -> events (no I/O)
    servers.py  the server under test (zramd or nbdkit memory) and its
                stats sampler thread
    result.py   what a run measured (Result) and the checks that judge it
    held.py     stored pages against the guest's swap in use (slots freed
                but not yet discarded) and peak memory against the guest's
                zram: pure functions over a run's samples
    mix.py      --request-mix: nbdkit's stats filter between guest and
                server, its statsfile -> the request sizes per NBD path
                (bench/swap_mix.json, docs/bench/swap-mix.md)
    report.py   the table printed at the end

Adding a target: one entry in ``run.TARGETS`` (server kind, guest device
kind); a new server kind is a branch in ``servers.TargetServer.command``, a
new guest device kind a branch in ``guest.qemu_command`` and in
vm/guest-init.sh. A new line the guest prints is one event class and one
branch in ``console.parse_line``, with a unit test in tests/unit/.
"""

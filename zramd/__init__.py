"""zramd: a userspace, zram-like compressed RAM block device served over NBD.

The package holds all logic and imports without nbdkit:

- ``units``    size parsing/formatting (``1G``, ``512M``, whole 4 KiB pages)
- ``codecs``   compression backends behind one interface, keyed by name
- ``store``    the page store: slot table, same/huge/compressed pages, stats
- ``checksums`` per-page checksum functions, keyed by name
- ``device``   the front end: inline, async or hybrid compression
- ``workers``  asynchronous compression threads
- ``backing``  the backing file for written-back pages
- ``writeback`` the writeback thread and its automatic policy
- ``options``  the option table: every serve option and runtime knob, one row each
- ``settings`` validated settings shared by the CLI and the nbdkit plugin
- ``config_file`` the TOML file of ``zramd serve --config``
- ``control``  the owner-only control socket (server thread and client)
- ``commands`` control commands (stats, ...) run against a store
- ``pinning``  keeps nbdkit's per-thread Python thread state alive
- ``shutdown`` ends client connections so that nbdkit can exit
- ``swap``     defences for serving swap to the host itself
- ``sockets``  socket and pid-file paths at start (stale, live, not ours), sd_notify
- ``tls``      TLS credential checks and the attach URIs/commands
- ``server``   runs nbdkit with our plugin as a subprocess
- ``cli``      the ``zramd`` command
"""

__version__ = "0.1.0"

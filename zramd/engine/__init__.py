"""The engine: the page store and what it is made of (arena, store, scan,
compaction, codecs, checksums, workers, device, writeback, backing, heap).

The only place where these modules share internals, each through the
contract its own docstring states (docs/design.md#module-layout).  The
engine imports only itself and the top-level leaves (units, libc, nodump);
the outer rooms (cli, server, instances, config, metrics, logs, control)
import the engine, never the other way.  No state, no locking here.
"""

"""Helpers for the end-to-end tests (importable as ``helpers``)."""

from __future__ import annotations

from zramd.control import call
from zramd.server import Server

try:
    import nbd  # libnbd's Python bindings (Debian python3-libnbd)
except ImportError:  # pragma: no cover - make setup installs it
    nbd = None


def connect(server: Server, meta_context: bool = False):
    """A libnbd handle connected to ``server``'s Unix socket."""
    assert nbd is not None, "libnbd Python bindings missing (apt-get install python3-libnbd)"
    h = nbd.NBD()
    if meta_context:
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_unix(server.socket_path)
    return h


def stats(server: Server) -> dict:
    return call(server.control_path, "stats")

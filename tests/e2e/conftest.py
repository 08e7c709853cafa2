"""Fixtures for the end-to-end layer: real nbdkit servers on short-lived
Unix sockets, and libnbd handles connected to them."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from helpers import connect
from zramd.settings import Settings
from zramd.server import Server
from zramd.units import parse_size


@pytest.fixture(autouse=True)
def _needs_nbdkit():
    """Every end-to-end test runs a real nbdkit (directly or via `zramd serve`)."""
    if not shutil.which("nbdkit"):
        pytest.skip("nbdkit not installed (apt-get install nbdkit nbdkit-plugin-python)")


@pytest.fixture
def make_server(sockdir):
    """Factory for servers that are not started yet: make_server(size="64M", ...)."""
    servers = []

    def factory(size="64M", mem_limit="0", **kwargs) -> Server:
        name = f"s{len(servers)}.sock"
        settings = Settings(size_bytes=parse_size(size), mem_limit_bytes=parse_size(mem_limit),
                            socket_path=os.path.join(sockdir, name), **kwargs)
        log = open(os.path.join(sockdir, name + ".log"), "w")
        server = Server(settings, log_file=log)
        servers.append((server, log))
        return server

    yield factory
    for server, log in servers:
        server.stop()
        log.close()


@pytest.fixture
def server(make_server):
    with make_server() as srv:
        yield srv


@pytest.fixture
def h(server):
    handle = connect(server, meta_context=True)
    yield handle
    handle.shutdown()


@pytest.fixture
def small_tmpfs(sockdir):
    """Factory: small_tmpfs("2m") mounts a tmpfs of that size in the test's
    directory and returns its path (a backing file there runs out of disk,
    not of slots); unmounted after the test.  Skips without root."""
    mounts = []

    def factory(size: str) -> str:
        path = os.path.join(sockdir, f"fs{len(mounts)}")
        os.mkdir(path)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                          capture_output=True).returncode:
            os.rmdir(path)
            pytest.skip("cannot mount a small tmpfs here (needs root)")
        mounts.append(path)
        return path

    yield factory
    for path in mounts:
        subprocess.run(["umount", "-l", path])
        os.rmdir(path)

"""Helpers shared by the test layers (importable as ``helpers``)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from zramd.control import call
from zramd.server import Server

try:
    import nbd  # libnbd's Python bindings (Debian python3-libnbd)
except ImportError:  # pragma: no cover - make setup installs it
    nbd = None


def nbdkit_version() -> tuple[int, ...]:
    """The installed nbdkit's version, e.g. (1, 32, 5): some features exist
    only from a version on (nbdkit 1.38 tells Python plugins their peer's
    credentials; 1.42 sends a failed open's message to the client)."""
    out = subprocess.run(["nbdkit", "--version"], capture_output=True, text=True,
                         check=True, timeout=30).stdout.split()
    return tuple(int(part) for part in out[1].split("."))


def connect(server: Server, meta_context: bool = False):
    """A libnbd handle connected to ``server``'s Unix socket."""
    if nbd is None:
        pytest.skip("libnbd Python bindings missing (apt-get install python3-libnbd)")
    h = nbd.NBD()
    if meta_context:
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_unix(server.socket_path)
    return h


def stats(server: Server) -> dict:
    return call(server.control_path, "stats")


def run_threads(target: Callable[..., Any], args: Iterable[Any]) -> None:
    """Run ``target(arg)`` on one thread per arg, all at once, and wait.

    A barrier lines the threads up so they really overlap.  The first
    exception raised in any thread is raised here, after every thread ended.
    """
    args = list(args)
    barrier = threading.Barrier(len(args))
    errors: list[BaseException] = []

    def body(arg):
        try:
            barrier.wait()
            target(arg)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(arg,)) for arg in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def run_fio(server: Server, *args: str) -> dict:
    """One fio job through its nbd engine (libnbd) against ``server``; its
    JSON report's job, checked to have run without error."""
    cmd = ["fio", "--name=verify", "--ioengine=nbd", f"--uri={server.uri}",
           "--output-format=json", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                            cwd=os.path.dirname(server.socket_path))  # fio leaves verify state files
    assert result.returncode == 0, result.stderr[-2000:] + result.stdout[-2000:]
    report = json.loads(result.stdout[result.stdout.index("{"):])
    job = report["jobs"][0]
    assert job["error"] == 0
    return job

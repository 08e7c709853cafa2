"""Test layers and the rules every layer shares.

Layers are folders, and each folder's tests get its marker here:
``tests/unit`` (``unit``: the engine without nbdkit, the whole layer runs in
seconds), ``tests/e2e`` (``e2e``: real nbdkit and real NBD clients) and
``tests/vm`` (``vm``: a qemu guest swapping onto zramd).  ``slow`` marks long
tests inside a layer.  ``make test-fast`` runs ``-m unit``; ``make test`` all.

A test whose optional tool is missing skips with the reason.  In CI
(``CI`` set in the environment, as ``.ci/run`` does) every tool is present,
so a skip there is turned into a failure that names the reason.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

LAYERS = ("unit", "e2e", "vm")
TESTS = Path(__file__).resolve().parent


def skips_fail() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def pytest_collection_modifyitems(config, items):
    for item in items:
        try:
            layer = Path(str(item.fspath)).resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue
        if layer in LAYERS:
            item.add_marker(getattr(pytest.mark, layer))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and skips_fail():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every tool must be present: {reason}"


@pytest.fixture
def sockdir():
    # Unix socket paths must stay under 108 bytes: pytest's tmp_path can be longer.
    path = tempfile.mkdtemp(prefix="zt-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)

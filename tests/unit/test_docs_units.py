"""docs/swap.md describes the shipped systemd units (contrib/systemd) by
name instead of printing copies of them, and the server unit starts zramd
from its config file. (tests/e2e/test_units.py runs systemd-analyze verify
on them as installed; tests/e2e/test_units_boot.py starts them.)"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "contrib" / "systemd"


def test_docs_name_every_shipped_unit_and_copy_none():
    text = (ROOT / "docs" / "swap.md").read_text()
    for unit in sorted(p.name for p in UNITS.iterdir()):
        assert f"`contrib/systemd/{unit}`" in text, unit
    assert "```ini" not in text
    assert not re.search(r"^ExecStart=", text, re.M)


def test_the_server_unit_reads_the_config_file():
    server = (UNITS / "zramd.service").read_text()
    starts = re.findall(r"^ExecStart=(.*)$", server, re.M)
    assert starts == ["/usr/local/bin/zramd serve --config /etc/zramd.toml"]
    template = (UNITS / "zramd@.service").read_text()
    assert re.findall(r"^ExecStart=(.*)$", template, re.M) == [
        "/usr/local/bin/zramd serve --config /etc/zramd/%i.toml"]


def test_shell_recipes_add_swap_only_where_nbd_client_has_it():
    text = (ROOT / "docs" / "swap.md").read_text()
    attaches = re.findall(r"^\s*nbd-client -unix .*$", text, re.M)
    assert attaches and all("$swap" in a and " -swap" not in a for a in attaches), attaches

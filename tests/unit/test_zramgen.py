"""zramd from-zram-generator: the translated TOML loads as a zramd config
and gives the size zram-generator would (its sizes are MiB expressions)."""

import pytest

from zramd import config_file, zramgen
from zramd.settings import ConfigError

GiB = 1 << 30


def load(tmp_path, text, ram_bytes, device=None):
    path = tmp_path / "zramd.toml"
    path.write_text(zramgen.translate(text, device))
    return config_file.load(str(path), ram_bytes=ram_bytes)


@pytest.mark.parametrize(("ram_bytes", "size_bytes"), [(4 * GiB, 2 * GiB), (16 * GiB, 4 * GiB)])
def test_size_is_zram_generators(tmp_path, ram_bytes, size_bytes):
    conf = "[zram0]\nzram-size = min(ram / 2, 4096)\ncompression-algorithm = zstd(level=3)\n"
    values = load(tmp_path, conf, ram_bytes)
    assert values["size_bytes"] == size_bytes
    assert values["algorithm"] == "zstd" and values["level"] == 3 and values["swap"] is True


def test_default_size_unknown_algorithm_and_comments(tmp_path):
    conf = ("[zram0]\ncompression-algorithm = lzo-rle\nswap-priority = 100\n"
            "writeback-device = /dev/sdb2\n")
    text = zramgen.translate(conf)
    assert "swapon --priority 100" in text and "writeback-device = /dev/sdb2" in text
    values = load(tmp_path, conf, 2 * GiB)
    assert values["size_bytes"] == 1 * GiB and values["algorithm"] == "lz4"


def test_sections(tmp_path):
    conf = "[zram0]\nzram-size = 512\n[zram1]\nzram-size = 1024\n"
    assert load(tmp_path, conf, GiB, "zram1")["size_bytes"] == GiB
    with pytest.raises(ConfigError, match=r"no \[zram2\] section"):
        zramgen.translate(conf, "zram2")
    with pytest.raises(ConfigError, match="no \\[zramN\\] section"):
        zramgen.translate("[other]\nx = 1\n")
    with pytest.raises(ConfigError, match="not an expression"):
        zramgen.translate("[zram0]\nzram-size = __import__('os')\n")

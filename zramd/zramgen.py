"""Translate a zram-generator config (/etc/systemd/zram-generator.conf) into
a zramd TOML config, for ``zramd from-zram-generator``.

The mapping (docs/swap.md):

- ``zram-size`` (MiB, an expression of ``ram`` in MiB) -> ``size``: the
  same expression with ``ram`` read as ``(ram / 1M)`` and the result times
  ``1M``, so zramd's byte arithmetic gives the same size.
- ``compression-algorithm`` -> ``algorithm`` (``zstd(level=3)`` -> ``level``
  too); one zramd lacks (lzo-rle, lz4hc, 842, deflate) becomes lz4, said
  in a comment.  Later algorithms of the list (recompression) are not used.
- ``swap-priority`` -> a comment: the priority belongs to swapon
  (zramd-swap.service's ``--priority``).
- ``writeback-device`` -> a comment: zramd writes back to a file it
  creates itself (``backing_file``, ``backing_size``), not to a device.
- any other key -> a comment naming it.

No state; pure functions over the file's text.
"""

from __future__ import annotations

import configparser
import re

from .engine.codecs import CODECS
from .settings import ConfigError

DEFAULT_PATH = "/etc/systemd/zram-generator.conf"
DEFAULT_SIZE = "min(ram / 2, 4096)"  # zram-generator's default zram-size


def size_expression(zram_size: str) -> str:
    """zram-generator's MiB expression as a zramd byte expression."""
    if not re.fullmatch(r"[\sram0-9.+\-*/(),minax]*", zram_size):
        raise ConfigError(f"zram-size {zram_size!r}: not an expression of ram and numbers")
    in_mib = re.sub(r"\bram\b", "(ram / 1M)", zram_size.strip())
    return f"({in_mib}) * 1M"


def _algorithm_lines(value: str) -> list[str]:
    first = value.split()[0] if value.split() else "lz4"
    match = re.fullmatch(r"([\w-]+)(?:\((.*)\))?", first)
    if not match:
        raise ConfigError(f"compression-algorithm {value!r}: not understood")
    name, params = match.group(1), match.group(2) or ""
    lines = []
    if name in CODECS:
        lines.append(f'algorithm = "{name}"')
    else:
        lines.append(f"# compression-algorithm {name}: not in zramd, lz4 instead")
        lines.append('algorithm = "lz4"')
    level = re.search(r"\blevel=(-?\d+)", params)
    if level and name in CODECS:
        lines.append(f"level = {int(level.group(1))}")
    if len(value.split()) > 1:
        lines.append(f"# not translated: recompression algorithms {' '.join(value.split()[1:])}")
    return lines


def translate(text: str, device: str | None = None) -> str:
    """The zramd TOML for one ``[zramN]`` section (the first if ``device`` is
    None); ConfigError says in one line what is wrong."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        raise ConfigError(f"not a zram-generator config: {str(exc).splitlines()[0]}") from None
    sections = [s for s in parser.sections() if re.fullmatch(r"zram\d+", s)]
    if not sections:
        raise ConfigError("no [zramN] section in the zram-generator config")
    name = device or sections[0]
    if name not in sections:
        raise ConfigError(f"no [{name}] section (there are: {', '.join(sections)})")
    section = parser[name]
    lines = [f"# from zram-generator [{name}] (zramd from-zram-generator)"]
    lines.append(f'size = "{size_expression(section.get("zram-size", DEFAULT_SIZE))}"')
    if "compression-algorithm" in section:
        lines += _algorithm_lines(section["compression-algorithm"])
    lines.append("swap = true")
    for key, value in section.items():
        if key in ("zram-size", "compression-algorithm"):
            continue
        if key == "swap-priority":
            lines.append(
                f"# swap-priority = {value}: swapon --priority {value} (zramd-swap.service)"
            )
        elif key == "writeback-device":
            lines.append(
                f"# writeback-device = {value}: zramd writes back to a file it "
                "creates, set backing_file and backing_size instead"
            )
        else:
            lines.append(f"# not translated: {key} = {value}")
    return "\n".join(lines) + "\n"

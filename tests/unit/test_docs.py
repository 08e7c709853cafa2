"""The tree's references to docs/design.md resolve, and nothing in the tree
points at an issue tracker entry instead of a design section."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DESIGN = ROOT / "docs" / "design.md"
SOURCES = [
    "zramd",
    "plugin",
    "bench",
    "vm",
    "tools",
    "tests",
    "docs",
    "README.md",
    "CONTRIBUTING.md",
    "Makefile",
    ".ci",
]
SUFFIXES = {".py", ".md", ".sh", ".mk", ".toml", ""}


EXAMPLES = {"section-name"}  # docs/design.md's own example of a citation


def tree_files():
    """The tracked files (generated and cached ones on disk are not the tree)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", *SOURCES], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
        paths = [ROOT / name for name in out]
    except (OSError, subprocess.CalledProcessError):  # not a checkout: walk the folders
        paths = [p for name in SOURCES for p in sorted((ROOT / name).rglob("*"))]
    for p in paths:
        if p.is_file() and p.suffix in SUFFIXES:
            yield p


def anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_cited_design_section_exists():
    anchors = {anchor(m) for m in re.findall(r"^#+ (.+)$", DESIGN.read_text(), re.M)}
    cited = {}
    for path in tree_files():
        text = path.read_text(errors="replace")
        for name in re.findall(r"design\.md#([A-Za-z0-9_-]+)", text):
            cited.setdefault(name, path.relative_to(ROOT))
        if path == DESIGN:
            for name in re.findall(r"\]\(#([A-Za-z0-9_-]+)\)", text):
                cited.setdefault(name, "docs/design.md")
    missing = {
        name: str(where)
        for name, where in cited.items()
        if name not in anchors and name not in EXAMPLES
    }
    assert not missing, f"cited sections missing from docs/design.md: {missing}"


def test_no_issue_numbers_or_numbered_sections():
    pattern = re.compile(
        r"\bissues? *#?\d+|design\.md,? (section|§) *\d|design\.md \d", re.IGNORECASE
    )
    hits = []
    for path in tree_files():
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if pattern.search(line) and path.name != "test_docs.py":
                hits.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert not hits, "\n".join(hits)

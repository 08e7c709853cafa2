"""zramd/nodump.py: the dumpable flag really clears (in a child process, so
that the test runner itself stays debuggable)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CODE = """
from zramd import nodump
assert nodump.dumpable()
assert nodump.forbid_dumps() is None
assert not nodump.dumpable()
print("ok")
"""


def test_forbid_dumps_clears_the_flag():
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, cwd=ROOT,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr

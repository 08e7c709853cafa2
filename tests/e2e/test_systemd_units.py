"""The shipped systemd units (contrib/systemd), as `make install` installs
them: systemd-analyze verify reads each (the template ones through an
instance) and checks that every command it names exists and is executable,
including the installed `zramd`, which must run."""

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNITS = sorted(os.listdir(os.path.join(ROOT, "contrib", "systemd")))


def test_make_install_then_units_verify(tmp_path):
    prefix, unitdir = tmp_path / "usr", tmp_path / "units"
    done = subprocess.run(["make", "-s", "-C", ROOT, "install", f"PREFIX={prefix}",
                           f"UNITDIR={unitdir}"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(unitdir)) == UNITS
    version = subprocess.run([str(prefix / "bin" / "zramd"), "--version"],
                             capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("zramd "), version
    for unit in UNITS:
        text = (unitdir / unit).read_text()
        assert f"ExecStart={prefix}/bin/zramd " in text or "zramd-swap" in unit, unit
    names = [str(unitdir / u.replace("@.", "@0.")) for u in UNITS]
    verify = subprocess.run(["systemd-analyze", "verify", *names], cwd=unitdir,
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr

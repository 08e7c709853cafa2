"""The guest console protocol parser (vm/console.py): every line kind the
guest prints becomes its event, anything else is ignored, and lines split
across reads come out whole, once."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from vm import console  # noqa: E402
from vm.console import parse_line  # noqa: E402


def test_kv_types():
    assert console.kv("a=1 b=2.5 c=x d=") == {"a": 1, "b": 2.5, "c": "x", "d": ""}


def test_phase_and_guest_lines():
    assert parse_line("ZRAMD-PHASE swapped-off\r") == console.Phase("swapped-off")
    assert parse_line("ZRAMD-RESULT pswpout_before=3 hog_start_s=1.5") == console.GuestResult(
        {"pswpout_before": 3, "hog_start_s": 1.5}
    )
    assert parse_line("ZRAMD-FAIL mkswap failed") == console.GuestFail("ZRAMD-FAIL mkswap failed")
    assert parse_line("ZRAMD-DONE ok=1") == console.Done(1)
    assert parse_line("ZRAMD-DONE ok=0") == console.Done(0)
    assert parse_line("ZRAMD-PROGRESS t=20 pswpin=5 pswpout=9 memfree_kib=812") == (
        console.Progress({"t": 20, "pswpin": 5, "pswpout": 9, "memfree_kib": 812})
    )


def test_hog_lines():
    p = parse_line("HOG-PASS pass=2 action=verify pages=40960 bad_pages=0 seconds=3.250")
    assert p == console.HogPass(
        {"pass": 2, "action": "verify", "pages": 40960, "bad_pages": 0, "seconds": 3.25}
    )
    r = parse_line("HOG-RESULT pages=40960 passes=2 bad_pages=1 bad_bytes=4096 seconds=9.1 ok=0")
    assert isinstance(r, console.HogResult) and r.values["ok"] == 0 and r.values["bad_pages"] == 1
    m = parse_line("HOG-MISMATCH pass=1 page=7 first_offset=0 bad_bytes=4096")
    assert m == console.HogMismatch("HOG-MISMATCH pass=1 page=7 first_offset=0 bad_bytes=4096")


def test_guest_zram_mm_stat():
    line = "HOG-STAT pass=1 file=/sys/block/zram0/mm_stat 100 40 60 0 60 5 0 1 1"
    ev = parse_line(line)
    assert ev == console.GuestZramStat(
        1, dict(zip(console.MM_STAT_FIELDS, [100, 40, 60, 0, 60, 5, 0, 1, 1], strict=False))
    )
    # other stats files, unreadable or short mm_stat lines carry nothing
    assert parse_line("HOG-STAT pass=1 file=/proc/meminfo MemFree: 1") is None
    assert parse_line("HOG-STAT pass=1 file=/sys/block/zram0/mm_stat unreadable") is None
    assert parse_line("HOG-STAT pass=1 file=/sys/block/zram0/mm_stat 1 2 3") is None


def test_other_lines_are_ignored():
    for line in (
        "",
        "[    0.000000] Linux version 6.1.0",
        "ZRAMD-PHASEX y",
        " ZRAMD-DONE ok=1",
        "HOG-PASSED",
    ):
        assert parse_line(line) is None, line


def test_reader_returns_whole_lines_once(tmp_path):
    path = tmp_path / "console.log"
    path.write_bytes(b"boot\r\nZRAMD-PHASE sw")
    reader = console.ConsoleReader(path)
    assert reader.read() == ["boot"]
    assert reader.read() == []
    with open(path, "ab") as f:
        f.write(b"apon\nZRAMD-DONE ok=1\n")
    assert reader.read() == ["ZRAMD-PHASE swapon", "ZRAMD-DONE ok=1"]
    assert reader.read() == []

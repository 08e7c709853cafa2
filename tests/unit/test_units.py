import pytest

from zramd.units import format_size, human_size, parse_device_size, parse_size


@pytest.mark.parametrize("text,expected", [
    ("0", 0), ("4096", 4096), ("1K", 1024), ("1k", 1024), ("4KiB", 4096), ("2M", 2 << 20),
    ("1G", 1 << 30), ("1GB", 1 << 30), (" 3T ", 3 << 40), (123, 123),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "-1", "1.5G", "1X", "ten", "1 G B"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_device_size_must_be_whole_pages():
    assert parse_device_size("8K") == 8192
    with pytest.raises(ValueError, match="greater than 0"):
        parse_device_size("0")
    with pytest.raises(ValueError, match="whole number of 4096-byte pages"):
        parse_device_size("5000")


def test_format_size():
    assert format_size(1 << 30) == "1G"
    assert format_size(4096) == "4K"
    assert format_size(1000) == "1000"
    assert human_size(1536) == "1.5K"
    assert human_size(10) == "10B"


@pytest.mark.parametrize("text", ["99999999T", "8E", "16E", (1 << 63), "9" * 5000, "9" * 25])
def test_parse_size_refuses_past_nbd_limit_in_one_line(text):
    with pytest.raises(ValueError) as exc:
        parse_size(text)
    assert "\n" not in str(exc.value) and len(str(exc.value)) < 200


def test_parse_size_accepts_nbd_limit():
    assert parse_size((1 << 63) - 1) == (1 << 63) - 1


@pytest.mark.parametrize("value", [True, 1.5, [1], None])
def test_parse_size_refuses_non_sizes(value):
    with pytest.raises(ValueError):
        parse_size(value)


def test_device_size_refuses_unservable_page_arrays():
    with pytest.raises(ValueError, match="can never be served"):
        parse_device_size("1P")
    assert parse_device_size("4G") == 4 << 30  # larger than RAM is allowed, like zram

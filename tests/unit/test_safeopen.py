"""zramd.safeopen on real files in a temporary directory."""

from __future__ import annotations

import errno
import os

import pytest

from zramd import safeopen


def make(directory, name="f", mode=0o644, text=b"x = 1\n"):
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def test_opens_a_trusted_regular_file(sockdir):
    fd = safeopen.open_trusted_regular(make(sockdir), "config file")
    try:
        assert os.read(fd, 100) == b"x = 1\n"
    finally:
        os.close(fd)


@pytest.mark.parametrize("mode", [0o664, 0o646])
def test_a_file_writable_by_group_or_others_is_refused(sockdir, mode):
    with pytest.raises(safeopen.UnsafePath, match="writable by others"):
        safeopen.open_trusted_regular(make(sockdir, mode=mode), "config file")


def test_a_link_as_the_name_or_above_it_is_refused(sockdir):
    real = make(sockdir)
    os.symlink(real, os.path.join(sockdir, "link"))
    with pytest.raises(safeopen.UnsafePath, match="is a symbolic link") as info:
        safeopen.open_trusted_regular(os.path.join(sockdir, "link"), "config file")
    assert info.value.errno == errno.ELOOP
    os.symlink(".", os.path.join(sockdir, "here"))
    with pytest.raises(safeopen.UnsafePath, match="goes through"):
        safeopen.walk_to_parent(os.path.join(sockdir, "here", "f"), "config file")


def test_walk_returns_the_parent_and_name(sockdir):
    dir_fd, name = safeopen.walk_to_parent(make(sockdir), "backing file")
    try:
        assert name == "f" and os.path.samestat(os.fstat(dir_fd), os.stat(sockdir))
    finally:
        os.close(dir_fd)


def test_missing_file_is_a_plain_oserror(sockdir):
    with pytest.raises(FileNotFoundError):
        safeopen.open_trusted_regular(os.path.join(sockdir, "missing"), "config file")


def test_non_sticky_world_writable_directory_is_refused_sticky_is_not(sockdir):
    os.chmod(sockdir, 0o777)
    with pytest.raises(safeopen.UnsafePath, match="without the sticky bit"):
        safeopen.open_trusted_regular(make(sockdir), "config file")
    os.chmod(sockdir, 0o1777)
    os.close(safeopen.open_trusted_regular(make(sockdir), "config file"))


def test_fifo_and_directory_are_not_regular_files(sockdir):
    fifo = os.path.join(sockdir, "fifo")
    os.mkfifo(fifo, 0o644)
    for path in (fifo, sockdir):
        with pytest.raises(safeopen.UnsafePath, match="not a regular file"):
            safeopen.open_trusted_regular(path, "config file")


def test_check_owner_only(sockdir):
    path = make(sockdir, mode=0o600)
    safeopen.check_owner_only("backing file", path, os.stat(path))
    os.chmod(path, 0o640)
    with pytest.raises(safeopen.UnsafePath, match="chmod 600"):
        safeopen.check_owner_only("backing file", path, os.stat(path))

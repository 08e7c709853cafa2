"""The backing file holds swapped-out memory: no links followed, owner-only,
freed pages punched out, nothing left after a clean stop, and pages
encrypted at rest on request -- all through real nbdkit and libnbd, with
the file read back as root to look for the data."""

import contextlib
import errno
import os
import shutil
import stat
import subprocess
import sys

import pytest

from helpers import connect, nbd, stats
from zramd.settings import ConfigError
from zramd.control import call

PAGE = 4096
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


def marked_page(tag: bytes) -> bytes:
    """An incompressible page (a huge page: `writeback huge` selects it)
    carrying a marker we can search the file for."""
    marker = b"SECRET<" + tag + b">"
    return (os.urandom(100) + marker + os.urandom(PAGE))[:PAGE]


def marker(tag: bytes) -> bytes:
    return b"SECRET<" + tag + b">"


def file_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def backing_path(sockdir):
    return os.path.join(sockdir, "backing.img")


def writeback_all(server) -> int:
    return call(server.control_path, "writeback", type="huge")["written"]


# -- refusing what is not ours --------------------------------------------------

def test_symlink_is_refused_and_its_target_untouched(make_server, sockdir):
    target = os.path.join(sockdir, "precious")
    with open(target, "wb") as f:
        f.write(b"do not overwrite me")
    os.chmod(target, 0o600)
    link = os.path.join(sockdir, "link.img")
    os.symlink(target, link)
    with pytest.raises(ConfigError, match=r"link\.img is a symbolic link: zramd never follows"):
        make_server(backing_file=link).start()
    # a link in a directory above the file is refused as well
    os.mkdir(os.path.join(sockdir, "real"))
    os.symlink(os.path.join(sockdir, "real"), os.path.join(sockdir, "dirlink"))
    with pytest.raises(ConfigError, match=r"goes through .*/dirlink, which is a symbolic link"):
        make_server(backing_file=os.path.join(sockdir, "dirlink", "b.img")).start()
    assert file_bytes(target) == b"do not overwrite me"
    assert os.stat(target).st_size == 19
    assert os.listdir(os.path.join(sockdir, "real")) == []


def test_symlink_refused_by_the_plugin_itself(sockdir):
    """nbdkit started by hand, without the wrapper's checks: the plugin
    refuses the link too."""
    target = os.path.join(sockdir, "precious")
    with open(target, "wb") as f:
        f.write(b"x" * 100)
    link = os.path.join(sockdir, "link.img")
    os.symlink(target, link)
    from zramd.server import PLUGIN_PATH, Server
    from zramd.settings import Settings
    env = Server(Settings(socket_path=os.path.join(sockdir, "x.sock"))).environment()
    r = subprocess.run(["nbdkit", "-f", "-U", os.path.join(sockdir, "n.sock"), "python",
                        PLUGIN_PATH, "size=1M", f"backing_file={link}"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "symbolic link" in r.stderr
    assert file_bytes(target) == b"x" * 100


def cli_serve(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "zramd.cli", "serve", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("owner,mode,message", [
    (65534, 0o600, "belongs to uid 65534, not to this server's uid 0: refused"),
    (0, 0o640, r"is accessible to group or others \(mode 0640\): chmod 600 it first"),
    (0, 0o604, r"is accessible to group or others \(mode 0604\)"),
])
def test_foreign_or_shared_file_is_refused(sockdir, backing_path, owner, mode, message):
    if os.geteuid() != 0:
        pytest.skip("needs root to make a file owned by another user")
    with open(backing_path, "wb") as f:
        f.write(b"theirs" * 1000)
    os.chown(backing_path, owner, owner)
    os.chmod(backing_path, mode)
    r = cli_serve("--socket", os.path.join(sockdir, "c.sock"), "--backing-file", backing_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"zramd: error: backing file {backing_path}")
    import re
    assert re.search(message, lines[0]), lines[0]
    assert file_bytes(backing_path) == b"theirs" * 1000  # refused before anything was written
    assert not os.path.exists(os.path.join(sockdir, "c.sock"))


def test_new_file_is_owner_only_and_removed_at_clean_stop(make_server, backing_path):
    server = make_server(backing_file=backing_path)
    with server:
        st = os.lstat(backing_path)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == os.geteuid()
        h = connect(server)
        h.pwrite(marked_page(b"created"), 0)
        assert writeback_all(server) == 1
        assert marker(b"created") in file_bytes(backing_path)  # the test can see data
        h.shutdown()
    assert not os.path.exists(backing_path)


# -- freed pages and a clean stop leave nothing -------------------------------------

def test_trimmed_and_rewritten_pages_are_punched_out(make_server, backing_path):
    with make_server(backing_file=backing_path) as server:
        h = connect(server)
        pages = [marked_page(b"page%d" % i) for i in range(4)]
        h.pwrite(b"".join(pages), 0)
        assert writeback_all(server) == 4
        data = file_bytes(backing_path)
        assert all(marker(b"page%d" % i) in data for i in range(4))
        allocated = os.stat(backing_path).st_blocks
        h.trim(PAGE, 1 * PAGE)             # trim: page 1
        h.zero(PAGE, 2 * PAGE)             # write-zeroes: page 2
        h.pwrite(b"new data" * 512, 3 * PAGE)  # a rewrite: page 3
        data = file_bytes(backing_path)
        for i in (1, 2, 3):
            assert marker(b"page%d" % i) not in data, f"page {i} still in the file"
        assert marker(b"page0") in data
        assert os.stat(backing_path).st_blocks < allocated  # holes, not just zeros
        s = stats(server)
        assert s["backing_discarded_blocks"] == 3 and s["backing_discard_errors"] == 0
        assert h.pread(4 * PAGE, 0) == pages[0] + bytes(2 * PAGE) + b"new data" * 512
        h.shutdown()


def test_existing_file_is_emptied_at_clean_stop_and_kept(make_server, backing_path):
    fd = os.open(backing_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.write(fd, marker(b"stale, from a crashed run") * 100)
    os.close(fd)
    with make_server(backing_file=backing_path) as server:
        # what an earlier (crashed) run left is discarded at start
        assert marker(b"stale, from a crashed run") not in file_bytes(backing_path)
        h = connect(server)
        pages = [marked_page(b"kept%d" % i) for i in range(16)]
        h.pwrite(b"".join(pages), 0)
        assert writeback_all(server) == 16
        assert marker(b"kept7") in file_bytes(backing_path)
        h.shutdown()
    st = os.stat(backing_path)
    assert stat.S_IMODE(st.st_mode) == 0o600
    data = file_bytes(backing_path)
    assert data.count(0) == len(data) and st.st_blocks == 0


@contextlib.contextmanager
def loop_device(size_bytes: int, sockdir: str):
    if not shutil.which("losetup") or os.geteuid() != 0:
        pytest.skip("needs root and losetup for a block device")
    image = os.path.join(sockdir, "loop.img")
    with open(image, "wb") as f:
        f.truncate(size_bytes)
    r = subprocess.run(["losetup", "-f", "--show", image], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"no loop device here: {r.stderr.strip()}")
    dev = r.stdout.strip()
    try:
        yield dev, image
    finally:
        subprocess.run(["losetup", "-d", dev])


def test_block_device_freed_pages_discarded_and_zeroed_at_stop(make_server, sockdir):
    with loop_device(8 << 20, sockdir) as (dev, image):
        os.chmod(dev, 0o660)
        with pytest.raises(ConfigError, match=r"accessible to group or others \(mode 0660\)"):
            make_server(size="16M", backing_file=dev).start()
        os.chmod(dev, 0o600)
        with make_server(size="16M", backing_file=dev) as server:
            h = connect(server)
            for i in range(8):
                h.pwrite(marked_page(b"dev%d" % i), i * PAGE)
            assert writeback_all(server) == 8
            with open(dev, "rb") as f:
                assert marker(b"dev5") in f.read(1 << 20)
            h.trim(PAGE, 5 * PAGE)
            with open(dev, "rb") as f:
                data = f.read(1 << 20)
            assert marker(b"dev5") not in data and marker(b"dev4") in data
            assert stats(server)["backing_discarded_blocks"] == 1
            h.shutdown()
        assert os.path.exists(dev)  # a device is kept
        with open(dev, "rb") as f:
            data = f.read()
        assert data.count(0) == len(data)
        assert not any(marker(b"dev%d" % i) in file_bytes(image) for i in range(8))


def test_unprivileged_user_cannot_read_or_write_the_backing_file(make_server, sockdir,
                                                                 backing_path):
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to act as another user")
    os.chmod(sockdir, 0o711)  # others may reach the file: only its own mode protects it
    with make_server(backing_file=backing_path) as server:
        h = connect(server)
        h.pwrite(marked_page(b"nobody"), 0)
        assert writeback_all(server) == 1
        size = os.stat(backing_path).st_size
        read = subprocess.run(NOBODY + ["dd", f"if={backing_path}", "of=/dev/null", "bs=4096",
                                        "count=1"], capture_output=True, text=True)
        assert read.returncode != 0 and "Permission denied" in read.stderr
        write = subprocess.run(NOBODY + ["dd", "if=/dev/zero", f"of={backing_path}", "bs=4096",
                                         "count=1", "conv=notrunc"], capture_output=True, text=True)
        assert write.returncode != 0 and "Permission denied" in write.stderr
        # the same commands as root do work: the test is able to fail
        assert subprocess.run(["dd", f"if={backing_path}", "of=/dev/null", "bs=4096", "count=1"],
                              capture_output=True).returncode == 0
        assert marker(b"nobody") in file_bytes(backing_path)
        assert os.stat(backing_path).st_size == size
        assert h.pread(PAGE, 0)[100:100 + len(marker(b"nobody"))] == marker(b"nobody")
        h.shutdown()


# -- encryption at rest ----------------------------------------------------------

@pytest.mark.parametrize("cipher", ["aes-256-gcm", "chacha20-poly1305"])
def test_encrypted_pages_do_not_appear_in_the_file(make_server, backing_path, cipher):
    with make_server(backing_file=backing_path, backing_encrypt=cipher) as server:
        h = connect(server)
        pages = [marked_page(b"enc%d" % i) for i in range(32)]
        text = (b"plain text that compresses well " * 128)[:PAGE]
        h.pwrite(b"".join(pages), 0)
        h.pwrite(text * 4, 64 * PAGE)
        call(server.control_path, "idle")
        assert call(server.control_path, "writeback", type="idle")["written"] == 36
        data = file_bytes(backing_path)
        assert not any(marker(b"enc%d" % i) in data for i in range(32))
        assert text[:64] not in data and b"plain text" not in data
        assert data[:36 * PAGE].count(0) < 36 * PAGE // 100  # ciphertext is there
        assert h.pread(32 * PAGE, 0) == b"".join(pages)
        assert h.pread(4 * PAGE, 64 * PAGE) == text * 4
        s = stats(server)
        assert s["backing_encryption"] == cipher and s["bd_auth_errors"] == 0
        assert s["bd_reads"] == 36
        h.shutdown()


def test_tampered_block_is_an_eio_and_counted(make_server, backing_path):
    with make_server(backing_file=backing_path, backing_encrypt="aes-256-gcm") as server:
        h = connect(server)
        pages = [marked_page(b"t%d" % i) for i in range(8)]
        h.pwrite(b"".join(pages), 0)
        assert writeback_all(server) == 8  # page i in block i (in page order)
        with open(backing_path, "r+b") as f:
            f.seek(3 * PAGE + 1234)
            byte = f.read(1)
            f.seek(3 * PAGE + 1234)
            f.write(bytes([byte[0] ^ 0x01]))
        with pytest.raises(nbd.Error) as err:
            h.pread(PAGE, 3 * PAGE)
        assert err.value.errnum == errno.EIO
        s = stats(server)
        assert s["bd_auth_errors"] == 1 and s["failed_reads"] == 1
        for i in (0, 1, 2, 4, 5, 6, 7):
            assert h.pread(PAGE, i * PAGE) == pages[i]
        with pytest.raises(nbd.Error):
            h.pread(PAGE, 3 * PAGE)  # still bad: never served as data
        assert stats(server)["bd_auth_errors"] == 2
        h.pwrite(pages[3], 3 * PAGE)  # a rewrite heals the page
        assert h.pread(PAGE, 3 * PAGE) == pages[3]
        h.shutdown()


# -- a page never reads back as other data --------------------------------------

def test_cut_then_regrown_file_is_an_eio_never_zeros(make_server, backing_path):
    """The file is cut below written-back pages, then grows again (later
    writeback lands past the cut): the cut pages read EIO, never the zeros
    the regrown holes hold; the pages kept and the new ones read fine; one
    log line says the file shrank."""
    with make_server(backing_file=backing_path) as server:
        h = connect(server)
        pages = [marked_page(b"k%d" % i) for i in range(1024)]
        h.pwrite(b"".join(pages), 0)
        assert writeback_all(server) == 1024  # page i in block i: 4 MiB of file
        os.truncate(backing_path, 2 << 20)  # blocks 512 and up are cut
        with pytest.raises(nbd.Error) as err:
            h.pread(PAGE, 600 * PAGE)
        assert err.value.errnum == errno.EIO
        more = [marked_page(b"m%d" % i) for i in range(64)]
        h.pwrite(b"".join(more), 2048 * PAGE)
        assert writeback_all(server) == 64  # blocks 1024-1087: the file grows again
        assert os.stat(backing_path).st_size >= 1088 * PAGE
        before = stats(server)
        for i in (512, 600, 1023):
            with pytest.raises(nbd.Error) as err:
                h.pread(PAGE, i * PAGE)
            assert err.value.errnum == errno.EIO
        s = stats(server)
        assert s["failed_reads"] == before["failed_reads"] + 3
        assert s["bd_checksum_errors"] == before["bd_checksum_errors"] + 3
        assert h.pread(512 * PAGE, 0) == b"".join(pages[:512])
        assert h.pread(64 * PAGE, 2048 * PAGE) == b"".join(more)
        h.pwrite(pages[600], 600 * PAGE)  # a rewrite heals the page
        assert h.pread(PAGE, 600 * PAGE) == pages[600]
        h.shutdown()
    with open(server.log_file.name) as f:
        log = f.read()
    assert log.count("shrank") == 1, log


def test_encryption_needs_a_backing_file_and_a_known_cipher(make_server, sockdir):
    with pytest.raises(ConfigError, match="encryption needs a backing file"):
        make_server(backing_encrypt="aes-256-gcm")
    with pytest.raises(ConfigError, match="backing_encrypt must be one of aes-256-gcm, chacha20-poly1305, not 'rot13'"):
        make_server(backing_file=os.path.join(sockdir, "b.img"), backing_encrypt="rot13")


def test_encrypted_reads_racing_rewrites_and_trims_are_never_false_eio(make_server, backing_path):
    """Readers of written-back pages race writers that rewrite and trim them
    (their blocks freed, punched and reused) while writeback runs: every
    read returns the page's old or new data, never an EIO, and nothing is
    counted as tampering."""
    import random
    import threading

    npages = 512
    with make_server(size="16M", backing_file=backing_path,
                     backing_encrypt="aes-256-gcm") as server:
        h = connect(server)
        versions = {i: [marked_page(b"v0-%d" % i)] for i in range(npages)}
        h.pwrite(b"".join(versions[i][0] for i in range(npages)), 0)
        assert writeback_all(server) == npages
        done = threading.Event()
        errors = []

        def writer():
            w = connect(server)
            rng = random.Random(1)
            n = 0
            while not done.is_set():
                i = rng.randrange(npages)
                n += 1
                if n % 3 == 0:
                    w.trim(PAGE, i * PAGE)
                    versions[i].append(bytes(PAGE))
                else:
                    data = marked_page(b"v%d-%d" % (n, i))
                    versions[i].append(data)  # before the write: a reader may see it
                    w.pwrite(data, i * PAGE)
            w.shutdown()

        def reader(seed):
            r = connect(server)
            rng = random.Random(seed)
            while not done.is_set():
                i = rng.randrange(npages)
                try:
                    got = r.pread(PAGE, i * PAGE)
                except nbd.Error as exc:
                    errors.append(f"page {i}: {exc}")
                    break
                if got not in versions[i]:
                    errors.append(f"page {i}: data never written there")
                    break
            r.shutdown()

        threads = [threading.Thread(target=writer)] + [
            threading.Thread(target=reader, args=(s,)) for s in (2, 3)]
        for t in threads:
            t.start()
        for _ in range(5):
            call(server.control_path, "writeback", type="huge")  # rewritten pages out again
        done.set()
        for t in threads:
            t.join()
        assert not errors, errors[:5]
        s = stats(server)
        assert s["bd_auth_errors"] == 0 and s["failed_reads"] == 0
        assert s["backing_discarded_blocks"] > 0 and s["backing_discard_errors"] == 0
        assert s["bd_count"] == s["backing_used_blocks"]  # no leaked blocks
        h.shutdown()


def test_after_kill_9_only_ciphertext_remains_and_the_next_start_empties_it(make_server,
                                                                            backing_path):
    server = make_server(backing_file=backing_path, backing_encrypt="aes-256-gcm")
    server.start()
    h = connect(server)
    h.pwrite(b"".join(marked_page(b"crash%d" % i) for i in range(16)), 0)
    assert writeback_all(server) == 16
    h.shutdown()
    server.proc.kill()  # SIGKILL: no clean stop, the key dies with the process
    server.proc.wait()
    data = file_bytes(backing_path)
    assert os.stat(backing_path).st_blocks > 0 and data[:16 * PAGE].count(0) < 16 * PAGE // 100
    assert not any(marker(b"crash%d" % i) in data for i in range(16))
    server.stop()
    with make_server(backing_file=backing_path, backing_encrypt="aes-256-gcm"):
        assert os.stat(backing_path).st_blocks == 0  # the leftovers are punched at start

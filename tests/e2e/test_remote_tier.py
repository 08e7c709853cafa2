"""The remote cold tier (--backing-uri, zramd/engine/remote.py) against real
NBD servers the tests start: nbdkit memory over a Unix socket and over TCP
with TLS-PSK, qemu-storage-daemon exporting a qcow2 file, nbdkit's error,
delay and pause filters, a remote killed with SIGKILL mid-writeback and
started again empty, and a remote in another network namespace behind a
veth pair with netem delay.  zramd is a real nbdkit too (make_server)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from helpers import connect, stats
from remotes import Pause, Remote
from zramd.control import call
from zramd.engine.remote import RECONNECT_MAX_S, WRITE_WINDOW_PAGES
from zramd.server import ServerError
from zramd.settings import ConfigError

PAGE = 4096
WINDOW = WRITE_WINDOW_PAGES
nbd = pytest.importorskip("nbd", reason="libnbd Python bindings missing (python3-libnbd)")


def pages(n: int) -> list[bytes]:
    """Incompressible pages: writeback type huge takes every one."""
    return [os.urandom(PAGE) for _ in range(n)]


def ctl(server, cmd, **args):
    return call(server.control_path, cmd, **args)


def write_all(h, data: list[bytes], first: int = 0) -> None:
    for i, page in enumerate(data):
        h.pwrite(page, (first + i) * PAGE)


def remote_contents(remote: Remote, nbytes: int) -> bytes:
    h = nbd.NBD()
    h.set_uri_allow_local_file(True)
    h.connect_uri(remote.uri)
    try:
        return h.pread(nbytes, 0)
    finally:
        h.shutdown()


def round_trip(make_server, remote: Remote, n: int = 64, **kwargs) -> dict:
    """Write n pages, write them all back, read them back from the remote
    tier; the export holds only ciphertext.  The final stats."""
    data = pages(n)
    assert n > WRITE_WINDOW_PAGES  # some pages acknowledged: read from the remote
    with make_server(size="16M", backing_uri=remote.uri, **kwargs) as server:
        h = connect(server)
        write_all(h, data)
        r = ctl(server, "writeback", type="huge")
        assert r["written"] == n and r["error"] is None
        s = stats(server)
        assert s["bd_count"] == n and s["remote_held_bytes"] == n * PAGE
        assert s["backing_tier"] == "remote" and s["remote_connected"] == 1
        held = remote_contents(remote, (n + 8) * PAGE)
        for page in data:
            assert page not in held  # encrypted at rest: the remote never sees plaintext
        for i, page in enumerate(data):
            assert h.pread(PAGE, i * PAGE) == page
        s = stats(server)
        assert s["bd_reads"] == n and s["remote_read_errors"] == 0
        assert s["remote_read_latency_p99_seconds"] >= s["remote_read_latency_p50_seconds"] > 0
        # a trim frees remote blocks: trimmed on the remote before reuse
        h.trim(8 * PAGE, 0)
        s = stats(server)
        assert s["remote_held_bytes"] == (n - 8) * PAGE
        # a block whose write is still unacknowledged is reusable only once it
        # is: a writeback run retires what the remote acknowledged meanwhile
        ctl(server, "writeback", type="huge")
        s = stats(server)
        for _ in range(200):  # the trimmer thread trims them on the remote, after the reply
            if s["backing_discarded_blocks"] >= 8:
                break
            time.sleep(0.05)
            s = stats(server)
        assert s["backing_discarded_blocks"] >= 8 and s["backing_discard_errors"] == 0
        assert h.pread(8 * PAGE, 0) == bytes(8 * PAGE)
        h.shutdown()
        return s


def test_nbdkit_memory_over_unix(make_server, sockdir):
    with Remote(sockdir) as remote:
        s = round_trip(make_server, remote)
        assert s["backing_file"] == remote.uri  # nothing secret in a Unix URI


def test_the_cipher_is_chosen_never_off(make_server, sockdir):
    with Remote(sockdir) as remote:
        s = round_trip(make_server, remote, n=2 * WINDOW, backing_encrypt="chacha20-poly1305")
        assert s["backing_encryption"] == "chacha20-poly1305"
        s = round_trip(make_server, remote, n=2 * WINDOW)
        assert s["backing_encryption"] == "aes-256-gcm"  # the default: always encrypted


def test_qcow2_through_qemu_storage_daemon(make_server, sockdir):
    with Remote(sockdir, kind="qcow2") as remote:
        round_trip(make_server, remote)


def test_tls_psk_over_tcp_and_the_uri_shows_no_secret(make_server, sockdir):
    with Remote(sockdir, tls=True) as remote:
        s = round_trip(make_server, remote)
        assert remote.psk_file not in s["backing_file"] and "tls-psk-file" not in s["backing_file"]
        assert s["backing_file"].startswith("nbds://zramd@127.0.0.1:")


def test_status_and_metrics_show_the_tier(make_server, sockdir):
    with Remote(sockdir, tls=True) as remote, \
            make_server(size="16M", backing_uri=remote.uri) as server:
        h = connect(server)
        write_all(h, pages(4))
        ctl(server, "writeback", type="huge")
        env = dict(os.environ, PYTHONPATH=os.getcwd())
        out = subprocess.run([sys.executable, "-m", "zramd.cli", "status", "--control",
                              server.control_path], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr
        line = [x for x in out.stdout.splitlines() if " remote " in f" {x}"]
        assert line and "connected" in line[0] and "DISCONNECTED" not in line[0]
        assert "tls-psk-file" not in out.stdout and remote.psk_file not in out.stdout
        prom = subprocess.run([sys.executable, "-m", "zramd.cli", "stats", "--format", "prometheus",
                               "--control", server.control_path],
                              capture_output=True, text=True, env=env)
        assert prom.returncode == 0, prom.stderr
        assert "zramd_remote_connected" in prom.stdout and 'backing_tier="remote"' in prom.stdout
        assert remote.psk_file not in prom.stdout
        h.shutdown()


def test_bad_uris_are_one_line(make_server, sockdir):
    with pytest.raises(ConfigError, match="scheme must be one of"):
        make_server(backing_uri="http://example.com/disk").start()
    with pytest.raises(ConfigError, match="not both"):
        make_server(backing_uri="nbd://127.0.0.1/",
                    backing_file=os.path.join(sockdir, "b.img")).start()
    missing = os.path.join(sockdir, "nobody.sock")
    with pytest.raises((ConfigError, ServerError)) as err:
        make_server(backing_uri=f"nbd+unix:///?socket={missing}", backing_timeout_s=2).start()
    assert "\n" not in str(err.value) and "backing URI" in str(err.value)
    with Remote(sockdir, tls=True) as remote:
        os.chmod(remote.psk_file, 0o644)
        with pytest.raises(ConfigError, match="accessible by others"):
            make_server(backing_uri=remote.uri).start()


def test_error_filter_write_errors_stall_and_read_errors_are_eio(make_server, sockdir):
    """Refused writes stall writeback once the window of writes in flight
    is full: nothing is lost (pages not acknowledged stay sealed in RAM and
    are sent again); read errors are EIO for that request alone, counted;
    pages in RAM are served throughout."""
    wfail, rfail = os.path.join(sockdir, "wfail"), os.path.join(sockdir, "rfail")
    filt = ("error", {"error-pwrite-rate": "100%", "error-pwrite-file": wfail,
                      "error-pread-rate": "100%", "error-pread-file": rfail})
    with Remote(sockdir, filters=[filt]) as remote, \
            make_server(size="16M", backing_uri=remote.uri) as server:
        h = connect(server)
        n = 2 * WINDOW
        data = pages(n)
        write_all(h, data)
        open(wfail, "w").close()
        r = ctl(server, "writeback", type="huge")
        assert r["written"] == WINDOW and r["error"]
        s = stats(server)
        assert s["bd_write_errors"] >= 1 and s["remote_write_pending_pages"] == WINDOW
        assert s["remote_connected"] == 1
        assert h.pread(n * PAGE, 0) == b"".join(data)  # nothing lost
        os.unlink(wfail)
        assert ctl(server, "writeback", type="huge")["written"] == WINDOW
        assert stats(server)["remote_write_pending_pages"] <= WINDOW  # the first ones landed
        # every run retires what the remote acknowledged since the last one:
        # then no page is read from its sealed copy in RAM, all from the remote
        for _ in range(200):
            ctl(server, "writeback", type="huge")
            if stats(server)["remote_write_pending_pages"] == 0:
                break
            time.sleep(0.05)
        assert stats(server)["remote_write_pending_pages"] == 0
        fresh = pages(4)
        write_all(h, fresh, first=n)
        open(rfail, "w").close()
        with pytest.raises(nbd.Error) as err:
            h.pread(PAGE, 0)
        assert err.value.errno == "EIO"
        assert h.pread(4 * PAGE, n * PAGE) == b"".join(fresh)  # RAM pages: fine
        assert stats(server)["remote_read_errors"] == 1
        os.unlink(rfail)
        assert h.pread(n * PAGE, 0) == b"".join(data)
        h.shutdown()


def test_a_slow_remote_read_fails_after_the_timeout(make_server, sockdir):
    """--filter=delay longer than --backing-timeout: the read fails EIO,
    counted as a timeout; pages in RAM are served; with a timeout above the
    delay the same read succeeds (the delay filter delays every read, so
    the timeout is what differs between the two servers).  Writeback goes
    past the write window so that page 0 is acknowledged: on the remote only."""
    filt = ("delay", {"delay-read": "3"})
    n = WINDOW + 4
    with Remote(sockdir, filters=[filt], threads=1) as remote:  # see test_a_paused_remote
        data = pages(n)
        with make_server(size="16M", backing_uri=remote.uri, backing_timeout_s=1) as server:
            h = connect(server)
            write_all(h, data)
            assert ctl(server, "writeback", type="huge", limit=n - 2)["written"] == n - 2
            with pytest.raises(nbd.Error) as err:
                h.pread(PAGE, 0)
            assert err.value.errno == "EIO"
            assert h.pread(2 * PAGE, (n - 2) * PAGE) == b"".join(data[n - 2:])
            s = stats(server)
            assert s["remote_read_timeouts"] == 1 and s["remote_read_errors"] == 1
            h.shutdown()
        with make_server(size="16M", backing_uri=remote.uri, backing_timeout_s=10) as server:
            h = connect(server)
            write_all(h, data)
            assert ctl(server, "writeback", type="huge", limit=n - 2)["written"] == n - 2
            assert h.pread(PAGE, 0) == data[0]
            assert stats(server)["remote_read_latency_p50_seconds"] >= 3
            h.shutdown()


def test_a_paused_remote(make_server, sockdir):
    """--filter=pause: a remote read waits at most the timeout, then EIO;
    writeback fails (pages stay in RAM); RAM pages are served meanwhile;
    after resume the tier reconnects and every page reads back."""
    pause = Pause(os.path.join(sockdir, "pause.ctl"))
    # one thread per connection: nbdkit 1.32 can abort (raw_send_socket:
    # Assertion `sock >= 0') when a worker thread replies to a request held
    # by the pause on a connection the client has dropped meanwhile
    with Remote(sockdir, filters=[pause.filter], threads=1) as remote, \
            make_server(size="16M", backing_uri=remote.uri, backing_timeout_s=1) as server:
        h = connect(server)
        n = 3 * WINDOW
        data = pages(n)
        write_all(h, data)
        # past the write window: the first pages are acknowledged, on the remote only
        assert ctl(server, "writeback", type="huge", limit=WINDOW + 4)["written"] == WINDOW + 4
        pause.pause()
        with pytest.raises(nbd.Error):
            h.pread(PAGE, 0)
        tail = (WINDOW + 4) * PAGE
        assert h.pread(n * PAGE - tail, tail) == b"".join(data[WINDOW + 4:])  # in RAM
        r = ctl(server, "writeback", type="huge")  # fills the window, then times out
        assert r["error"] and r["written"] < n - WINDOW - 4
        s = stats(server)
        assert s["remote_connected"] == 0 and s["remote_read_timeouts"] >= 1
        assert s["remote_write_timeouts"] >= 1
        pause.resume()
        assert h.pread(n * PAGE, 0) == b"".join(data)
        ctl(server, "writeback", type="huge")
        s = stats(server)
        assert s["bd_count"] == n and s["remote_connected"] == 1 and s["remote_reconnects"] >= 1
        assert h.pread(n * PAGE, 0) == b"".join(data)
        h.shutdown()


def test_remote_killed_mid_writeback_then_restarted_empty(make_server, sockdir):
    """SIGKILL of the remote while writeback runs, then a fresh export on
    the same socket: pages it held read EIO (they do not authenticate:
    never stale data), counted; pages in RAM read fine; writeback resumes."""
    n = 512
    with Remote(sockdir, size="16M") as remote, \
            make_server(size="16M", backing_uri=remote.uri, backing_timeout_s=2) as server:
        h = connect(server)
        data = pages(n)
        write_all(h, data)
        done = {}
        t = threading.Thread(target=lambda: done.update(ctl(server, "writeback", type="huge")))
        t.start()
        while stats(server)["bd_count"] < 32 and t.is_alive():
            pass
        remote.kill()
        t.join()
        remote.start()  # empty
        s = stats(server)
        written = s["bd_count"]
        unacknowledged = s["remote_write_pending_pages"]  # still sealed in RAM: not lost
        assert written >= 32 and done.get("error")  # the run ended at the first failed write
        lost = ok = 0
        for i, page in enumerate(data):
            try:
                got = h.pread(PAGE, i * PAGE)
            except nbd.Error as exc:
                assert exc.errno == "EIO"
                lost += 1
                continue
            assert got == page  # never stale or other data
            ok += 1
        s = stats(server)
        assert lost == written - unacknowledged and ok == n - lost
        assert s["bd_auth_errors"] == lost and s["remote_read_errors"] == 0
        assert s["remote_disconnects"] >= 1 and s["remote_reconnects"] >= 1
        # writeback goes on to the fresh export
        fresh = pages(4)
        write_all(h, fresh, first=n)
        assert ctl(server, "writeback", type="huge")["written"] >= 4
        assert h.pread(4 * PAGE, n * PAGE) == b"".join(fresh)
        h.shutdown()


@pytest.fixture
def netns_link():
    """A network namespace joined to ours by a veth pair, with 2 ms of
    ``tc netem`` delay each way where the kernel has netem (sch_netem);
    yields (namespace, the address inside it, whether netem delays it)."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = f"zrt{os.getpid() % 100000}"
    ns, outer, inner = f"{tag}ns", f"{tag}a", f"{tag}b"
    net = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"

    def ip(*args, check=True):
        return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)

    try:
        ip("netns", "add", ns)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot make a network namespace here: {getattr(exc, 'stderr', exc)}")
    try:
        ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        ip("link", "set", inner, "netns", ns)
        ip("addr", "add", f"{net}.1/24", "dev", outer)
        ip("link", "set", outer, "up")
        ip("-n", ns, "addr", "add", f"{net}.2/24", "dev", inner)
        ip("-n", ns, "link", "set", inner, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        netem = True
        for args, dev in ((["tc"], outer), (["ip", "netns", "exec", ns, "tc"], inner)):
            add = subprocess.run([*args, "qdisc", "add", "dev", dev, "root", "netem", "delay",
                                  "2ms"], capture_output=True, text=True)
            netem = netem and add.returncode == 0
        yield ns, f"{net}.2", netem
    finally:
        ip("link", "del", outer, check=False)
        ip("netns", "del", ns, check=False)


def test_across_network_namespaces_with_delay(make_server, sockdir, netns_link):
    """TLS-PSK over a veth pair into another network namespace, 2 ms each
    way: pages round-trip and every read takes at least the delayed round
    trip.  A kernel without netem gets the same 4 ms round trip from
    nbdkit's delay filter in the namespace (the namespaces and the veth
    link are still real)."""
    ns, address, netem = netns_link
    filters = [] if netem else [("delay", {"delay-read": "4ms", "delay-write": "4ms"})]
    with Remote(sockdir, tls=True, netns=ns, address=address, filters=filters) as remote:
        s = round_trip(make_server, remote, n=32)
        assert s["remote_read_latency_p50_seconds"] >= 0.004
        assert s["remote_write_latency_p50_seconds"] >= 0.004


def test_watermark_policy_writes_back_to_the_remote(make_server, sockdir):
    """The automatic policy runs unchanged on the remote tier, and the
    watermarks knob is set on a running remote-tier device."""
    with Remote(sockdir) as remote, \
            make_server(size="32M", backing_uri=remote.uri, high_watermark_bytes=1 << 20,
                        low_watermark_bytes=512 << 10) as server:
        h = connect(server)
        data = pages(1024)  # 4 MiB of incompressible pages past a 1 MiB high mark
        write_all(h, data)
        s = stats(server)
        assert s["bd_count"] > 512 and s["policy_runs"] >= 1
        assert s["remote_held_bytes"] == s["backing_used_blocks"] * PAGE
        ctl(server, "set", high_watermark="8M", low_watermark="6M")
        assert stats(server)["high_watermark"] == 8 << 20
        assert h.pread(len(data) * PAGE, 0) == b"".join(data)
        h.shutdown()


def test_a_timed_out_write_quarantines_its_block(make_server, sockdir):
    """--filter=delay on writes past the timeout: the window of writes in
    flight fills, the oldest times out, writeback stops with the page that
    did not fit still in RAM; the blocks of the writes sent are never
    reused, since the slow server may still write them after a newer page
    went there; their pages stay readable (sealed in RAM until acknowledged)."""
    filt = ("delay", {"delay-write": "3"})
    with Remote(sockdir, filters=[filt], threads=1) as remote, \
            make_server(size="16M", backing_uri=remote.uri, backing_timeout_s=1) as server:
        h = connect(server)
        data = pages(WINDOW + 4)
        write_all(h, data)
        r = ctl(server, "writeback", type="huge")
        assert r["written"] == WINDOW and "no answer" in r["error"]
        s = stats(server)
        assert s["remote_quarantined_blocks"] == WINDOW and s["remote_write_timeouts"] == 1
        assert s["remote_write_pending_pages"] == WINDOW
        assert h.pread(len(data) * PAGE, 0) == b"".join(data)
        h.shutdown()


def test_an_outage_stalls_writeback_and_writers_go_on(make_server, sockdir):
    """The remote gone under the watermark policy: writeback stalls by the
    file tier's rules (writers stop waiting for it), every page written
    during the outage is kept and reads back; once the remote is back,
    writeback goes on."""
    with Remote(sockdir) as remote, \
            make_server(size="32M", backing_uri=remote.uri, backing_timeout_s=2,
                        high_watermark_bytes=1 << 20, low_watermark_bytes=512 << 10) as server:
        h = connect(server)
        write_all(h, pages(512))
        assert stats(server)["bd_count"] > 0
        remote.kill()
        during = pages(1024)
        write_all(h, during, first=512)  # none fails, none waits for a dead remote for good
        s = stats(server)
        assert s["writeback_stalled"] == 1 and s["writeback_stall_reason"]
        assert s["throttle_skipped"] > 0 and s["remote_connected"] == 0
        assert h.pread(len(during) * PAGE, 512 * PAGE) == b"".join(during)
        remote.start()
        before = stats(server)["bd_count"]
        more = pages(64)
        write_all(h, more, first=1536)
        written = 0
        for _ in range(3 * int(RECONNECT_MAX_S) + 3):  # writes wait out the reconnect backoff
            written = ctl(server, "writeback", type="huge")["written"]
            if written:
                break
            time.sleep(0.5)
        assert written > 0
        s = stats(server)
        assert s["bd_count"] > before and s["remote_connected"] == 1
        assert h.pread(len(during) * PAGE, 512 * PAGE) == b"".join(during)
        assert h.pread(len(more) * PAGE, 1536 * PAGE) == b"".join(more)
        h.shutdown()


def test_the_export_bounds_the_tier_and_freed_blocks_come_back(make_server, sockdir):
    """A 256 KiB export under a 16 MiB device holds 64 blocks: writeback
    stops there as with a full backing file (nothing lost); trimmed pages
    give their blocks back (trimmed on the remote by the tier's thread)
    and the next writeback reuses them."""
    with Remote(sockdir, size="256K") as remote, \
            make_server(size="16M", backing_uri=remote.uri) as server:
        h = connect(server)
        data = pages(96)
        write_all(h, data)
        r = ctl(server, "writeback", type="huge")
        assert r["written"] == 64 and "full" in r["error"]
        s = stats(server)
        assert s["backing_blocks"] == 64 and s["bd_full_events"] == 1
        assert h.pread(96 * PAGE, 0) == b"".join(data)
        h.trim(32 * PAGE, 0)  # frees the blocks of the written-back pages among them
        r = ctl(server, "writeback", type="huge")
        assert r["written"] > 0
        s = stats(server)
        assert s["backing_touched_blocks"] == 64  # reused, none new
        assert h.pread(64 * PAGE, 32 * PAGE) == b"".join(data[32:])
        h.shutdown()


def test_packed_writeback_to_the_remote(make_server, sockdir):
    """--writeback-compressed over a remote tier: compressed pages packed
    several to a block cut the traffic as well as the space; they read back
    whole, and the remote holds only ciphertext."""
    text = [(b"page %4d of a remote packed tier; " % i) * 120 for i in range(96)]
    data = [t[:PAGE] for t in text]  # compressible, each page different
    with Remote(sockdir) as remote, make_server(
        size="16M", backing_uri=remote.uri, writeback_compressed=True
    ) as server:
        h = connect(server)
        write_all(h, data)
        assert call(server.control_path, "idle")["idle_pages"] == len(data)
        r = ctl(server, "writeback", type="idle")
        assert r["written"] == len(data) and r["error"] is None, r
        s = stats(server)
        assert s["bd_count"] == len(data) and 0 < s["bd_blocks"] <= len(data) // 4, s
        assert s["remote_held_bytes"] == s["bd_blocks"] * PAGE  # blocks, not pages, travel
        held = remote_contents(remote, (s["bd_blocks"] + 8) * PAGE)
        assert b"of a remote packed tier" not in held  # encrypted at rest
        for i, page in enumerate(data):
            assert h.pread(PAGE, i * PAGE) == page
        assert stats(server)["remote_read_errors"] == 0
        h.shutdown()

"""Who can reach the data: another local user (uid 65534, made with
setpriv) cannot read or write the device over the Unix socket, over TCP
without the key, nor through the control socket (docs/design.md#security).
Each refusal has a positive control: the same command succeeds once the
permission it lacked is granted, so the test can fail."""

import os
import shutil
import signal
import stat
import subprocess
import textwrap
import time

import pytest

from helpers import nbd, nbdkit_version
from zramd.control import call

from servectl import NOBODY, SYSTEM_ENV, Serve, free_port, write_psk

SECRET = b"root's session token " * 195 + b"=" * 1  # one 4 KiB page
READ_SECRET = "h.pread(4096, 0)"

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                reason="needs root and setpriv to act as another user")


def as_nobody(*cmd, timeout=60):
    return subprocess.run(NOBODY + list(cmd), capture_output=True, text=True, timeout=timeout,
                          env=SYSTEM_ENV, cwd="/")


def nbdsh_as_nobody(uri, code):
    return as_nobody("nbdsh", "-u", uri, "-c", code)


@pytest.fixture
def open_dir(sockdir):
    """The socket directory traversable by everyone: only the sockets' own
    permissions stand between another user and the device."""
    os.chmod(sockdir, 0o755)
    return sockdir


@pytest.fixture
def unix_server(open_dir):
    sock = os.path.join(open_dir, "z.sock")
    srv = Serve(open_dir, "--socket", sock, "--size", "8M")
    assert srv.ready, srv.stderr()
    h = nbd.NBD()
    h.connect_unix(sock)
    h.pwrite(SECRET, 0)
    h.shutdown()
    yield srv, sock
    srv.kill()


def test_other_user_cannot_use_the_unix_socket(unix_server):
    srv, sock = unix_server
    mode = stat.S_IMODE(os.lstat(sock).st_mode)
    assert not mode & 0o022, oct(mode)  # connect() needs write permission
    uri = f"nbd+unix:///?socket={sock}"
    read = nbdsh_as_nobody(uri, f"print({READ_SECRET})")
    assert read.returncode != 0 and "Permission denied" in read.stderr, read
    write = nbdsh_as_nobody(uri, "h.pwrite(b'x' * 4096, 0)")
    assert write.returncode != 0 and "Permission denied" in write.stderr, write
    info = as_nobody("nbdinfo", uri)
    assert info.returncode != 0 and "Permission denied" in info.stderr, info
    os.chmod(sock, 0o777)
    try:
        read = nbdsh_as_nobody(uri, "print(h.pread(21, 0).decode())")
    finally:
        os.chmod(sock, mode)
    if nbdkit_version() >= (1, 38):
        # with the socket opened up, the server itself refuses the peer
        # (nbdkit tells the plugin the peer's uid), and says why in one line
        assert read.returncode != 0 and "root's session token" not in read.stdout, read
        refusal = "EACCES: refused a client of uid 65534: only the owner and root may connect"
        assert refusal in srv.stderr() and "Traceback" not in srv.stderr(), srv.stderr()
        if nbdkit_version() >= (1, 42):  # a failed open's message reaches the client
            assert "refused a client of uid 65534" in read.stderr, read
    else:
        # positive control: with the socket opened up, the same user gets in
        assert read.returncode == 0 and "root's session token" in read.stdout, read
    h = nbd.NBD()
    h.connect_unix(sock)
    assert h.pread(4096, 0) == SECRET  # and nothing was changed
    h.shutdown()


CONTROL_CLIENT = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(sys.argv[1])
    except OSError as exc:
        print("connect:", exc.strerror)
        sys.exit(3)
    s.settimeout(30)
    try:
        s.sendall(b'{"cmd": "mem_limit", "args": {"size": "4096"}}\\n')
        s.sendall(b'{"cmd": "stats"}\\n')
        print("reply:", s.recv(65536).decode() or "(closed, no reply)")
    except ConnectionError:
        print("reply: (closed, no reply)")
""")


def test_other_user_cannot_use_the_control_socket(unix_server):
    srv, sock = unix_server
    ctl = sock + ".ctl"
    assert stat.S_IMODE(os.lstat(ctl).st_mode) == 0o600
    refused = as_nobody("/usr/bin/python3", "-c", CONTROL_CLIENT, ctl)
    assert refused.returncode == 3 and "Permission denied" in refused.stdout, refused
    # with the mode opened up, the server itself still refuses the peer (SO_PEERCRED)
    os.chmod(ctl, 0o666)
    try:
        refused = as_nobody("/usr/bin/python3", "-c", CONTROL_CLIENT, ctl)
    finally:
        os.chmod(ctl, 0o600)
    assert refused.returncode == 0 and "(closed, no reply)" in refused.stdout, refused
    s = call(ctl, "stats")
    assert s["mem_limit"] == 0 and s["orig_data_size"] == 4096  # nothing changed


def test_other_user_cannot_use_tcp_without_the_key(open_dir):
    psk = write_psk(os.path.join(open_dir, "keys.psk"))
    port = free_port()
    srv = Serve(open_dir, "--port", str(port), "--size", "8M", "--tls-psk", psk,
                "--control", os.path.join(open_dir, "t.ctl"))
    try:
        assert srv.ready, srv.stderr()
        h = nbd.NBD()
        h.set_uri_allow_local_file(True)
        h.connect_uri(f"nbds://alice@127.0.0.1:{port}/?tls-psk-file={psk}")
        h.pwrite(SECRET, 0)
        h.shutdown()
        plain = nbdsh_as_nobody(f"nbd://127.0.0.1:{port}/", f"print({READ_SECRET})")
        assert plain.returncode != 0 and "TLS" in plain.stderr, plain
        # the key file is root's, mode 0600: not readable by the other user
        theirs = as_nobody("nbdinfo", f"nbds://alice@127.0.0.1:{port}/?tls-psk-file={psk}")
        assert theirs.returncode != 0, theirs
        # a key of their own does not match
        guess_dir = os.path.join(open_dir, "nobody")
        os.mkdir(guess_dir, 0o755)
        guess = os.path.join(guess_dir, "keys.psk")
        write_psk(guess)
        os.chown(guess, 65534, 65534)
        wrong = as_nobody("nbdinfo", f"nbds://alice@127.0.0.1:{port}/?tls-psk-file={guess}")
        assert wrong.returncode != 0 and "handshake" in wrong.stderr.lower(), wrong
        # positive control: the right key, readable, lets the same user in
        os.chown(psk, 65534, 65534)
        try:
            right = as_nobody("nbdinfo", f"nbds://alice@127.0.0.1:{port}/?tls-psk-file={psk}")
        finally:
            os.chown(psk, 0, 0)
        assert right.returncode == 0 and "with TLS" in right.stdout, right
    finally:
        srv.signal(signal.SIGTERM)
        srv.kill()


def test_the_servers_own_user_cannot_read_its_memory(open_dir):
    """nbdkit running as uid 65534 holds a stored page; another process of
    that same user can neither read /proc/PID/mem or environ nor get a core
    dump (the dumpable flag is clear), while /proc/PID/status, which
    monitoring reads, stays readable. Positive control: a process of that
    user that did not clear the flag (`sleep`) is readable."""
    from zramd.settings import Settings
    from zramd.server import Server
    from zramd.units import parse_size

    sock = os.path.join(open_dir, "own.sock")
    server = Server(Settings(size_bytes=parse_size("8M"), socket_path=sock))
    cmd = server.command()
    i = cmd.index("-P")  # the pid file's directory is root's
    del cmd[i : i + 2]
    err = open(os.path.join(open_dir, "own.stderr"), "w")
    os.chmod(open_dir, 0o777)  # nobody creates its sockets here
    proc = subprocess.Popen(NOBODY + cmd, env=server.environment(), stdin=subprocess.DEVNULL,
                            stdout=err, stderr=err, cwd="/")
    sleeper = subprocess.Popen(NOBODY + ["sleep", "60"], env=SYSTEM_ENV, cwd="/")
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock + ".ctl"):
            assert proc.poll() is None and time.monotonic() < deadline, open(err.name).read()
            time.sleep(0.05)
        h = nbd.NBD()
        h.connect_unix(sock)
        h.pwrite(SECRET, 0)
        h.shutdown()
        for name in ("mem", "environ"):
            r = as_nobody("head", "-c", "1", f"/proc/{proc.pid}/{name}")
            assert r.returncode != 0 and "Permission denied" in r.stderr, r
        assert os.stat(f"/proc/{proc.pid}/environ").st_uid == 0  # not the server's user
        status = as_nobody("cat", f"/proc/{proc.pid}/status")
        assert status.returncode == 0 and "VmRSS" in status.stdout, status
        control = as_nobody("head", "-c", "1", f"/proc/{sleeper.pid}/environ")
        assert control.returncode == 0, control
    finally:
        sleeper.kill()
        proc.terminate()
        proc.wait(30)
        err.close()

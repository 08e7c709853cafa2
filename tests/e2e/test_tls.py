"""TCP only with TLS: nbdkit's TLS through `zramd serve`, with real TLS
clients (libnbd nbds://, nbdinfo, qemu-img), a wrong key and a plain client
refused, and plain TCP refused unless --insecure-tcp (docs/design.md#security)."""

import os
import shlex
import subprocess

import pytest

from helpers import nbd
from servectl import SYSTEM_ENV, ZRAMD, Serve, free_port, write_psk

SECRET = b"swap holds secrets " * 215 + b"!!!!!!!!!!!"  # one 4 KiB page


def run(*args, **kwargs):
    return subprocess.run(ZRAMD + list(args), capture_output=True, text=True, timeout=60,
                          **kwargs)


def psk_uri(port, psk, user="alice"):
    return f"nbds://{user}@127.0.0.1:{port}/?tls-psk-file={psk}"


def connect_psk(uri):
    h = nbd.NBD()
    h.set_uri_allow_local_file(True)  # tls-psk-file is a local file
    h.connect_uri(uri)
    return h


@pytest.fixture
def tls_server(sockdir):
    psk = write_psk(os.path.join(sockdir, "keys.psk"))
    port = free_port()
    srv = Serve(sockdir, "--port", str(port), "--size", "16M", "--tls-psk", psk,
                "--control", os.path.join(sockdir, "t.ctl"))
    assert srv.ready, srv.stderr()
    yield srv, port, psk
    srv.kill()


def test_tcp_without_tls_is_refused_in_one_line(sockdir):
    result = run("serve", "--port", str(free_port()), "--control", os.path.join(sockdir, "c.ctl"))
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zramd: error: TCP serves the device"), lines
    assert "--tls-psk" in lines[0] and "--insecure-tcp" in lines[0]


@pytest.mark.parametrize("args,message", [
    (["--tls", "on"], "--tls=on needs --tls-psk FILE or --tls-certificates DIR"),
    (["--tls-verify-peer"], "--tls-verify-peer needs --tls-certificates"),
    (["--insecure-tcp"], "--insecure-tcp applies only with --port"),
    (["--tls-psk", "/nonexistent/keys.psk"], "PSK file /nonexistent/keys.psk: No such file"),
])
def test_bad_tls_options_one_line(sockdir, args, message):
    result = run("serve", "--socket", os.path.join(sockdir, "z.sock"), *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"zramd: error: {result.stderr.strip()[14:]}"]
    assert message in result.stderr, result.stderr


def test_psk_file_readable_by_others_is_refused(sockdir):
    psk = write_psk(os.path.join(sockdir, "keys.psk"))
    os.chmod(psk, 0o644)
    result = run("serve", "--port", str(free_port()), "--tls-psk", psk,
                 "--control", os.path.join(sockdir, "c.ctl"))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"zramd: error: PSK file {psk} is accessible by others "
                                     f"(mode 0644): chmod 600 {psk}")


def test_insecure_tcp_warns_and_serves(sockdir):
    port = free_port()
    srv = Serve(sockdir, "--port", str(port), "--size", "8M", "--insecure-tcp",
                "--control", os.path.join(sockdir, "i.ctl"))
    try:
        assert srv.ready, srv.stderr()
        assert "WARNING --insecure-tcp: port" in srv.stderr()
        assert "WARNING     no TLS" in srv.banner
        h = nbd.NBD()
        h.connect_uri(f"nbd://127.0.0.1:{port}/")
        assert h.get_size() == 8 << 20
        h.shutdown()
    finally:
        srv.kill()


def test_libnbd_psk_round_trip_and_wrong_key_refused(tls_server, sockdir):
    srv, port, psk = tls_server
    uri = psk_uri(port, psk)
    assert f"NBD URI     {uri}" in srv.banner
    h = connect_psk(uri)
    assert h.get_tls_negotiated()
    h.pwrite(SECRET, 0)
    h.shutdown()
    h = connect_psk(uri)
    assert h.pread(4096, 0) == SECRET
    h.shutdown()

    wrong = write_psk(os.path.join(sockdir, "wrong.psk"))
    with pytest.raises(nbd.Error):
        connect_psk(psk_uri(port, wrong))
    with pytest.raises(nbd.Error):  # a plain client: the server requires TLS
        h = nbd.NBD()
        h.connect_uri(f"nbd://127.0.0.1:{port}/")
        h.pread(4096, 0)
    with pytest.raises(nbd.Error):  # a user the file does not know
        connect_psk(psk_uri(port, psk, user="mallory"))


def banner_command(banner, name):
    line = next(line for line in banner.splitlines() if line.strip().startswith(name + " "))
    return shlex.split(line.strip()[len(name):])


def test_banner_commands_attach_over_tls(tls_server, sockdir):
    """The nbdinfo, nbdsh and qemu-img lines of the banner work as printed."""
    srv, port, psk = tls_server
    h = connect_psk(psk_uri(port, psk))
    h.pwrite(SECRET, 0)
    h.shutdown()
    out = subprocess.run(banner_command(srv.banner, "nbdinfo"), capture_output=True, text=True,
                         timeout=60, env=SYSTEM_ENV)
    assert out.returncode == 0 and "with TLS" in out.stdout, out.stderr
    nbdsh = banner_command(srv.banner, "nbdsh")
    out = subprocess.run(nbdsh, capture_output=True, text=True, timeout=60, env=SYSTEM_ENV)
    assert out.returncode == 0 and out.stdout.strip() == str(16 << 20), out.stderr
    qemu = banner_command(srv.banner, "qemu-img")
    out = subprocess.run(qemu, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "virtual size: 16 MiB" in out.stdout, out.stderr
    # qemu-img reads the data through TLS: the same secret comes back
    dump = os.path.join(sockdir, "dump.raw")
    obj = qemu[qemu.index("--object") + 1]
    opts = qemu[qemu.index("--image-opts") + 1]
    out = subprocess.run(["qemu-img", "convert", "--object", obj, "--image-opts", opts,
                          "-O", "raw", dump], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    with open(dump, "rb") as f:
        assert f.read(4096) == SECRET


def test_qemu_img_with_wrong_key_is_refused(tls_server, sockdir):
    srv, port, psk = tls_server
    wrong_dir = os.path.join(sockdir, "wrong")
    os.mkdir(wrong_dir, 0o700)
    write_psk(os.path.join(wrong_dir, "keys.psk"))
    out = subprocess.run(
        ["qemu-img", "info", "--object",
         f"tls-creds-psk,id=tls0,endpoint=client,dir={wrong_dir},username=alice",
         "--image-opts", f"driver=nbd,server.type=inet,server.host=127.0.0.1,"
                         f"server.port={port},tls-creds=tls0"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "TLS handshake failed" in out.stderr, out.stderr


def make_pki(root):
    """A CA, a server certificate for 127.0.0.1 and a client certificate,
    laid out as nbdkit (server/) and libnbd (client/) read them."""
    server, client = os.path.join(root, "server"), os.path.join(root, "client")
    os.makedirs(server, 0o700)
    os.makedirs(client, 0o700)

    def ssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    ca_key, ca_cert = os.path.join(root, "ca-key.pem"), os.path.join(server, "ca-cert.pem")
    ssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", ca_key, "-out", ca_cert, "-days", "2", "-subj", "/CN=zramd test CA")
    for name, where, ext in (("server", server, "subjectAltName=IP:127.0.0.1\n"
                                                "extendedKeyUsage=serverAuth\n"),
                             ("client", client, "extendedKeyUsage=clientAuth\n")):
        key, csr = os.path.join(where, f"{name}-key.pem"), os.path.join(root, f"{name}.csr")
        extfile = os.path.join(root, f"{name}.ext")
        with open(extfile, "w") as f:
            f.write(ext)
        ssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
        ssl("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
            "-out", os.path.join(where, f"{name}-cert.pem"), "-days", "2", "-extfile", extfile)
        os.chmod(key, 0o600)
    with open(ca_cert, "rb") as src, open(os.path.join(client, "ca-cert.pem"), "wb") as dst:
        dst.write(src.read())
    return server, client


def test_certificates_with_verify_peer(sockdir):
    """X.509: a client with a certificate from the CA gets in, a client
    without one does not (--tls-verify-peer)."""
    server_dir, client_dir = make_pki(sockdir)
    port = free_port()
    srv = Serve(sockdir, "--port", str(port), "--size", "8M", "--tls-certificates", server_dir,
                "--tls-verify-peer", "--control", os.path.join(sockdir, "x.ctl"))
    try:
        assert srv.ready, srv.stderr()
        h = nbd.NBD()
        h.set_uri_allow_local_file(True)
        h.connect_uri(f"nbds://127.0.0.1:{port}/?tls-certificates={client_dir}")
        h.pwrite(SECRET, 0)
        assert h.pread(4096, 0) == SECRET and h.get_tls_negotiated()
        h.shutdown()
        anonymous = os.path.join(sockdir, "anonymous")  # trusts the CA, has no certificate
        os.mkdir(anonymous, 0o700)
        os.link(os.path.join(client_dir, "ca-cert.pem"), os.path.join(anonymous, "ca-cert.pem"))
        h = nbd.NBD()
        h.set_uri_allow_local_file(True)
        with pytest.raises(nbd.Error):
            h.connect_uri(f"nbds://127.0.0.1:{port}/?tls-certificates={anonymous}")
            h.pread(4096, 0)
    finally:
        srv.kill()

"""The remote tier's URIs without a server: which schemes are taken, and
what of a URI may be shown (stats, status, metrics, logs)."""

import pytest

from zramd.engine.backing import BackingError
from zramd.engine.remote import check_uri, public_uri


@pytest.mark.parametrize("uri", [
    "nbd://host/", "nbds://user@host:10809/export", "nbd+unix:///?socket=/run/x.sock",
    "nbds+unix:///exp?socket=/run/x.sock&tls-psk-file=/k", "NBD://HOST/",
])
def test_libnbd_schemes_are_taken(uri):
    check_uri(uri)


@pytest.mark.parametrize("uri", [
    "http://host/", "file:///tmp/x", "nbd+vsock:///", "/tmp/b.img", "", "nbd",
])
def test_other_schemes_are_one_line(uri):
    with pytest.raises(BackingError) as err:
        check_uri(uri)
    assert "scheme must be one of" in err.value.strerror and "\n" not in err.value.strerror


@pytest.mark.parametrize("uri,shown", [
    ("nbd+unix:///?socket=/run/c.sock", "nbd+unix:///?socket=/run/c.sock"),
    ("nbds://alice@10.0.0.2/?tls-psk-file=/etc/k.psk", "nbds://alice@10.0.0.2/"),
    ("nbds://alice:secret@h:1/e?tls-certificates=/c&socket=/s", "nbds://alice@h:1/e?socket=/s"),
    ("nbds+unix:///e?socket=/s&tls-psk-file=/k&tls-username=x", "nbds+unix:///e?socket=/s"),
])
def test_the_shown_uri_has_no_secrets(uri, shown):
    assert public_uri(uri) == shown
    check_uri(public_uri(uri))  # still a URI the tier takes (commands.would_be_settings)

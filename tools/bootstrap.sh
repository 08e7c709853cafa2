#!/usr/bin/env bash
# Installs what zramd needs on a Debian 12 machine, idempotently and quickly:
#  1. Debian packages (only the missing ones; apt-get update only when needed),
#  2. a virtualenv built from the Python version nbdkit's python plugin embeds
#     (the plugin imports our package from it), with --system-site-packages so
#     libnbd's Python bindings (Debian-only) are visible,
#  3. the zramd package (editable) and its Python dependencies.
# Usage: tools/bootstrap.sh VENV_DIR [EXTRAS]   e.g. tools/bootstrap.sh .venv test,bench
set -euo pipefail
venv=${1:-.venv}
extras=${2:-test}
here=$(cd "$(dirname "$0")/.." && pwd)

debs=(nbdkit nbdkit-plugin-python python3-libnbd libnbd-bin fio qemu-utils python3-venv
      python3-dev procps iproute2 util-linux curl systemd openssl git tar
      kmod nbd-client   # contrib/systemd units (systemd-analyze verify)
      systemd-container debootstrap  # the units booted under systemd (tests/e2e/test_units_boot.py)
      qemu-system-common)  # qemu-storage-daemon, a remote tier's NBD server in the tests
missing=()
for p in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
    $sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The venv's Python must be the one nbdkit embeds (same minor version).
embedded=$(nbdkit python --dump-plugin | sed -n 's/^python_version=\([0-9]*\.[0-9]*\).*/\1/p')
if [ -z "$embedded" ]; then
    echo "bootstrap: cannot tell which Python nbdkit's python plugin embeds" >&2; exit 1
fi
py=/usr/bin/python$embedded
if [ ! -x "$py" ]; then
    echo "bootstrap: nbdkit embeds Python $embedded but $py is missing" >&2; exit 1
fi
if [ -x "$venv/bin/python" ]; then
    have=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [ "$have" != "$embedded" ]; then
        echo "bootstrap: $venv has Python $have but nbdkit embeds Python $embedded: remove $venv and run again" >&2
        exit 1
    fi
else
    echo "bootstrap: creating $venv from $py (the Python nbdkit embeds)"
    "$py" -m venv --system-site-packages "$venv"
fi

stamp="$venv/.zramd-installed-$extras"
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
    echo "bootstrap: installing zramd[$extras] into $venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$here[$extras]"
    touch "$stamp"
fi

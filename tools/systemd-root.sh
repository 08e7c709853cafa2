#!/usr/bin/env bash
# Makes (once) the Debian 12 root that tests/e2e/test_units_boot.py boots
# with systemd-nspawn --boot, so that the shipped units start under systemd
# as PID 1. Kept in ROOT (default /var/cache/zramd-systemd); a later run
# finds ROOT/.zramd-ready and does nothing. Bookworm inside, whatever the
# host: its systemd 252 boots on a cgroup v1 host too.
# The root has what the checkout's venv needs at run time (the Python that
# nbdkit embeds, nbdkit's python plugin, libnbd), not the venv itself: the
# test binds the checkout and its venv in read-only.
# Usage: tools/systemd-root.sh [ROOT]
set -euo pipefail
root=${1:-/var/cache/zramd-systemd}

if [ "$(id -u)" != 0 ]; then
    echo "systemd-root: needs root (debootstrap)" >&2
    exit 1
fi
if [ -e "$root/.zramd-ready" ]; then
    exit 0
fi
if ! command -v debootstrap >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap >/dev/null
fi
rm -rf "$root"
mkdir -p "$root"
debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,make,procps,util-linux,kmod,nbd-client,python3,nbdkit,nbdkit-plugin-python,python3-libnbd,libnbd-bin \
    bookworm "$root" http://deb.debian.org/debian
# No console login: the test talks to systemd through nsenter.
chroot "$root" systemctl mask console-getty.service getty@.service \
    systemd-networkd.service systemd-resolved.service >/dev/null 2>&1 || true
echo zramd-systemd > "$root/etc/hostname"
touch "$root/.zramd-ready"

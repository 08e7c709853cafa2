#!/usr/bin/env bash
# Makes (once) the Debian root that tests/e2e/test_units_boot.py boots
# with systemd-nspawn --boot, so that the shipped units start under systemd
# as PID 1. Kept in ROOT (default /var/cache/zramd-systemd); a later run
# finds ROOT/.zramd-ready naming the same Debian release and does nothing.
# The release is the host's own (bookworm on Debian 12, trixie in the
# Debian 13 root of tools/debian13.sh): the checkout's venv, bound in, runs
# the host's Python, which the root must have at the same path. Systemd 252
# (bookworm) and 257 (trixie) both boot under systemd-nspawn on a cgroup v1
# host.
# The root has what the checkout's venv needs at run time (the Python that
# nbdkit embeds, nbdkit's python plugin, libnbd), not the venv itself: the
# test binds the checkout and its venv in read-only.
# Usage: tools/systemd-root.sh [ROOT [SUITE]]
set -euo pipefail
root=${1:-/var/cache/zramd-systemd}
suite=${2:-$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")}

if [ "$(id -u)" != 0 ]; then
    echo "systemd-root: needs root (debootstrap)" >&2
    exit 1
fi
if [ -e "$root/.zramd-ready" ]; then
    made=$(cat "$root/.zramd-ready")
    # an empty stamp is from before the release was written in it: bookworm
    if [ "${made:-bookworm}" = "$suite" ]; then
        exit 0
    fi
fi
if ! command -v debootstrap >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap >/dev/null
fi
rm -rf "$root"
mkdir -p "$root"
debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,make,procps,util-linux,kmod,nbd-client,python3,nbdkit,nbdkit-plugin-python,python3-libnbd,libnbd-bin \
    "$suite" "$root" http://deb.debian.org/debian
# No console login: the test talks to systemd through nsenter.
chroot "$root" systemctl mask console-getty.service getty@.service \
    systemd-networkd.service systemd-resolved.service >/dev/null 2>&1 || true
echo zramd-systemd > "$root/etc/hostname"
echo "$suite" > "$root/.zramd-ready"

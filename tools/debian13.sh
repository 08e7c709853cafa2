#!/usr/bin/env bash
# Runs the test suite once more inside a Debian 13 (trixie) root, as
# `make test-debian13`. The root is made with debootstrap the first time and
# kept in ROOT (default /var/cache/zramd-debian13) for later runs; a copy of
# this checkout (tracked files and local changes, no .venv) goes to
# ROOT/src each run (its .venv and vm/cache are kept).
# The run has a mount namespace of its own (unshare --propagation private):
# there ROOT is bound onto itself, so that inside the chroot / is a mount
# point (systemd-nspawn, which tests/e2e/test_units_boot.py starts inside,
# remounts / as a slave and fails with EINVAL on a plain directory), and
# /proc, /sys and /dev are bound in. Every mount goes away with the
# namespace when the run ends; nothing is mounted on the host.
# Usage: tools/debian13.sh [ROOT] [command run in the checkout inside]
set -euo pipefail
root=${1:-/var/cache/zramd-debian13}
shift || true
cmd=${*:-CI=true bash .ci/run}
src=$(cd "$(dirname "$0")/.." && pwd)

if [ "$(id -u)" != 0 ]; then
    echo "debian13: needs root (debootstrap, chroot, bind mounts)" >&2
    exit 1
fi
if [ -z "${ZRAMD_DEBIAN13_NS:-}" ]; then
    exec unshare --mount --propagation private \
        env ZRAMD_DEBIAN13_NS=1 "$BASH" "$0" "$root" "$cmd"
fi
if ! command -v debootstrap >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap >/dev/null
fi
if [ ! -e "$root/.zramd-ready" ]; then
    rm -rf "$root"
    mkdir -p "$root"
    debootstrap --variant=minbase \
        --include=make,git,sudo,procps,ca-certificates trixie "$root" \
        http://deb.debian.org/debian
    touch "$root/.zramd-ready"
fi

# / inside the chroot is a mount point: ROOT bound onto itself.
mount --bind "$root" "$root"
for fs in proc sys dev; do
    mkdir -p "$root/$fs"
    mount --rbind "/$fs" "$root/$fs"
done
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
# Local certificate authorities (a TLS-inspecting proxy in front of the
# package index) are trusted inside too.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null 2>&1 || true
fi

# A fresh copy of the checkout; the root's Debian packages, the venv and
# the VM images under vm/cache are kept between runs.
rm -rf "$root/src.keep"
mkdir -p "$root/src.keep"
for kept in .venv vm/cache; do
    if [ -e "$root/src/$kept" ]; then
        mkdir -p "$root/src.keep/$(dirname "$kept")"
        mv "$root/src/$kept" "$root/src.keep/$kept"
    fi
done
rm -rf "$root/src"
mv "$root/src.keep" "$root/src"
(cd "$src" && git ls-files -co --exclude-standard -z) |
    (cd "$src" && xargs -0 cp --parents -a -t "$root/src" 2>/dev/null || true)
# pip inside uses the same index as outside (its config files and PIP_*).
for f in /etc/pip.conf /root/.config/pip/pip.conf; do
    if [ -e "$f" ]; then mkdir -p "$root$(dirname "$f")" && cp "$f" "$root$f"; fi
done
mapfile -t pip_env < <(env | grep '^PIP_' || true)

start=$(date +%s)
status=0
chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    TERM=dumb LANG=C.UTF-8 "${pip_env[@]}" \
    bash -c "cd /src && $cmd" || status=$?
echo "debian13: '$cmd' exited $status after $(($(date +%s) - start)) s"
exit $status

#!/usr/bin/env bash
# Builds the minimal swap-test guest from Debian packages and caches it under
# vm/cache/ (outside git). Idempotent: a second run with unchanged inputs
# only checks its stamp and exits.
#
#   vm/cache/vmlinuz              Debian's kernel (the version linux-image-amd64
#                                 depends on), booted by qemu under TCG
#   vm/cache/initramfs.cpio.gz    busybox-static + /init (vm/guest-init.sh),
#                                 the kernel modules the guest needs (virtio,
#                                 virtio_blk, virtio_net, nbd, zram + zsmalloc +
#                                 lz4) listed in load order per group,
#                                 nbd-client with the libraries ldd lists, and
#                                 vm/hog.c and vm/swapon-prio.c built with
#                                 gcc -static
#   vm/cache/guest.env            what was built (kernel version, ...)
#
# Installs the Debian packages it needs with apt-get when they are missing.
# VM_KERNEL_DEB=FILE: boot the kernel of this linux-image-*.deb instead (e.g.
# Debian 13's 6.12, linux-image-6.12.*+deb13-amd64_*.deb: `apt-get download`
# it on a trixie system, or take the one a `make test-debian13` root's
# vm/cache/debs holds); busybox and nbd-client stay the host's release's.
# Usage: [VM_KERNEL_DEB=FILE] vm/build-guest.sh [--force]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=$here/cache
force=${1:-}

log() { echo "build-guest: $*" >&2; }

# 1. Host tools (Debian packages), installed only when missing.
need=(qemu-system-x86 busybox-static cpio nbd-client gcc libc6-dev gzip)
missing=()
for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
apt_updated=
apt_update() {
    if [ -z "$apt_updated" ]; then
        log "apt-get update"
        $sudo_ apt-get update -qq
        apt_updated=1
    fi
}
if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    apt_update
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. Is the cache up to date? Inputs: this script, the guest init, the C helpers.
kernel_deb=${VM_KERNEL_DEB:-}
inputs_sum=$( (cat "$here/build-guest.sh" "$here/guest-init.sh" "$here/hog.c" "$here/swapon-prio.c"; basename "$kernel_deb") | sha256sum | cut -c1-16)
if [ "$force" != --force ] && [ -f "$cache/guest.env" ] && [ -f "$cache/vmlinuz" ] \
        && [ -f "$cache/initramfs.cpio.gz" ] && grep -qx "INPUTS=$inputs_sum" "$cache/guest.env"; then
    log "up to date ($(grep '^KVER=' "$cache/guest.env"))"
    exit 0
fi
mkdir -p "$cache/debs"

# 3. Which kernel: the one linux-image-amd64 depends on. A kernel package
#    already downloaded is reused without asking apt (works offline).
kpkg=
if [ -n "$kernel_deb" ]; then
    [ -f "$kernel_deb" ] || { log "VM_KERNEL_DEB=$kernel_deb: no such file"; exit 1; }
    kpkg=$(dpkg-deb -f "$kernel_deb" Package)
    case $kpkg in linux-image-[0-9]*) ;; *) log "$kernel_deb is $kpkg, not a linux-image-VERSION package"; exit 1 ;; esac
    deb_abs=$(cd "$(dirname "$kernel_deb")" && pwd)/$(basename "$kernel_deb")
    [ "$deb_abs" = "$cache/debs/$(basename "$kernel_deb")" ] || ln -sf "$deb_abs" "$cache/debs/"
else
    kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -1)
fi
if [ -z "$kpkg" ]; then
    apt_update
    kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -1)
fi
if [ -z "$kpkg" ]; then
    kpkg=$(cd "$cache/debs" && ls linux-image-*-amd64_*.deb 2>/dev/null | sed 's/_.*//' | sort -V | tail -1)
fi
[ -n "$kpkg" ] || { log "cannot tell which kernel linux-image-amd64 depends on"; exit 1; }
kver=${kpkg#linux-image-}
log "kernel $kver"

download() {  # download PACKAGE: the .deb into cache/debs unless already there
    local pkg=$1
    if ! ls "$cache/debs/${pkg}"_*.deb >/dev/null 2>&1; then
        log "apt-get download $pkg"
        (cd "$cache/debs" && apt-get -o APT::Sandbox::User=root download -qq "$pkg" >&2) || {
            apt_update
            (cd "$cache/debs" && apt-get -o APT::Sandbox::User=root download -qq "$pkg" >&2)
        }
    fi
    ls "$cache/debs/${pkg}"_*.deb | sort -V | tail -1
}
extract() {  # extract PACKAGE DIR
    rm -rf "$2"
    mkdir -p "$2"
    dpkg -x "$(download "$1")" "$2"
}

work=$cache/work
rm -rf "$work"
mkdir -p "$work"
extract "$kpkg" "$work/kernel"
extract busybox-static "$work/busybox"
extract nbd-client "$work/nbd-client"

# 4. The initramfs tree.
root=$work/root
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,etc,lib/modules,lib64,lib/x86_64-linux-gnu}
# Debian 12's busybox-static ships /bin/busybox, Debian 13's (merged /usr)
# /usr/bin/busybox.
busybox_bin=
for candidate in "$work/busybox/usr/bin/busybox" "$work/busybox/bin/busybox"; do
    if [ -f "$candidate" ]; then busybox_bin=$candidate; break; fi
done
[ -n "$busybox_bin" ] || { log "no busybox binary in the busybox-static package"; exit 1; }
cp "$busybox_bin" "$root/bin/busybox"
cp "$here/guest-init.sh" "$root/init"
chmod 755 "$root/init"
gcc -O2 -Wall -Wextra -static -o "$root/bin/hog" "$here/hog.c"
gcc -O2 -Wall -Wextra -static -o "$root/bin/swapon-prio" "$here/swapon-prio.c"

# nbd-client and the shared libraries ldd lists (from the host's copies,
# which the nbd-client package installed above pulled in).
nbd_bin=$(ls "$work"/nbd-client/{usr/sbin,sbin,usr/bin,bin}/nbd-client 2>/dev/null | head -1 || true)
[ -n "$nbd_bin" ] || { log "no nbd-client binary in the nbd-client package"; exit 1; }
cp "$nbd_bin" "$root/sbin/nbd-client"
if ldd "$root/sbin/nbd-client" | grep -q 'not found'; then
    log "nbd-client needs libraries the host lacks:"; ldd "$root/sbin/nbd-client" >&2; exit 1
fi
for lib in $(ldd "$root/sbin/nbd-client" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done

# Kernel modules: each group in dependency order (the package ships no
# modules.dep; a module's own .modinfo names what it depends on). Modules
# that are built in (modules.builtin) need no file.
# (/lib/modules on Debian 12; a merged-/usr kernel package may ship
# /usr/lib/modules.)
mods=$work/kernel/lib/modules/$kver
[ -d "$mods" ] || mods=$work/kernel/usr/lib/modules/$kver
python3 - "$mods" "$root/lib/modules" <<'EOF'
import os, re, shutil, sys
mods, out = sys.argv[1], sys.argv[2]
groups = {
    "base": ["virtio_pci"],
    "blk": ["virtio_blk"],
    "net": ["virtio_net"],
    "nbd": ["nbd"],
    "zram": ["zram", "lz4"],
}
builtin = set()
for line in open(os.path.join(mods, "modules.builtin")):
    builtin.add(os.path.basename(line.strip()).removesuffix(".ko").replace("-", "_"))
files = {}
for dirpath, _, names in os.walk(os.path.join(mods, "kernel")):
    for n in names:
        # Debian 12 ships plain .ko files, Debian 13 .ko.xz
        for ext in (".ko", ".ko.xz"):
            if n.endswith(ext):
                files[n[: -len(ext)].replace("-", "_")] = os.path.join(dirpath, n)

def module_bytes(name):
    import lzma
    data = open(files[name], "rb").read()
    return lzma.decompress(data) if files[name].endswith(".xz") else data

def depends(name):
    data = module_bytes(name)
    m = re.search(rb"depends=([A-Za-z0-9_,-]*)\0", data)
    return [d.replace("-", "_") for d in m.group(1).decode().split(",") if d] if m else []

for group, wanted in groups.items():
    order, seen = [], set()
    def visit(name):
        if name in seen or name in builtin:
            return
        seen.add(name)
        if name not in files:
            sys.exit(f"build-guest: module {name} is neither built in nor in the package")
        for dep in depends(name):
            visit(dep)
        order.append(name)
    for w in wanted:
        visit(w)
    with open(os.path.join(out, group + ".order"), "w") as f:
        for name in order:
            with open(os.path.join(out, name + ".ko"), "wb") as ko:
                ko.write(module_bytes(name))
            f.write(name + "\n")
    print(f"build-guest: modules {group}: {' '.join(order) or '(built in)'}", file=sys.stderr)
EOF

(cd "$root" && find . | sort | cpio -o -H newc --quiet | gzip -6) > "$cache/initramfs.cpio.gz.tmp"
mv "$cache/initramfs.cpio.gz.tmp" "$cache/initramfs.cpio.gz"
cp "$work/kernel/boot/vmlinuz-$kver" "$cache/vmlinuz"
cp "$root/bin/hog" "$cache/hog"
cat > "$cache/guest.env" <<EOF
KVER=$kver
BUSYBOX=$(basename "$(download busybox-static)")
NBD_CLIENT=$(basename "$(download nbd-client)")
INPUTS=$inputs_sum
EOF
rm -rf "$work"
log "built $cache/vmlinuz and $cache/initramfs.cpio.gz ($(du -k "$cache/initramfs.cpio.gz" | cut -f1) KiB)"

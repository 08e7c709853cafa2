#!/bin/busybox sh
# /init of the zramd swap-test guest (busybox, run by the kernel as PID 1).
# vm/run.py boots it with parameters on the kernel command line:
#   zramd.dev=vda|nbd|zram  swap device: qemu's NBD client as a virtio disk,
#                           the kernel's nbd driver (nbd-client through qemu's
#                           user-mode forwarding), or the guest's own zram
#   zramd.hog_mib=N         memory the hog program fills and verifies
#   zramd.passes=P          hog passes (each later pass rewrites every page)
#   zramd.corrupt=I         self-test: hog flips a byte of page I (-1: off)
#   zramd.zram_mib=N        zram disksize (dev=zram)
#   zramd.nbd_conns=N       nbd-client connections (dev=nbd)
#   zramd.ndev=N            striped: N swap devices of the same kind at equal
#                           priority, one per zramd instance (vda vdb ...;
#                           or nbd0 nbd1 ... on forwarded ports P, P+1, ...)
#   zramd.nbd_port=P        the first forwarded port (dev=nbd; default 10809)
#   zramd.discard=POLICY    swapon's discard policy (vm/swapon-prio.c): both
#                           (default, `swapon --discard`), once, pages, none
#   zramd.page_cluster=N    vm.page-cluster (swap readahead of 2^N pages;
#                           unset: the kernel's default, 3)
# It prints machine-readable lines on the console:
#   ZRAMD-PHASE name                       progress
#   ZRAMD-RESULT key=value ...             measurements
#   HOG-...                                the hog's own lines (vm/hog.c)
#   ZRAMD-PROGRESS t=S pswpin=.. ...       every 10 s while the hog runs
#   ZRAMD-SWAP t=S used_kib=N cached_kib=N ... every second while the hog runs:
#                                          swap in use (SwapTotal - SwapFree),
#                                          SwapCached; dev=zram: zram0's
#                                          orig_data_size and mem_used_total
#   ZRAMD-FAIL reason                      a step failed
#   ZRAMD-DONE ok=0|1                      last line before power-off
/bin/busybox mkdir -p /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

phase() { echo "ZRAMD-PHASE $*"; }
result() { echo "ZRAMD-RESULT $*"; }
finish() {
    echo "ZRAMD-DONE ok=$1"
    sync
    poweroff -f
    sleep 10
}
fail() {
    echo "ZRAMD-FAIL $*"
    dmesg | tail -n 30
    finish 0
}
param() {  # param NAME DEFAULT: the value of zramd.NAME= on the kernel command line
    v=$(tr ' ' '\n' < /proc/cmdline | sed -n "s/^zramd\.$1=//p" | tail -n 1)
    echo "${v:-$2}"
}
uptime_s() { cut -d' ' -f1 /proc/uptime; }
vmstat() { awk '$1 == "pswpin" || $1 == "pswpout" { printf "%s=%s ", $1, $2 }' /proc/vmstat; }
load_group() {  # load_group NAME: insmod the modules of one group, in order
    for m in $(cat /lib/modules/$1.order); do
        [ -d /sys/module/$m ] && continue
        insmod /lib/modules/$m.ko || fail "insmod $m"
    done
}
wait_for() {  # wait_for PATH SECONDS
    local tries=0
    while [ ! -e "$1" ]; do
        tries=$((tries + 1))
        [ $tries -gt $(($2 * 10)) ] && fail "timeout waiting for $1"
        usleep 100000
    done
}

dev_kind=$(param dev vda)
hog_mib=$(param hog_mib 200)
passes=$(param passes 2)
corrupt=$(param corrupt -1)
zram_mib=$(param zram_mib 512)
nbd_conns=$(param nbd_conns 1)
ndev=$(param ndev 1)
nbd_port=$(param nbd_port 10809)
discard=$(param discard both)
page_cluster=$(param page_cluster "")
[ -n "$page_cluster" ] && { echo "$page_cluster" > /proc/sys/vm/page-cluster || fail "page-cluster $page_cluster"; }
# Every swap device gets this priority: equal priorities make the kernel
# use them round-robin (striping), as one zram device per CPU once did.
swap_prio=10
mem_kib=$(awk '$1 == "MemTotal:" { print $2 }' /proc/meminfo)
result "boot_s=$(uptime_s) dev=$dev_kind ndev=$ndev mem_total_kib=$mem_kib hog_mib=$hog_mib passes=$passes kernel=$(uname -r)"

# A larger free-memory reserve for a 128 MiB guest that swaps 2.6x its RAM:
# reclaim starts earlier and leaves room for what swap-out itself needs.
# Swap over a network needs it most (the replies to swap-out writes arrive
# in skbs allocated when memory is lowest: with two nbd swap devices the
# guest stalled at the onset of swapping without it, 2 runs in 3, kblockd
# blocked for minutes after ~300 pages); the virtio disks get the same
# reserve, so every target runs under one memory policy.
echo 8192 > /proc/sys/vm/min_free_kbytes

phase attach
devs=""
case $dev_kind in
vda)
    load_group base
    load_group blk
    for l in a b c d e f g h; do
        [ $(echo $devs | wc -w) -ge $ndev ] && break
        d=/dev/vd$l
        wait_for $d 20
        # virtio-blk says "rotational", and the kernel discards freed swap
        # pages (swapon --discard=pages) only on non-rotational devices: tell
        # it the truth, as an administrator would for any RAM- or flash-backed disk.
        echo 0 > /sys/block/vd$l/queue/rotational
        devs="$devs $d"
    done
    ;;
nbd)
    load_group base
    load_group net
    load_group nbd
    wait_for /sys/class/net/eth0 20
    ip link set lo up
    ip link set eth0 up || fail "eth0 up"
    ip addr add 10.0.2.15/24 dev eth0 || fail "eth0 address"
    conns=""
    [ "$nbd_conns" -gt 1 ] && conns="-C $nbd_conns"
    k=0
    while [ $k -lt $ndev ]; do
        d=/dev/nbd$k
        wait_for $d 10
        # 10.0.2.100:PORT exists only inside qemu: its guestfwd rules hand
        # each port's connection to one host Unix socket and nowhere else.
        # -swap (mlock nbd-client): Debian 12's nbd-client has it, Debian 13's not
        nbd-client 10.0.2.100 $((nbd_port + k)) $d -swap -b 4096 $conns ||
            nbd-client 10.0.2.100 $((nbd_port + k)) $d -b 4096 $conns || fail "nbd-client $d"
        devs="$devs $d"
        k=$((k + 1))
    done
    ;;
zram)
    load_group zram
    devs=/dev/zram0
    wait_for /sys/block/zram0/disksize 10
    echo lz4 > /sys/block/zram0/comp_algorithm || fail "zram comp_algorithm"
    echo "${zram_mib}M" > /sys/block/zram0/disksize || fail "zram disksize"
    ;;
*)
    fail "unknown zramd.dev=$dev_kind"
    ;;
esac
for dev in $devs; do
    q=/sys/block/${dev#/dev/}/queue
    result "attach_s=$(uptime_s) dev_bytes=$(blockdev --getsize64 $dev) discard_max_bytes=$(cat $q/discard_max_bytes) rotational=$(cat $q/rotational) logical_block_size=$(cat $q/logical_block_size)"
done

phase mkswap
for dev in $devs; do
    mkswap $dev > /dev/null || fail "mkswap $dev"
done
phase swapon
for dev in $devs; do
    swapon-prio $swap_prio $dev $discard || fail "swapon-prio $swap_prio $dev $discard"
done
# /proc/swaps: name type size used priority; one key per device, e.g. swap_prio_vda=10
result "swapon_s=$(uptime_s) discard=$discard page_cluster=$(cat /proc/sys/vm/page-cluster) $(vmstat | sed 's/=/_before=/g') $(awk 'NR > 1 { n = $1; sub(".*/", "", n); printf "swap_prio_%s=%s ", n, $5 }' /proc/swaps)"

phase hog
statfile=""
[ "$dev_kind" = zram ] && statfile="-s /sys/block/zram0/mm_stat"
t0=$(uptime_s)
# A watchdog beside the hog: swap counters every 10 s (does I/O still move?),
# and at 120 s the blocked tasks' kernel stacks, so that a guest that stops
# making progress says where it waits before the host's timeout kills it.
(
    n=0
    while sleep 10; do
        n=$((n + 10))
        echo "ZRAMD-PROGRESS t=$n $(vmstat)$(awk '$1 == "MemFree:" { printf "memfree_kib=%s", $2 }' /proc/meminfo)"
        if [ $n = 120 ]; then
            echo w > /proc/sysrq-trigger
            dmesg | tail -n 120 | sed 's/^/ZRAMD-DMESG /'
        fi
    done
) &
watchdog=$!
# The swap the guest uses, every second, beside the server's stats the host
# samples: stored pages beyond it are slots the kernel freed but has not
# discarded (a whole swap cluster must be free first).
swap_sample() {
    z=""
    [ "$dev_kind" = zram ] && z=$(awk '{ printf " zram_orig_bytes=%s zram_mem_bytes=%s", $1, $3 }' /sys/block/zram0/mm_stat)
    echo "ZRAMD-SWAP t=$(uptime_s) $(awk '$1 == "SwapTotal:" { t = $2 } $1 == "SwapFree:" { f = $2 } $1 == "SwapCached:" { c = $2 } END { printf "used_kib=%d cached_kib=%d", t - f, c }' /proc/meminfo)$z"
}
(
    while sleep 1; do swap_sample; done
) &
sampler=$!
hog -p "$passes" -x "$corrupt" $statfile "$hog_mib"
hog_rc=$?
kill $watchdog $sampler 2>/dev/null
swap_sample
t1=$(uptime_s)
result "hog_rc=$hog_rc hog_start_s=$t0 hog_end_s=$t1 $(vmstat | sed 's/=/_after=/g')"
[ "$dev_kind" = zram ] && result "zram_mm_stat_after_hog=$(tr -s ' ' , < /sys/block/zram0/mm_stat | sed 's/^,//')"

phase swapoff
for dev in $devs; do
    swapoff $dev || fail "swapoff $dev"
done
result "swapoff_s=$(uptime_s) $(vmstat | sed 's/=/_swapoff=/g')"
[ "$dev_kind" = zram ] && result "zram_mm_stat_after_swapoff=$(tr -s ' ' , < /sys/block/zram0/mm_stat | sed 's/^,//') zram_io_stat_after_swapoff=$(tr -s ' ' , < /sys/block/zram0/io_stat | sed 's/^,//')"
# The host samples the server now: what the kernel's own discards returned.
# (Swap slots freed after swapoff began are not discarded by the kernel.)
phase swapped-off
sleep 3
if [ "$dev_kind" != zram ]; then
    # Teardown: discard the whole device so the server returns every page.
    phase blkdiscard
    for dev in $devs; do
        blkdiscard $dev || fail "blkdiscard $dev"
    done
fi
if [ "$dev_kind" = nbd ]; then
    phase disconnect
    for dev in $devs; do
        nbd-client -d $dev > /dev/null 2>&1 || fail "nbd-client -d $dev"
    done
fi
dmesg | grep -iE 'error|fail|oom|killed|corrupt|bad page' | grep -iv 'command line' | tail -n 10 | sed 's/^/ZRAMD-DMESG /'
[ "$hog_rc" = 0 ] && finish 1
finish 0

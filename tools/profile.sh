#!/usr/bin/env bash
# Profiles zramd's hot path: serves a device, drives it with fio (4 KiB
# random I/O at iodepth 16 over the nbd engine) and, while fio runs, either
# samples the Python stacks of the nbdkit process with py-spy, counts its
# system calls with strace, or splits its CPU time by library with perf
# (the kernel, the interpreter, the codec, libc).  CONTRIBUTING.md explains
# how to read the output.
# Usage: tools/profile.sh pyspy|strace|perf [randwrite|randread] [SERVE ARGS...]
#   e.g. tools/profile.sh pyspy randwrite --compress async
# Needs: make setup; fio; strace (strace mode); perf (perf mode: Debian's
# linux-perf); py-spy in the venv (.venv/bin/pip install py-spy) for pyspy
# mode.  Output in ./profile-out/.
set -euo pipefail
mode=${1:?usage: tools/profile.sh pyspy|strace|perf [randwrite|randread] [SERVE ARGS...]}
rw=${2:-randwrite}
shift $(( $# >= 2 ? 2 : 1 ))
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$here/.venv}
out=$PWD/profile-out
mkdir -p "$out"
run=$(mktemp -d /tmp/zramd-prof.XXXXXX)
sock=$run/z.sock
uri="nbd+unix:///?socket=$sock"
seconds=${SECONDS_TO_SAMPLE:-10}

"$venv/bin/zramd" serve --socket "$sock" --size 512M "$@" >"$run/serve.log" 2>&1 &
serve=$!
fio=
# on any exit: the load first (a connected client keeps the server serving)
trap '[ -n "$fio" ] && { kill "$fio" 2>/dev/null || true; }; kill -TERM $serve 2>/dev/null; wait $serve 2>/dev/null; rm -rf "$run"' EXIT
for _ in $(seq 100); do [ -S "$sock" ] && [ -S "$sock.ctl" ] && break; sleep 0.1; done
pid=$(pgrep -P "$serve" -x nbdkit)
# fill the device first so that reads find data; pages half compressible, as
# in the bench (bench/systems.py FIO_DATA_OPTIONS)
data=--buffer_compress_percentage=50
fio --name=fill --ioengine=nbd --uri="$uri" --rw=write --bs=128k --size=256M "$data" \
    --output-format=terse >/dev/null
fio --name=load --ioengine=nbd --uri="$uri" --rw="$rw" --bs=4k --iodepth=16 --size=256M "$data" \
    --time_based --runtime=$((seconds + 4)) --output-format=terse >/dev/null &
fio=$!
sleep 2
case $mode in
pyspy)
    # Only the request path: stacks under the pread/pwrite callbacks.  The
    # connection thread spends the rest in C (socket I/O), which py-spy
    # shows as samples without Python frames.
    "$venv/bin/py-spy" record --pid "$pid" --duration "$seconds" --rate 250 \
        --format raw -o "$out/pyspy.txt" >/dev/null
    "$venv/bin/py-spy" record --pid "$pid" --duration 3 --rate 250 \
        --format speedscope -o "$out/pyspy.speedscope.json" >/dev/null
    total=$(awk '{n += $NF} END {print n}' "$out/pyspy.txt")
    echo "py-spy: $total samples of the nbdkit process ($rw); innermost functions under the callbacks:"
    grep -E '^(pwrite|pread|trim|zero|flush) ' "$out/pyspy.txt" | awk '
        { n = $NF; sub(/ [0-9]+$/, ""); k = split($0, f, ";"); leaf = f[k];
          sub(/:[0-9]+\)$/, ")", leaf); c[leaf] += n; t += n }
        END { for (l in c) printf "%5.1f%%  %s\n", 100 * c[l] / t, l }' | sort -rn | head -15 || true  # head closing early is not a failure
    echo "(whole stacks: $out/pyspy.txt; open $out/pyspy.speedscope.json in speedscope.app)"
    ;;
strace)
    timeout --signal=INT "$seconds" strace -c -f -p "$pid" -o "$out/strace.txt" || true
    echo "strace -c -f: system calls of the nbdkit process during $seconds s of $rw:"
    cat "$out/strace.txt"
    ;;
perf)
    # cpu-clock sampling works in VMs without hardware counters.
    perf record -F 999 -e cpu-clock -p "$pid" -o "$out/perf.data" -- sleep "$seconds" \
        >"$out/perf-record.log" 2>&1 ||
        { echo "tools/profile.sh: perf record failed:" >&2; cat "$out/perf-record.log" >&2; exit 1; }
    echo "perf: the nbdkit process's CPU time during $seconds s of $rw, by library:"
    perf report -i "$out/perf.data" --no-children --sort dso --stdio 2>/dev/null |
        grep -E '^ +[0-9.]+%' | head -10 || true
    echo "hottest functions:"
    perf report -i "$out/perf.data" --no-children --sort dso,sym --stdio 2>/dev/null |
        grep -E '^ +[0-9.]+%' | head -15 || true
    echo "(perf report -i $out/perf.data for the rest)"
    ;;
*)
    echo "tools/profile.sh: unknown mode $mode (pyspy, strace or perf)" >&2; exit 2 ;;
esac
wait $fio

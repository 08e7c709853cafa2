#!/usr/bin/env bash
# What scraping the metrics endpoint costs the I/O path: fio 4 KiB random
# writes (iodepth 16, 8 s) against a 512M device, with and without a scraper
# (curl every INTERVAL seconds), ROUNDS rounds interleaved; prints IOPS.
# Usage: tools/metrics_cost.sh [INTERVAL] [ROUNDS]   (docs/design.md#metrics)
set -euo pipefail
interval=${1:-1}
rounds=${2:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
zramd="$here/.venv/bin/zramd"
dir=$(mktemp -d /tmp/zramd-mcost-XXXXXX)
trap 'rm -rf "$dir"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

one() {  # $1: none|scrape
    "$zramd" serve --socket "$dir/m.sock" --size 512M --metrics-address "127.0.0.1:$port" \
        >"$dir/banner" 2>"$dir/err" &
    local pid=$! sp=""
    for _ in $(seq 300); do [ -S "$dir/m.sock.ctl" ] && break; sleep 0.1; done
    if [ "$1" = scrape ]; then
        (while true; do curl -s "http://127.0.0.1:$port/metrics" >/dev/null; sleep "$interval"; done) &
        sp=$!
    fi
    local iops
    iops=$(fio --name=t --ioengine=nbd --uri="nbd+unix:///?socket=$dir/m.sock" --rw=randwrite \
        --bs=4k --iodepth=16 --size=256M --time_based --runtime=8 \
        --buffer_compress_percentage=50 --refill_buffers --output-format=json 2>/dev/null |
        python3 -c 'import json, sys; t = sys.stdin.read(); print(int(json.loads(t[t.index("{"):])["jobs"][0]["write"]["iops"]))')
    if [ -n "$sp" ]; then kill "$sp"; fi
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    echo "$1 $iops"
}

for _ in $(seq "$rounds"); do one none; one scrape; done

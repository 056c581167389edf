#!/usr/bin/env bash
# What dirty logging costs the guest: `workload=dirty` first touches N pages
# (before its window) and re-writes them inside the window, right after the
# VMM cleared the log (every page write-protected again). Prints, per mode
# (off, bitmap, ring) and THP setting, the median over RUNS runs of the
# guest's cycles per page for each pass, in microseconds (the guest's TSC
# counts, converted with the report's tsc_khz), and the ring-full exits.
#
#   tools/dirty-cost.sh [pages] [runs]
#
# pages: default 65536 (256 MiB, in a 1 GiB guest); runs: default 5.
# Uses target/release/memvisor (built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

pages=${1:-65536}
runs=${2:-5}
bin=target/release/memvisor
[ -x "$bin" ] || cargo build --release -q
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

printf '%-7s %-4s %14s %14s %10s\n' mode thp first_touch_us rewrite_us ring_full
for thp in on off; do
    for mode in off bitmap ring; do
        for i in $(seq "$runs"); do
            "$bin" run --quiet --memory 1G --thp "$thp" --dirty-log "$mode" \
                --cmdline "workload=dirty dirty_pages=$pages" \
                --report "$tmp/$mode-$thp-$i.json" || {
                echo "run failed: mode $mode thp $thp" >&2
                exit 1
            }
        done
        jq -s --arg mode "$mode" --arg thp "$thp" --argjson pages "$pages" '
            def med: sort | .[(length / 2 | floor)];
            def per_page(f): map(f / .tsc_khz * 1000 / $pages) | med;
            map(. as $r | ($r.guest[] | select(.event == "workload")) + {tsc_khz: $r.tsc_khz,
                ring_full: ($r.memory.dirty.ring_full_exits // 0)})
            | "\($mode) \($thp) \(per_page(.first_touch_cycles) * 1000 | round / 1000) \(per_page(.rewrite_cycles) * 1000 | round / 1000) \(map(.ring_full) | med)"
        ' -r "$tmp"/"$mode-$thp"-*.json | awk '{ printf "%-7s %-4s %14s %14s %10s\n", $1, $2, $3, $4, $5 }'
    done
done

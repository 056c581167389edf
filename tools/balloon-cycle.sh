#!/usr/bin/env bash
# One balloon cycle against a prefaulted guest, driven through the API as a
# user would, and what the report's `balloon` section says of it: per step,
# target set → actual reached and → the Rss drop complete, the reclaim rate,
# the host Rss before and after, whole 2 MiB blocks freed, collapses and THP
# coverage before inflate, after inflate and after deflate and reuse.
#
#   tools/balloon-cycle.sh [--mode 2m|4k] [--memory SIZE] [--amount MIB]
#                          [--fragment K] [--bin PATH]
#
# Defaults: 2m, 1G, 512, no fragment, target/release/memvisor (build it
# first: `cargo build --release`). `--fragment K` ages the guest first
# (balloon-hold's fragment=K: free memory scattered through every 2 MiB
# block), so a 4k inflate splits the host's huge pages. Needs /dev/kvm and
# jq. Exit status: 0 done; 2 a bad argument (named) or an amount the API
# refuses; memvisor run's own if the VM ends early (2 for a bad --memory;
# 1 if it ended well); 1 the balloon did not reach the amount in 120 s.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=2m
memory=1G
amount=512
bin=target/release/memvisor
fragment=
bad() { echo "balloon-cycle.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        --mode|--memory|--amount|--fragment|--bin)
            [ $# -ge 2 ] || bad "$1 needs a value (see --help)" ;;&
        --mode) mode="$2"; shift 2 ;;
        --memory) memory="$2"; shift 2 ;;
        --amount) amount="$2"; shift 2 ;;
        --fragment) fragment="$2"; shift 2 ;;
        --bin) bin="$2"; shift 2 ;;
        *) bad "unknown argument $1 (see --help)" ;;
    esac
done
# What the guest or the API would refuse only after a VM is up is refused
# here, naming the value (the amount's upper bound, guest RAM, is the API's).
case "$mode" in 2m|4k) ;; *) bad "--mode $mode: valid: 2m or 4k" ;; esac
[[ "$amount" =~ ^[0-9]+$ ]] || bad "--amount $amount: valid: a whole number of MiB"
if [ -n "$fragment" ]; then
    [[ "$fragment" =~ ^[0-9]+$ ]] && [ "$fragment" -ge 2 ] && [ "$fragment" -le 512 ] ||
        bad "--fragment $fragment: valid: a whole number from 2 to 512"
    fragment="fragment=$fragment"
fi
[ -x "$bin" ] || bad "--bin $bin: not an executable (build it: cargo build --release)"
# Without jq every stats read below would come back empty.
command -v jq >/dev/null || bad "needs jq, which is not installed (apt-get install jq)"

dir=$(mktemp -d /tmp/memvisor-balloon-cycle.XXXXXX)
sock="$dir/api.sock"
report="$dir/report.json"
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

"$bin" run --quiet --memory "$memory" --prefault --timeout 300 \
    --api-sock "$sock" --report "$report" \
    --balloon amount_mib=0,deflate_on_oom=on,stats_polling_interval_s=1 \
    --cmdline "console=ttyS0 workload=balloon-hold size=128M cycles=1 seconds=240 balloon_mode=$mode $fragment" &
pid=$!

rss() { awk '/^VmRSS:/ { print $2 * 1024 }' "/proc/$pid/status"; }
# Every wait ends: with the VM (its own error line is already on stderr)
# or after 120 s (a guest that cannot give the amount never reaches it).
deadline=$((SECONDS + 120))
waited() {
    if ! kill -0 "$pid" 2>/dev/null; then
        st=0; wait "$pid" || st=$?; pid=
        echo "balloon-cycle.sh: memvisor run ended (exit $st) while $1" >&2
        exit $((st == 0 ? 1 : st))
    fi
    [ "$SECONDS" -lt "$deadline" ] || { echo "balloon-cycle.sh: gave up after 120 s $1" >&2; exit 1; }
}
# Firecracker refuses a target until the guest's driver is up.
until "$bin" balloon set 0 --api-sock "$sock" 2>/dev/null; do
    waited "waiting for the guest's balloon driver"
    sleep 0.05
done
before=$(rss)
"$bin" balloon set "$amount" --api-sock "$sock"
deadline=$((SECONDS + 120))
until [ "$("$bin" balloon stats --api-sock "$sock" | jq .actual_mib)" = "$amount" ]; do
    waited "waiting for the balloon to reach $amount MiB"
    sleep 0.01
done
after=$(rss)
"$bin" balloon set 0 --api-sock "$sock"
wait "$pid"
pid=

echo "mode $mode, guest $memory, balloon $amount MiB"
echo "host VmRSS: $((before >> 20)) MiB before inflate, $((after >> 20)) MiB at target:" \
    "dropped $(((before - after) >> 20)) MiB ($(( (before - after) * 100 / (amount << 20) ))% of the balloon)"
jq -r --argjson mib "$amount" '.balloon as $b |
  ($b.steps[] | "\(.kind) \(.from_pages / 256 | floor) -> \(.to_pages / 256 | floor) MiB: actual reached in \(.actual_reached_ms * 100 | round / 100) ms" +
     (if .rss_done_ms then ", Rss drop complete in \(.rss_done_ms * 100 | round / 100) ms = \((($mib / 1024) / (.rss_done_ms / 1000)) * 100 | round / 100) GiB/s" else "" end)),
  "discarded \($b.discarded_bytes / 1048576) MiB in \($b.discards) ranges, \($b.whole_2m_freed) whole 2 MiB blocks; collapsed \($b.ranges_collapsed) (failed \($b.collapse_errors), skipped \($b.collapse_skipped), not resident \($b.collapse_not_resident))",
  "THP coverage: before inflate \($b.thp_before_inflate.coverage // "n/a"), after inflate \($b.thp_after_inflate.coverage // "n/a"), after deflate and reuse \($b.thp_after_deflate.coverage // "n/a")",
  "interrupts \($b.interrupts), guest kicks \($b.notifications), rejected \($b.rejected_total)"' "$report"

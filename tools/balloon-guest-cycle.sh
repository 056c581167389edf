#!/usr/bin/env bash
# One inflate/deflate cycle of the bundled guest's balloon driver through
# the control API, with guest RAM resident first (--prefault), and the
# timings both sides measured: the guest's (target read -> actual reached)
# and the host's steps (target set -> actual reached, -> Rss change done),
# with the driver's batches, kicks and interrupts.
#
#   tools/balloon-guest-cycle.sh MODE MEMORY INFLATE_MIB
#   tools/balloon-guest-cycle.sh 2m 1G 768
#
# MODE: 4k or 2m (balloon_mode=). Uses target/release/memvisor (build it
# first: cargo build --release). The memvisor bench for the issue's goals
# is `memvisor bench balloon` and tools/balloon-cycle.sh the host's view of
# one cycle; this is the driver's own view (batches, kicks, interrupts).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?mode 4k or 2m}
mem=${2:?memory, e.g. 1G}
mib=${3:?MiB to inflate}
bin=target/release/memvisor
sock=$(mktemp -u /tmp/balloon-cycle-XXXXXX.sock)
report=$(mktemp /tmp/balloon-cycle-XXXXXX.json)
trap 'rm -f "$sock" "$report"' EXIT
"$bin" run --memory "$mem" --prefault --api-sock "$sock" --balloon amount_mib=0 \
    --cmdline "workload=balloon-hold size=64M balloon_mode=$mode" \
    --report "$report" --quiet --timeout 120 &
vmm=$!
# Refused until the guest's driver has set the device up.
until "$bin" balloon set 0 --api-sock "$sock" 2>/dev/null; do sleep 0.1; done
sleep 0.5
"$bin" balloon set "$mib" --api-sock "$sock"
sleep 2
"$bin" balloon set 0 --api-sock "$sock"
wait "$vmm"
python3 - "$mode" "$mem" "$report" <<'PY'
import json, sys
mode, mem, path = sys.argv[1:4]
r = json.load(open(path))
w = [g for g in r["guest"] if g["event"] == "workload"][-1]
b = w["balloon"]
print(f"{mode} {mem}: ok={w['ok']} inflated {b['inflated_pages']} pages in "
      f"{b['inflate_buffers']} buffers, {b['inflate_batches']} kicks; "
      f"{b['notifications']} notifications, {b['interrupts']} interrupts; "
      f"2 MiB units {b['huge_units']}")
for g in r["guest"]:
    if g["event"] == "balloon":
        print(f"  guest: target {g['target']} pages reached {g['ms_since_change']} ms after it was read")
for s in r["balloon"]["steps"]:
    mib = abs(s["to_pages"] - s["from_pages"]) / 256
    ms = s["actual_reached_ms"]
    print(f"  host {s['kind']} {mib:.0f} MiB: actual after {ms:.1f} ms, "
          f"Rss done after {s['rss_done_ms']} ms: {mib / 1024 / (ms / 1000):.1f} GiB/s")
PY

#!/usr/bin/env bash
# Boot with --numa against boot without it (issue 8's target: within 1 ms),
# on this shared machine: single `memvisor bench boot --runs 1` invocations,
# alternating plain and --numa, so both see the same load from whatever else
# runs here; then the medians of each and their delta, beside the goal.
#
#   tools/numa-boot-delta.sh [pairs]
#
# pairs: plain/--numa pairs (default 40). Plain: 256M, 2 vCPUs. --numa: two
# nodes of 128M with one vCPU each, both on host node 0.
set -euo pipefail
cd "$(dirname "$0")/.."

pairs="${1:-40}"
cargo build --release --quiet
bin=target/release/memvisor
plain=(--memory 256M --vcpus 2)
numa=(--numa node=0,size=128M,cpus=0,host-node=0 --numa node=1,size=128M,cpus=1,host-node=0)
rows=$(mktemp)
trap 'rm -f "$rows"' EXIT
one() {
    local tag="$1"
    shift
    "$bin" bench boot --runs 1 --json "$@" | python3 -c "
import json, sys
j = json.load(sys.stdin)
print('$tag', j['spawn_to_ready_ms']['median'], j['spawn_to_exit_ms']['median'])"
}
for _ in $(seq "$pairs"); do
    one plain "${plain[@]}" >>"$rows"
    one numa "${numa[@]}" >>"$rows"
done
python3 - "$rows" <<'EOF'
import statistics as st, sys
rows = [l.split() for l in open(sys.argv[1])]
med = {}
for tag, name in (("plain", "256M, 2 vCPUs"), ("numa", "--numa 2 x 128M, 1 vCPU each")):
    ready = [float(r[1]) for r in rows if r[0] == tag]
    exit_ = [float(r[2]) for r in rows if r[0] == tag]
    med[tag] = (st.median(ready), st.median(exit_))
    print(f"{name:30} {len(ready)} runs: spawn->ready median {med[tag][0]:.3f} ms, "
          f"spawn->exit median {med[tag][1]:.3f} ms")
d_ready = med["numa"][0] - med["plain"][0]
d_exit = med["numa"][1] - med["plain"][1]
verdict = "met" if d_ready <= 1.0 else "NOT met"
print(f"delta (--numa minus plain): ready {d_ready:+.3f} ms (goal <= 1 ms: {verdict}), "
      f"exit {d_exit:+.3f} ms")
EOF

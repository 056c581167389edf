#!/usr/bin/env bash
# Mutation testing of guest-mm's allocator modules with cargo-mutants: does
# every rule the code implements have a test that fails when it is broken?
#
#   tools/mutants.sh [--shard K/N] [--timeout S] [--iterate] [--summary] [FILE...]
#
# FILE: paths under guest-mm/src (default: page_alloc/*.rs but tests, pcp.rs,
#       zonelist.rs, mempolicy.rs, vmstat.rs, slab.rs). One cargo-mutants run
#       per file, one after the other, each with its own output directory
#       target/mutants-out/<file>/mutants.out, so a long run can be stopped
#       and a file re-run alone.
# --shard K/N: test only every N-th mutant, starting at the K-th (round-robin
#       sharding): a sample, for when the whole set does not fit the time.
# --timeout S: per-mutant test timeout (default 120 s; a mutant that loops
#       forever counts as "timeout", which is a kill).
# --iterate: skip mutants caught by the previous run in the same directory.
# --summary: print the table from existing output, run nothing.
#
# Sized for a shared 2-core machine: --jobs 1, the tests in release (as the
# issue asks) but without LTO and with incremental codegen, so a mutant
# costs one ~15 s rebuild of guest-mm plus ~8 s of its unit tests; every
# file shares one target directory (target/mutants-build), so dependencies
# build once. Only guest-mm's unit tests run (--lib): the benches and the
# callgrind example test nothing. Each file's mutants run the tests of its
# own module and of page_alloc (which drives every allocator module end to
# end), not the slab's and memblock's long property tests when they cannot
# reach the mutated code; the allocator modules skip the 10^6-operation test,
# whose checks the property test (free lists checked after every operation)
# makes on every step.
#
# Prints caught / missed / unviable / timeout per file and the caught
# percentage of viable mutants (caught + timeout over caught + missed +
# timeout), then the missed mutants, which are what needs a test or a reason.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

shard=""
timeout=120
iterate=()
summary_only=0
files=()
while [ $# -gt 0 ]; do
    case "$1" in
        --shard) shard="$2"; shift 2 ;;
        --timeout) timeout="$2"; shift 2 ;;
        --iterate) iterate=(--iterate); shift ;;
        --summary) summary_only=1; shift ;;
        -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
        *) files+=("${1#guest-mm/src/}"); shift ;;
    esac
done
if [ ${#files[@]} -eq 0 ]; then
    files=(page_alloc/mod.rs page_alloc/buddy.rs page_alloc/zone.rs page_alloc/boost.rs
        page_alloc/slowpath.rs pcp.rs zonelist.rs mempolicy.rs vmstat.rs slab.rs)
fi

if [ "$summary_only" -eq 0 ] && ! cargo mutants --version >/dev/null 2>&1; then
    echo "cargo-mutants missing: cargo install cargo-mutants --locked" >&2
    exit 1
fi

# Test-name filters (libtest substrings) for a file's mutants.
filters_of() {
    case "$1" in
        page_alloc/*|pcp.rs) echo "page_alloc pcp:: --skip a_million" ;;
        zonelist.rs) echo "zonelist page_alloc" ;;
        mempolicy.rs) echo "mempolicy page_alloc" ;;
        vmstat.rs) echo "vmstat page_alloc" ;;
        slab.rs) echo "slab page_alloc::tests" ;;
        *) echo "" ;;
    esac
}

outdir_of() { echo "$root/target/mutants-out/$(echo "$1" | tr / _ | sed 's/\.rs$//')"; }
count() { if [ -f "$1" ]; then grep -c . "$1" || true; else echo 0; fi; }

run_one() {
    local f=$1 out
    out=$(outdir_of "$f")
    mkdir -p "$out"
    local shard_args=()
    [ -n "$shard" ] && shard_args=(--shard "$shard" --sharding round-robin)
    local filters
    read -r -a filters <<<"$(filters_of "$f")"
    echo "== $f $(date -u +%H:%M:%S)"
    local t0=$SECONDS
    # cargo-mutants exits non-zero when mutants survive; that is a result,
    # not a failure of this script.
    CARGO_TARGET_DIR="$root/target/mutants-build" \
    CARGO_PROFILE_RELEASE_LTO=false \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    CARGO_PROFILE_RELEASE_INCREMENTAL=true \
        cargo mutants -p guest-mm -f "guest-mm/src/$f" \
            --jobs 1 --timeout "$timeout" --build-timeout 600 \
            --baseline skip --no-shuffle "${shard_args[@]}" "${iterate[@]}" \
            -C --release -C --lib \
            -o "$out" -- -- "${filters[@]}" || true
    echo "== $f done in $((SECONDS - t0)) s"
}

if [ "$summary_only" -eq 0 ]; then
    for f in "${files[@]}"; do run_one "$f"; done
fi

printf '\n%-24s %7s %7s %9s %8s %9s\n' file caught missed unviable timeout "caught%"
tc=0; tm=0; tu=0; tt=0
for f in "${files[@]}"; do
    d=$(outdir_of "$f")/mutants.out
    c=$(count "$d/caught.txt"); m=$(count "$d/missed.txt")
    u=$(count "$d/unviable.txt"); t=$(count "$d/timeout.txt")
    tc=$((tc + c)); tm=$((tm + m)); tu=$((tu + u)); tt=$((tt + t))
    v=$((c + m + t))
    pct=$([ "$v" -gt 0 ] && echo "$(( (c + t) * 1000 / v / 10 )).$(( (c + t) * 1000 / v % 10 ))" || echo -)
    printf '%-24s %7d %7d %9d %8d %9s\n' "$f" "$c" "$m" "$u" "$t" "$pct"
done
v=$((tc + tm + tt))
pct=$([ "$v" -gt 0 ] && echo "$(( (tc + tt) * 1000 / v / 10 )).$(( (tc + tt) * 1000 / v % 10 ))" || echo -)
printf '%-24s %7d %7d %9d %8d %9s\n' total "$tc" "$tm" "$tu" "$tt" "$pct"
echo
echo "missed:"
for f in "${files[@]}"; do
    d=$(outdir_of "$f")/mutants.out
    [ -f "$d/missed.txt" ] && sed 's/^/  /' "$d/missed.txt"
done
true

#!/usr/bin/env python3
"""Boot-time A/B of two memvisor binaries on a shared, noisy machine.

    tools/boot-ab.py BASE NEW [RUNS] [-- EXTRA RUN ARGS...]

Runs `memvisor run --cmdline workload=boot --quiet --report F` RUNS times
(default 40) with each binary, alternating, so both see the same load, and
prints per binary the median and minimum of: the guest's memory set-up
(ready.boot_cycles.mm, converted with tsc_khz), its ready-line formatting
(boot_cycles.to_ready), the VMM's kernel_loaded phase (devices, image,
boot tables), first guest instruction -> ready, and main -> ready. Medians
of interleaved runs compare; single `bench boot` runs minutes apart do not
(HOST_FACTS: the median moves 2-4x under other builds).
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile


def one(binary, extra, report):
    subprocess.run(
        [binary, "run", "--cmdline", "workload=boot", "--quiet", "--report", report]
        + extra,
        check=True,
    )
    with open(report) as f:
        r = json.load(f)
    ready = next(g for g in r["guest"] if g["event"] == "ready")
    p = r["phases_us"]
    khz = r["tsc_khz"]
    return {
        "guest mm (us)": ready["boot_cycles"]["mm"] / khz * 1000,
        "guest to_ready (us)": ready["boot_cycles"]["to_ready"] / khz * 1000,
        "kernel_loaded phase (us)": p["kernel_loaded"] - p["memory_ready"],
        "first instruction -> ready (us)": p["guest_ready"] - p["first_guest_instruction"],
        "main -> ready (us)": p["guest_ready"],
    }


def main():
    args = sys.argv[1:]
    extra = []
    if "--" in args:
        extra = args[args.index("--") + 1 :]
        args = args[: args.index("--")]
    if len(args) not in (2, 3):
        sys.exit(__doc__)
    bins = args[:2]
    runs = int(args[2]) if len(args) == 3 else 40
    fd, report = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    got = {b: [] for b in bins}
    try:
        for _ in range(runs):
            for b in bins:
                got[b].append(one(b, extra, report))
    finally:
        os.unlink(report)
    print(f"{runs} interleaved runs each; median (min)")
    for key in got[bins[0]][0]:
        cells = []
        for b in bins:
            v = [x[key] for x in got[b]]
            cells.append(f"{statistics.median(v):9.1f} ({min(v):7.1f})")
        med = [statistics.median(x[key] for x in got[b]) for b in bins]
        print(f"  {key:34} {'  '.join(cells)}   diff {med[1] - med[0]:+.1f}")
    print(f"  columns: {bins[0]}  {bins[1]}")


if __name__ == "__main__":
    main()

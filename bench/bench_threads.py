"""Float64 eigensolves with 1 thread vs all threads, side by side: does a busy machine want one?

The finalize step's cost is dominated by float64 ``eigh`` of each input's Σ (d_in²). On a shared
machine whose cores are already busy, more BLAS threads than free cores make every solve wait
for the others (spinning threads, oversubscription). This times ``torch.linalg.eigh`` of a random
SPD matrix at each thread count, interleaved, wall clock (what the user waits for), and prints the
load average it ran under.

    python bench/bench_threads.py --d 1536 --reps 3
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=1536)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(args.d, args.d, generator=g, dtype=torch.float64)
    spd = a @ a.t() / args.d + torch.eye(args.d, dtype=torch.float64)
    counts = sorted({1, os.cpu_count() or 1})
    times = {n: [] for n in counts}
    load = os.getloadavg()[0]
    for _ in range(args.reps):
        for n in counts:
            torch.set_num_threads(n)
            t = time.perf_counter()
            torch.linalg.eigh(spd)
            times[n].append(time.perf_counter() - t)
    print(f"eigh {args.d}² float64, {os.cpu_count()} cores, load average {load:.2f} (1 min) at the start")
    print("| threads | median wall s | runs |")
    print("|---:|---:|---|")
    for n in counts:
        print(f"| {n} | {statistics.median(times[n]):.2f} | {', '.join(f'{t:.2f}' for t in times[n])} |")


if __name__ == "__main__":
    main()

"""What reading nfn's ‖W x‖² off a module's output costs in the sweep, against the module's own forward.

The tap adds Σ_t ‖y_t − b‖² over the counted rows (``layerprof.stats.capture.output_energy``) so that
finalize need not compute tr(W Σ Wᵀ). This times that pass, with and without a bias, against the
forward of the same Linear(d, d) on the same rows (one thread, process CPU time, median of reps,
interleaved), the wide MLP's shape by default.

    OMP_NUM_THREADS=1 python bench/bench_output_energy.py [--d 1024] [--rows 4096] [--reps 20]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from harness import machine
from layerprof.stats.capture import output_energy


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    layer = torch.nn.Linear(args.d, args.d)
    x = torch.randn(args.rows, args.d)
    with torch.no_grad():
        y = layer(x)
        fns = {"forward of the module": lambda: layer(x),
               "‖y − b‖² (with a bias)": lambda: output_energy(y, layer.bias, None),
               "‖y‖² (no bias)": lambda: output_energy(y, None, None)}
        times = {name: [] for name in fns}
        for rep in range(args.reps + 1):
            for name, fn in fns.items():
                t = time.process_time()
                fn()
                if rep:  # the first round warms up
                    times[name].append(time.process_time() - t)
    med = {name: statistics.median(v) for name, v in times.items()}
    print(f"{machine()}\nLinear({args.d}, {args.d}) on {args.rows} rows, one thread, process CPU time, "
          f"median of {args.reps}, interleaved\n")
    print("| pass | ms | / forward |\n|---|---:|---:|")
    for name, s in med.items():
        print(f"| {name} | {s * 1e3:.2f} | {s / med['forward of the module']:.3f} |")


if __name__ == "__main__":
    main()

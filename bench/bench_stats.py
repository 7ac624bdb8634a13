"""Accumulation ops, backend against backend, side by side in one run (interleaved medians).

For each d_in and op, every available backend on the device runs on the same inputs.
Reports seconds, the ratio to the torch backend, and useful GFLOP/s: the Gram counts only
the upper triangle (rows·d_in·(d_in+1) FLOPs), the cross product 2·rows·d_in·d_out.

    python bench/bench_stats.py [--dims 384 1024 1536 4096] [--rows 4096] [--dtype float32 bfloat16]
"""
from __future__ import annotations

import argparse

import torch

from harness import append, interleaved, machine
from layerprof.stats import ops


def flops(op: str, rows: int, d_in: int, d_out: int, k: int) -> float:
    gram = rows * d_in * (d_in + 1)
    cross = 2.0 * rows * d_in * d_out
    return {"gram_update": gram, "cross_update": cross, "stats_update": gram + cross,
            "sketch_update": 2.0 * rows * k * (d_in + d_out)}[op]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[384, 1024, 1536, 4096])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sketch", type=int, default=128)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backends", nargs="+", default=None)
    args = ap.parse_args()
    table = ops.backends()
    names = args.backends or [b for b in ("torch", "cpp", "triton", "cuda")
                              if table[b].available and args.device.split(":")[0] in table[b].devices
                              and not (b == "triton" and args.device == "cpu")]
    print(f"# {machine()}\n# backends: {names}")
    print(f"{'op':<14}{'dtype':<10}{'d_in':>6}{'rows':>7}  " + "".join(f"{n + ' s':>11}{n + ' GF/s':>12}" for n in names)
          + "".join(f"{n + '/torch':>12}" for n in names if n != "torch"))
    rows_out = []
    for dtype_name in args.dtype:
        dtype = getattr(torch, dtype_name)
        for d in args.dims:
            rows = args.rows if d < 4096 else max(1024, args.rows // 2)
            g = torch.Generator(device="cpu").manual_seed(0)
            x = torch.randn(rows, d, generator=g).to(args.device, dtype)
            gr = torch.randn(rows, d, generator=g).to(args.device, dtype)
            mask = (torch.rand(rows, generator=g) > 0.1).to(args.device)
            omega = torch.randn(d, args.sketch, generator=g).to(args.device)
            for op_name in ("gram_update", "cross_update", "stats_update", "sketch_update"):
                acc = {n: (torch.zeros(d, d, device=args.device), torch.zeros(d, d, device=args.device),
                           torch.zeros((), device=args.device), torch.zeros(d, args.sketch, device=args.device))
                       for n in names}

                def call(n, op_name=op_name):
                    S, C, q, K = acc[n]
                    f = ops.op(n, op_name)
                    if op_name == "gram_update":
                        return lambda: f(S, x, mask)
                    if op_name == "cross_update":
                        return lambda: f(C, x, gr, mask)
                    if op_name == "stats_update":
                        return lambda: f(S, C, q, x, gr, mask)
                    return lambda: f(K, x, gr, omega, mask)

                t = interleaved({n: call(n) for n in names}, args.reps, args.device)
                kept = int(mask.sum())
                fl = flops(op_name, kept, d, d, args.sketch)
                line = f"{op_name:<14}{dtype_name:<10}{d:>6}{rows:>7}  " + "".join(
                    f"{t[n]:>11.4f}{fl / t[n] / 1e9:>12.1f}" for n in names) + "".join(
                    f"{t['torch'] / t[n]:>11.2f}x" for n in names if n != "torch")
                print(line, flush=True)
                for n in names:
                    rows_out.append({"bench": "stats_ops", "op": op_name, "dtype": dtype_name, "d_in": d, "d_out": d,
                                     "rows": rows, "device": args.device, "backend": n, "seconds": round(t[n], 5),
                                     "gflops_useful": round(fl / t[n] / 1e9, 2),
                                     "speedup_vs_torch": round(t["torch"] / t[n], 3)})
    append(rows_out)


if __name__ == "__main__":
    main()

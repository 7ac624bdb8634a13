"""What the cross-half rank-r ρ² (``rank_cross=True``) adds to finalize, and its subspace solver.

The wide-MLP case of bench_wide.py (4 × Linear(1024, 1024), 3 batches × 4,096 rows), one thread,
process CPU time, median of ``--reps`` interleaved: the whole ``prof.card()`` with and without the
column, and, on layer 0's first half (M_a = L⁻¹C_a), the top-r subspace by ARPACK's Lanczos (the
default on the CPU) against LAPACK's dsyevr on the Gram matrix (its fallback), with the largest
difference of their projectors.

    OMP_NUM_THREADS=1 python bench/bench_rank_cross.py [--reps 3] [--rank 8]
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

import layerprof as lp
from bench_wide import case_arguments, wide_case
from layerprof.stats import linalg
from layerprof.pipeline.benchmark import interleaved, machine
from layerprof.stats.solve import SolveCache


def main(argv=None) -> None:
    ap = case_arguments(__doc__.splitlines()[0], reps=3)
    ap.add_argument("--rank", type=int, default=8)
    args = ap.parse_args(argv)
    model, batches = wide_case(args)
    cards = {}
    profs = {}
    for on in (False, True):
        # Without the column the default score (made from it) is refused: its naive form places instead.
        prof = lp.Profiler(model, targets=[f"layers.{i}" for i in range(len(model.layers))], rank=args.rank,
                           rank_cross=on, score=None if on else "resnorm2_rank_over_noise", progress=False)
        with prof:
            for b in batches:
                nn.functional.cross_entropy(model(b["x"]), b["y"]).backward()
        model.zero_grad(set_to_none=True)
        profs[on] = prof
    whole = interleaved({on: (lambda on=on: cards.__setitem__(on, profs[on].card())) for on in profs}, args.reps,
                        warmup=0, clock=time.process_time)  # process CPU time; the first card is timed too

    st, half = profs[True].acc.total("layers.0"), profs[True].acc.half(0, "layers.0")
    Ma = SolveCache(profs[True].damping).get(st.S, st.N).whiten(half.C)

    def lanczos():
        return linalg.leading_gram_eigvecs(Ma, args.rank)

    def exact():
        return linalg.leading_gram_eigvecs_lapack(Ma, args.rank)

    sub = interleaved({"lanczos": lanczos, "exact": exact}, args.reps, warmup=0, clock=time.process_time)
    U1, U2 = lanczos().numpy(), exact().numpy()
    diff = float(np.abs(U1 @ U1.T - U2 @ U2.T).max())
    print(f"{machine()}\nwide MLP {len(model.layers)} × Linear({args.d}, {args.d}), {args.batches} batches × {args.rows} "
          f"rows, rank {args.rank}, one thread, process CPU time, median of {args.reps}, interleaved\n")
    print("| step | seconds | ratio |\n|---|---:|---:|")
    print(f"| finalize (`prof.card()`) without it (`rank_cross=False`, naive score) | {whole[False]:.3f} | 1.00 |")
    print(f"| finalize with it (`rank_cross=True`; the default score's) | {whole[True]:.3f} | {whole[True] / whole[False]:.2f} |")
    print(f"| top-{args.rank} subspace of M_a, LAPACK dsyevr (fallback) | {sub['exact']:.4f} | 1.00 |")
    print(f"| top-{args.rank} subspace of M_a, ARPACK Lanczos (default) | {sub['lanczos']:.4f} | "
          f"{sub['lanczos'] / sub['exact']:.2f} |")
    print(f"\nlargest difference of the two subspaces' projectors: {diff:.1e}")
    same = all(a.resnorm == b.resnorm for a, b in zip(cards[False].layers, cards[True].layers))
    print(f"the other columns are unchanged by the option: {same}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()

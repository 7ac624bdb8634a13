"""Finalize's float64 LAPACK on the CPU: torch's (MKL) against scipy's (OpenBLAS), side by side.

``layerprof.stats.linalg`` runs finalize's dense float64 work through scipy on the CPU by default
(``LAYERPROF_CPU_LAPACK=torch`` for torch's). This measures both on the wide MLP of bench_wide.py
(4 × Linear(d, d), batches × rows, one thread, process CPU time, median of reps, interleaved):

* each primitive on layer 0's statistics (Σ, C, W): eigvalsh(Σ), Cholesky of Σ + λI, L⁻¹C, the
  leading σ² of L⁻¹C (its Gram matrix and eigvalsh), one split half's rank-8 subspace (ARPACK's
  Lanczos under scipy), tr(W Σ Wᵀ) (finalize's fallback: the sweep now reads it off the outputs);
* the whole ``prof.card()`` (finalize) of one sweep, and the largest relative difference of any
  card column between the two;
* with ``--eig-sizes N ...``, first: eigvalsh alone, scipy's ``evd`` driver against torch's, on
  random SPD matrices of those sizes (where ``linalg.SCIPY_EIGVALSH_MAX`` comes from: above it the
  CPU's eigenvalues go through torch).

    OMP_NUM_THREADS=1 python bench/bench_lapack.py [--d 1024] [--rows 4096] [--batches 3] [--reps 5]
        [--eig-sizes 1024 2048 3072 4096]
"""
from __future__ import annotations

import math
import os
import statistics
import time

import torch
from torch import nn

import layerprof as lp
from bench_wide import case_arguments, wide_case
from harness import append, interleaved, machine
from layerprof.stats import linalg
from layerprof.stats.damping import ridge
from layerprof.stats.ops import symmetric

LIBRARIES = ("torch", "scipy")


def timed(fn, reps: int) -> dict[str, float]:
    """Median process CPU seconds of ``fn()`` under each library, interleaved, one warm-up round."""
    times = {lib: [] for lib in LIBRARIES}
    for rep in range(reps + 1):
        for lib in LIBRARIES:
            os.environ[linalg.CPU_LAPACK_ENV] = lib
            t = time.process_time()
            fn()
            if rep:
                times[lib].append(time.process_time() - t)
    return {lib: statistics.median(v) for lib, v in times.items()}


def card_difference(a, b) -> float:
    """Largest relative difference of any numeric column between two cards of the same statistics."""
    worst = 0.0
    for rows_a, rows_b in ((a.modules, b.modules), (a.layers, b.layers)):
        for ra, rb in zip(rows_a, rows_b):
            for key, va in vars(ra).items():
                vb = getattr(rb, key)
                if isinstance(va, float) and isinstance(vb, float) and math.isfinite(va) and va != 0:
                    worst = max(worst, abs(va - vb) / abs(va))
    return worst


def eigvalsh_by_size(sizes: list[int], reps: int) -> None:
    """eigvalsh alone, scipy's LAPACK driver against torch's, one thread (the size switch in layerprof.stats.linalg)."""
    from scipy.linalg import eigvalsh as scipy_eigvalsh
    from threadpoolctl import threadpool_limits

    print("| d | scipy (OpenBLAS) eigvalsh s | torch (MKL) eigvalsh s | torch / scipy |\n|---:|---:|---:|---:|")
    with threadpool_limits(limits=1, user_api="blas"):
        for d in sizes:
            g = torch.Generator().manual_seed(0)
            X = torch.randn(d + 512, d, generator=g, dtype=torch.float64)
            S = X.t() @ X
            t = interleaved({"scipy": lambda: scipy_eigvalsh(S.numpy(), check_finite=False, driver="evd"),
                             "torch": lambda: torch.linalg.eigvalsh(S)}, reps, warmup=0, clock=time.process_time)
            ts, tt = t["scipy"], t["torch"]
            print(f"| {d} | {ts:.3f} | {tt:.3f} | {tt / ts:.2f} |", flush=True)
    print()


def main(argv=None) -> None:
    ap = case_arguments(__doc__.splitlines()[0], reps=5)
    ap.add_argument("--eig-sizes", type=int, nargs="*", default=[],
                    help="also time eigvalsh alone, scipy against torch, at these sizes (first)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.eig_sizes:
        eigvalsh_by_size(args.eig_sizes, max(1, min(args.reps, 3)))
    model, batches = wide_case(args)
    prof = lp.Profiler(model, targets=[f"layers.{i}" for i in range(len(model.layers))])
    with prof:
        for b in batches:
            nn.functional.cross_entropy(model(b["x"]), b["y"]).backward()
    model.zero_grad(set_to_none=True)

    st = prof.acc.total("layers.0")
    sigma = symmetric(st.S.double()) / st.N
    lam = ridge(prof.damping, float(sigma.diagonal().sum()), args.d)
    shifted = sigma + lam * torch.eye(args.d, dtype=torch.float64)
    C = st.C.double()
    W = model.layers[0].weight.detach().double()
    L = linalg.cholesky(shifted)
    Y = linalg.solve_lower(L, C)
    Ya = linalg.solve_lower(L, prof.acc.half(0, "layers.0").C.double())  # one split half, whitened
    primitives = {
        "eigvalsh(Σ)": lambda: linalg.eigvalsh(sigma),
        "Cholesky(Σ + λI)": lambda: linalg.cholesky(shifted),
        "L⁻¹C": lambda: linalg.solve_lower(L, C),
        "leading σ² of L⁻¹C": lambda: linalg.leading_gram_eigvals(Y, 64),
        # The default score's cross term: each half's top-r subspace (r = 8); finalize does two per module.
        "rank-8 subspace of a half's L⁻¹C": lambda: linalg.leading_gram_eigvecs(Ya, 8),
        "tr(W Σ Wᵀ) (fallback; the sweep gives it)": lambda: linalg.weighted_trace(W, sigma, L, lam),
    }
    cards = {}

    def card():
        cards[os.environ[linalg.CPU_LAPACK_ENV]] = prof.card()

    rows = []
    print(f"{machine()}\nwide MLP {len(model.layers)} × Linear({args.d}, {args.d}), {args.batches} batches × "
          f"{args.rows} rows, one thread, process CPU time, median of {args.reps}, interleaved\n")
    print("| step | torch (MKL) s | scipy (OpenBLAS) s | scipy / torch |\n|---|---:|---:|---:|")
    for name, fn in [*primitives.items(), ("whole finalize (prof.card())", card)]:
        t = timed(fn, args.reps)
        print(f"| {name} | {t['torch']:.4f} | {t['scipy']:.4f} | {t['scipy'] / t['torch']:.2f} |")
        rows.append({"bench": "lapack", "step": name, "d": args.d, "torch_s": round(t["torch"], 5),
                     "scipy_s": round(t["scipy"], 5)})
    diff = card_difference(cards["torch"], cards["scipy"])
    print(f"\nlargest relative difference of any card column, scipy vs torch: {diff:.1e}")
    os.environ.pop(linalg.CPU_LAPACK_ENV)
    append(rows)


if __name__ == "__main__":
    main()

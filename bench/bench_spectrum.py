"""Is an exact finalize's floor beatable? The two float64 spectra per module, exact vs iterative, side by side.

Finalize's remaining cost on the wide MLP (bench_wide.py) is two dense eigenvalue problems per
module: Σ's spectrum (cond, erank, noise amp) and the Gram matrix of L⁻¹C (the leading σ²). This
times, on the wide MLP's own statistics (4 × Linear(d, d), one batch of rows, one thread, process
CPU time, median of reps), each exact call against the iterative route that would replace it:

* ``eigvalsh(Σ)`` against ``torch.lobpcg`` for μ_max (k = 1) — cond would also need μ_min, and
  erank the whole spectrum, so this is a lower bound on what replacing it costs;
* the Gram route (``Y Yᵀ`` and ``eigvalsh``) against two iterative routes for the 64 leading σ²:
  ARPACK's Lanczos (``linalg._lanczos``, which finalize uses for the rank-r subspaces) and the block
  Krylov of ``_krylov_ritz`` (finalize's first try on a GPU above EXACT_SPECTRUM_MAX), each with
  whether its residual check certified the result (when it does not, the exact route runs as well);
* finalize's route for those σ² now (``_leading_sv2``: exact on the CPU, eigenvalues through torch
  above ``linalg.SCIPY_EIGVALSH_MAX``) against its route before session 16 (above 2048: the block
  Krylov tried first, then dsyrk and scipy's eigvalsh), side by side.

    OMP_NUM_THREADS=1 python bench/bench_spectrum.py [--d 1024] [--rows 4096] [--reps 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import layerprof.stats.spectra as fin
from layerprof.stats.finalize import SPECTRUM_LEN
from layerprof.stats.solve import Solve
from layerprof.stats import linalg
from harness import machine


def layer_statistics(d: int, rows: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(Σ, C) of each layer of the wide MLP of bench_wide.py on one batch, float64."""
    torch.manual_seed(0)
    layers = [nn.Linear(d, d) for _ in range(4)]
    head = nn.Linear(d, 8)
    h = torch.randn(rows, d)
    inputs, outputs = [], []
    for layer in layers:
        inputs.append(h.detach())
        z = layer(h)
        z.retain_grad()
        outputs.append(z)
        h = torch.tanh(z)
    nn.functional.cross_entropy(head(h), torch.randint(0, 8, (rows,))).backward()
    return [((x.double().t() @ x.double()) / rows, x.double().t() @ z.grad.double()) for x, z in zip(inputs, outputs)]


def timed(fn, reps: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(reps):
        t = time.process_time()
        out = fn()
        times.append(time.process_time() - t)
    return statistics.median(times), out


def sv2_before(A: torch.Tensor, k: int) -> torch.Tensor:
    """Finalize's leading σ² before session 16: above 2048 rows the block Krylov first, else/then
    dsyrk and scipy's eigvalsh at every size."""
    from scipy.linalg import blas, eigvalsh

    if A.shape[0] > max(fin.EXACT_SPECTRUM_MAX, 4 * k):
        ritz = fin._krylov_ritz(A, k)
        if ritz is not None:
            return ritz[0]
    mu = eigvalsh(blas.dsyrk(1.0, A.numpy().T, trans=1, lower=0), lower=False, check_finite=False, driver="evd")
    return torch.from_numpy(mu[::-1][:k].copy())


def verdict(found) -> str:
    return "yes" if found is not None else "no (exact fallback)"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{machine()}\nwide MLP statistics, d = {args.d}, {args.rows} rows, process CPU time, median of {args.reps}\n")
    print("| layer | eigvalsh(Σ) s | lobpcg μ_max s | μ_max rel. diff | Gram + eigvalsh s | Lanczos s | certified "
          "| block Krylov s | certified | σ² route before s | σ² route now s | max rel. diff |")
    print("|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---:|---:|")
    for i, (sigma, C) in enumerate(layer_statistics(args.d, args.rows)):
        solve = Solve(sigma * args.rows, args.rows, 1e-3)
        Y = solve.whiten(C)
        k = SPECTRUM_LEN
        t_eig, mu = timed(lambda: torch.linalg.eigvalsh(solve.sigma), args.reps)
        g = torch.Generator().manual_seed(0)
        x0 = torch.randn(args.d, 1, generator=g, dtype=torch.float64)
        t_lob, (top, _) = timed(lambda: torch.lobpcg(solve.sigma, k=1, X=x0.clone(), largest=True, tol=1e-12,
                                                     niter=200), args.reps)
        t_gram, exact = timed(lambda: torch.linalg.eigvalsh(Y @ Y.t()).flip(0)[:k], args.reps)
        A = Y if Y.shape[0] <= Y.shape[1] else Y.t()  # the short side, as finalize takes it
        t_lan, lanczos = timed(lambda: linalg._lanczos(A, k), args.reps)
        t_kry, krylov = timed(lambda: fin._krylov_ritz(A, k), args.reps)
        t_before, before = timed(lambda: sv2_before(A, k), args.reps)
        t_now, now = timed(lambda: fin._leading_sv2(Y, k), args.reps)
        rel = abs(float(top[0]) - float(mu[-1])) / float(mu[-1])
        diff = float((before - now).abs().max() / now[0])
        print(f"| {i} | {t_eig:.3f} | {t_lob:.3f} | {rel:.1e} | {t_gram:.3f} | {t_lan:.3f} | {verdict(lanczos)} "
              f"| {t_kry:.3f} | {verdict(krylov)} | {t_before:.3f} | {t_now:.3f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()

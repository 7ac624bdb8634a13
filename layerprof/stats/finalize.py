"""Finalize: statistics → per-module and per-layer columns of the Layer Card (docs/method.md).

For each module, in float64 (on the GPU when the statistics live there, else the CPU), with Σ = S/N and λ = δ·tr Σ / d_in:

    M       = (Σ + λI)^{-1/2} C                 (computed as L⁻¹C, L the Cholesky factor of Σ + λI:
                                                 same norm and singular values; see Solve)
    resnorm = ‖M‖_F,  resnorm_rank = sqrt(Σ_{i≤r} σ_i(M)²),  rank_capture = its share
    energy  = tr Σ,   cond = μ_max / max(μ_min, λ),   erank = exp(H(μ / Σμ))
    noise_amp = (tr Σ / d_in) · mean_i 1/(μ_i + λ)
    grad_norm = ‖C‖_F,  act_norm = sqrt(tr Σ),  nfn = sqrt(tr(W Σ Wᵀ) / (‖W‖_F² tr Σ / d_in))
    resid_explained = resnorm² / (N q)            (share of the residual the inputs span)

In sketch mode C is replaced by CΩ (Ω a fixed d_out × k Gaussian with variance 1/k), so
resnorm² and grad_norm² are unbiased estimates and resnorm_rank a randomized-SVD one.

The leading σ_i(M)² come from the smaller Gram matrix of L⁻¹C, the eigenvalues μ (cond, erank,
noise amp) from ``eigvalsh`` alone; on the CPU through scipy's LAPACK (``layerprof.stats.linalg``). nfn's
tr(W Σ Wᵀ) = Σ_t ‖W x_t‖² / N comes from the sweep (the taps read it off the module outputs,
``ModuleStats.y2``); where a module's statistics lack it, from one triangular product W L
(tr(W Σ Wᵀ) = ‖W L‖² − λ‖W‖²). With δ = 0 the inverse is a
pseudo-inverse (eigenvalues below d·ε·μ_max dropped), i.e. the exact projection of the
residual onto the span of the inputs; that case (and λ at or below that floor) takes the
eigen-decomposition instead of Cholesky. Modules whose S is identical (they read the same
tensor) share one factorization.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Mapping

import torch

from . import linalg
from .accumulate import Accumulator, ModuleStats
from .solve import SolveCache
from .spectra import _leading_sv2, rank_cross
from ..card.card import default_k
from ..card.rankcorr import kendall_tau
from ..model.targets import Target

SPECTRUM_LEN = 64  # leading squared singular values of M kept on the card (per-module rank allocation)
STABLE_TAU = 0.8  # split-half Kendall τ below this flags the ranking as likely to change


def module_columns(st: ModuleStats, weight: torch.Tensor | None, *, rank: int, damping: float,
                   cache: SolveCache | None = None, whitened: torch.Tensor | None = None) -> dict:
    """Every per-module column of docs/method.md from one module's statistics (``whitened``: its
    L⁻¹C when the caller has it already)."""
    cache = cache or SolveCache(damping)
    d_in = st.C.shape[0]  # C may be a sketch CΩ (d_in × k): every column below is then an estimate
    N = st.N
    solve = cache.get(st.S, N)
    mu, trace, lam = solve.mu, solve.trace, solve.lam
    C = st.C.to(solve.sigma.device, torch.float64)
    Y = whitened if whitened is not None else solve.whiten(C)  # same σ and norm as (Σ+λI)^{-1/2} C
    resnorm2 = float((Y * Y).sum())
    sv2 = _leading_sv2(Y, max(SPECTRUM_LEN, rank))
    rank2 = min(float(sv2[:rank].sum()), resnorm2)
    p = mu / trace if trace > 0 else mu
    p = p[p > 0]
    mu_min = float(mu.min())
    floor = max(mu_min, lam)
    inv = mu + lam
    q = float(st.q.double())
    if weight is not None:
        W = weight.detach().to(solve.sigma.device, torch.float64)
        if st.y2 is not None:  # tr(W Σ Wᵀ) = Σ_t ‖W x_t‖² / N, read off the outputs during the sweep
            w_sigma_w = float(st.y2.double()) / N
        else:
            w_sigma_w = linalg.weighted_trace(W, solve.sigma, solve.chol, lam)
        w2 = float((W * W).sum())
        nfn = math.sqrt(max(w_sigma_w, 0.0) / (w2 * trace / d_in)) if w2 > 0 and trace > 0 else float("nan")
    else:
        nfn = float("nan")
    return {
        "rows": int(N),
        "resnorm": math.sqrt(resnorm2),
        "resnorm_rank": math.sqrt(rank2),
        "rank_capture": rank2 / resnorm2 if resnorm2 > 0 else float("nan"),
        "energy": trace,
        "cond": float(mu.max()) / floor if floor > 0 else float("inf"),
        "erank": math.exp(float(-(p * p.log()).sum())) if p.numel() else 0.0,
        "noise_amp": (trace / d_in) * float((1.0 / inv).mean()) if bool((inv > 0).all()) else float("inf"),
        "grad_norm": float(torch.linalg.matrix_norm(C)),
        "act_norm": math.sqrt(trace),
        "nfn": nfn,
        "resid_explained": resnorm2 / (N * q) if N * q > 0 else float("nan"),
        "sv2": sv2[:SPECTRUM_LEN].cpu().tolist(),
    }


def cross_half_columns(total: ModuleStats, a: ModuleStats | None, b: ModuleStats | None, nb: tuple[int, int], *,
                       damping: float, cache: "SolveCache", whitened: tuple | None = None,
                       rank: int | None = None) -> dict:
    """Rule 1: ρ² and ‖C‖² estimated across the split halves, without their noise bias.

    With G_h = C_h / nb_h the mean batch gradient of half h (halves hold alternate batches,
    so their noise is independent) and n = nb_a + nb_b, the naive ρ² = tr(Cᵀ P C) with
    P = (Σ + λI)⁻¹ has expectation n²·(tr(Gᵀ P G) + tr(P Cov Ĝ)): signal plus a noise term
    that P inflates where inputs are ill-conditioned. The cross-half estimates

        ρ²×  = n² · tr(G_aᵀ P G_b),    ‖C‖²× = n² · ⟨G_a, G_b⟩

    have the signal's expectation and zero for pure noise, so they can be negative. With ``rank``,
    also the rank-r ρ²× (``rank_cross``): the debiased counterpart of resnorm_rank², what a rank-r
    adapter can reach of the signal. noise share = (naive − ×) / naive. All are None with fewer than
    two batches. ``whitened``: (L⁻¹C_a, L⁻¹C_b) when the caller has them already.
    """
    if a is None or b is None or a.N == 0 or b.N == 0 or min(nb) < 1:
        return {"resnorm2_x": None, "grad_norm2_x": None, "resnorm2_rank_x": None}
    solve = cache.get(total.S, total.N)
    n = nb[0] + nb[1]
    scale = (n / nb[0]) * (n / nb[1])
    Ca, Cb = (h.C.to(solve.sigma.device, torch.float64) for h in (a, b))
    Ma, Mb = whitened if whitened is not None else (solve.whiten(Ca), solve.whiten(Cb))
    return {"resnorm2_x": scale * float((Ma * Mb).sum()), "grad_norm2_x": scale * float((Ca * Cb).sum()),
            "resnorm2_rank_x": None if rank is None else scale * rank_cross(Ma, Mb, rank)}


def noise_columns(naive: float, cross: float | None, batches: int) -> dict:
    """Noise share (naive − ×)/naive and the batches that would halve it (noise falls as 1/batches).

    With signal X = × and noise Z = naive − × at n batches, the share at c·n batches is
    Z / (cX + Z); it halves at c = 2 + Z/X. None when the signal estimate is not positive.
    """
    if cross is None or not naive > 0:
        return {"noise_share": None, "batches_to_halve_noise": None}
    share = (naive - cross) / naive
    noise = naive - cross
    halve = math.ceil((2 + noise / cross) * batches) if cross > 0 and noise > 0 else None
    return {"noise_share": share, "batches_to_halve_noise": halve}


def finalize(acc: Accumulator, targets: Mapping[str, Target], weights: Mapping[str, torch.Tensor], *,
             rank: int, damping: float, rank_cross: bool = False) -> tuple[list[dict], list[dict], dict]:
    """Module rows, layer rows and the split-half stability record for a finished sweep (``rank_cross``:
    also the cross-half rank-r ρ², ``resnorm2_rank_x``). The statistics' columns only: the build step
    adds each layer's cost and score (``layerprof.pipeline.build``)."""
    cache = SolveCache(damping)
    modules = []
    nb_halves = acc.batches_per_half()
    half_r2: list[dict[str, float]] = [{}, {}]
    # Modules that read one input hold one S object per half (the accumulator shares it): that pair
    # of objects keys the input's factors, which are released after the input's last module.
    input_of = {name: tuple(id(h[name].S) if name in h else None for h in acc.halves) for name in targets}
    uses_left = Counter(input_of.values())
    for name, t in targets.items():
        uses_left[input_of[name]] -= 1
        st = acc.total(name)
        if st is None or st.N == 0:
            continue
        row = {"name": name, "layer": t.layer, "kind": t.kind, "d_in": t.d_in, "d_out": t.d_out}
        solve = cache.get(st.S, st.N, key=input_of[name])
        Y = solve.whiten(st.C)
        row.update(module_columns(st, weights.get(name), rank=rank, damping=damping, cache=cache, whitened=Y))
        row["lora_params"] = rank * (t.d_in + t.d_out)
        row["calls"] = acc.calls.get(name, 0)
        a, b = acc.half(0, name), acc.half(1, name)
        halves = None
        if a is not None and b is not None and a.N > 0 and b.N > 0:
            # Whitening is linear and C = C_a + C_b: one more solve gives both halves.
            Ya = solve.whiten(a.C)
            halves = (Ya, Y - Ya)
            # Split halves: each half's C against the whole sweep's Σ (same damping rule).
            for h, Yh in enumerate(halves):
                half_r2[h][name] = float((Yh * Yh).sum())
        row.update(cross_half_columns(st, a, b, nb_halves, damping=damping, cache=cache, whitened=halves,
                                      rank=rank if rank_cross else None))
        modules.append(row)
        if uses_left[input_of[name]] == 0:
            cache.release(input_of[name], st.N)

    layer_ids = sorted({m["layer"] for m in modules if m["layer"] is not None})
    total_r2 = sum(m["resnorm"] ** 2 for m in modules if m["layer"] is not None)
    layers = []
    for layer in layer_ids:
        ms = [m for m in modules if m["layer"] == layer]
        r2 = sum(m["resnorm"] ** 2 for m in ms)
        rr2 = sum(m["resnorm_rank"] ** 2 for m in ms)
        layers.append({
            "layer": layer,
            "modules": len(ms),
            "resnorm": math.sqrt(r2),
            "resnorm_rank": math.sqrt(rr2),
            "rank_capture": rr2 / r2 if r2 > 0 else float("nan"),
            "gain_share": r2 / total_r2 if total_r2 > 0 else float("nan"),
            "predicted_gain": r2 / 2,
            "score": r2,
            "energy": sum(m["energy"] for m in ms) / len(ms),
            "noise_amp": sum(m["noise_amp"] for m in ms) / len(ms),
            "grad_norm": math.sqrt(sum(m["grad_norm"] ** 2 for m in ms)),
            "act_norm": sum(m["act_norm"] for m in ms) / len(ms),
            "nfn": sum(m["nfn"] for m in ms) / len(ms),
            "lora_params": sum(m["lora_params"] for m in ms),
            "resnorm_a": math.sqrt(sum(half_r2[0].get(m["name"], 0.0) for m in ms)),
            "resnorm_b": math.sqrt(sum(half_r2[1].get(m["name"], 0.0) for m in ms)),
            **layer_cross_columns(ms, r2, acc.batches),
        })
    have_halves = bool(half_r2[0]) and bool(half_r2[1])
    stability = stability_record(layers, acc.batches, have_halves)
    return modules, layers, stability


def layer_cross_columns(ms: list[dict], naive_r2: float, batches: int) -> dict:
    """A layer's cross-half sums over its modules and its noise share (None without halves)."""
    if any(m.get("resnorm2_x") is None for m in ms):
        return {"resnorm2_x": None, "grad_norm2_x": None, "resnorm2_rank_x": None, "noise_share": None,
                "batches_to_halve_noise": None}
    cross = sum(m["resnorm2_x"] for m in ms)
    rank_x = [m.get("resnorm2_rank_x") for m in ms]
    return {"resnorm2_x": cross, "grad_norm2_x": sum(m["grad_norm2_x"] for m in ms),
            "resnorm2_rank_x": None if None in rank_x else sum(rank_x),
            **noise_columns(naive_r2, cross, batches)}


def stability_record(layers: list[dict], batches: int, have_halves: bool) -> dict:
    """Split-half Kendall τ and top-k overlap of the layer ranking (resnorm_a vs resnorm_b)."""
    tau = kendall_tau([l["resnorm_a"] for l in layers], [l["resnorm_b"] for l in layers]) if have_halves else None
    k = default_k(len(layers))
    top = lambda key: {l["layer"] for l in sorted(layers, key=lambda l: -l[key])[:k]}  # noqa: E731
    return {
        "kendall_tau": tau,
        "threshold": STABLE_TAU,
        "stable": (tau is not None and tau >= STABLE_TAU),
        "top_k": k,
        "top_k_overlap": len(top("resnorm_a") & top("resnorm_b")) / k if have_halves and layers else None,
        "batches_per_half": [batches - batches // 2, batches // 2],
        "note": None if have_halves else "only one batch: no split-half stability; profile more batches",
    }

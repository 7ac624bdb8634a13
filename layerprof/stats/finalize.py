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
from ..card.card import default_k
from ..card.cost import cost_model
from .damping import ridge
from ..card.rankcorr import kendall_tau
from ..card.scores import apply_score
from ..model.targets import Target

SPECTRUM_LEN = 64  # leading squared singular values of M kept on the card (per-module rank allocation)
STABLE_TAU = 0.8  # split-half Kendall τ below this flags the ranking as likely to change


def _solve_device(S: torch.Tensor) -> torch.device:
    # float64 solves where the statistics live: on a GPU (large d: 12288² eigh in seconds,
    # not minutes), else the CPU. Only scalars and short spectra come back to the host.
    return S.device if S.device.type == "cuda" else torch.device("cpu")


class Solve:
    """One input's Σ = S/N, solved once for every module that reads it.

    ``whiten(C)`` returns Y with YᵀY = Cᵀ (Σ + λI)⁺ C, so ρ² = ‖Y‖², the singular values of Y
    are those of M = (Σ + λI)^{-1/2} C, and ⟨Y_a, Y_b⟩ = tr(C_aᵀ (Σ + λI)⁻¹ C_b). With λ above the
    numerical floor (d·ε·μ_max; always, for the default δ) Y = L⁻¹C by a Cholesky factor L of
    Σ + λI: no eigenvectors. At or below it (δ = 0: the exact pseudo-inverse) the eigen-
    decomposition drops the null directions, as docs/method.md defines. Eigenvalues (cond,
    erank, noise amp) come from ``eigvalsh`` only when a column asks for them.
    """

    def __init__(self, S: torch.Tensor, N: int, damping: float):
        # Σ from S's upper triangle (the part every backend defines) in two float64 buffers, not five:
        # U + Uᵀ doubles the diagonal, which the halving restores exactly (powers of two), so Σ is
        # bit for bit what ``ops.symmetric(S) / N`` gives.
        upper = torch.triu(S.to(_solve_device(S), torch.float64))
        self.sigma = upper + upper.t()
        del upper
        self.sigma.diagonal().mul_(0.5)
        self.sigma.div_(N)
        self.d = self.sigma.shape[0]
        self.trace = float(self.sigma.diagonal().sum().clamp_min(0.0))
        self.lam = ridge(damping, self.trace, self.d)
        self._mu = None
        self._eig = None
        self.chol = None
        # μ_max ≤ tr Σ (Σ is PSD), so λ above d·ε·tr Σ is above the floor without computing μ.
        if self.lam > self.d * torch.finfo(torch.float64).eps * self.trace:
            shifted = self.sigma.clone()
            shifted.diagonal().add_(self.lam)  # Σ + λI
            self.chol = linalg.cholesky(shifted)

    @property
    def mu(self) -> torch.Tensor:
        """Eigenvalues of Σ, ascending, clamped at 0."""
        if self._mu is None:
            self._mu = (self._eig[0] if self._eig is not None else linalg.eigvalsh(self.sigma)).clamp_min(0.0)
        return self._mu

    def whiten(self, C: torch.Tensor) -> torch.Tensor:
        C = C.to(self.sigma.device, torch.float64)
        if self.chol is not None:
            return linalg.solve_lower(self.chol, C)
        if self._eig is None:
            mu, V = torch.linalg.eigh(self.sigma)
            self._eig = (mu.clamp_min(0.0), V)
        mu, V = self._eig
        return _inv_sqrt(mu, self.lam)[:, None] * (V.t() @ C)


class SolveCache:
    """``Solve`` per distinct S: modules that read the same tensor (q/k/v, gate/up) share one.

    Entries are found by content (an equal S is the same input), or by ``key`` when the caller
    knows which modules share an input (finalize: the accumulator's shared S objects); a keyed
    entry can be ``release``d once its last module is done, so that at most one input's factors
    are held at a time instead of every input's (float64 Σ and L: at 8B scale, tens of GB).
    """

    def __init__(self, damping: float):
        self.damping = damping
        self._entries: list[tuple[torch.Tensor, int, Solve]] = []
        self._keyed: dict[object, Solve] = {}
        self._last: tuple[torch.Tensor, int, int, Solve] | None = None  # the last tensor asked for, by identity

    def get(self, S: torch.Tensor, N: int, key=None) -> Solve:
        # The same tensor, unchanged, as last time (one module's columns ask three times): no compare.
        last = self._last
        if last is not None and last[0] is S and last[1] == S._version and last[2] == N:
            return last[3]
        if key is not None:
            solve = self._keyed.get((key, N))
            if solve is None:
                solve = self._keyed[(key, N)] = Solve(S, N, self.damping)  # Solve reads S's upper triangle only
        else:
            solve = self._lookup(torch.triu(S), N)  # the defined part of S (see layerprof.stats.ops.stats)
        self._last = (S, S._version, N, solve)
        return solve

    def release(self, key, N: int) -> None:
        """Drop the keyed entry (and the identity shortcut if it points at it): its factors are freed."""
        solve = self._keyed.pop((key, N), None)
        if solve is not None and self._last is not None and self._last[3] is solve:
            self._last = None

    def held(self) -> int:
        """Solves currently held (the memory finalize keeps in factors)."""
        return len(self._entries) + len(self._keyed)

    def _lookup(self, S: torch.Tensor, N: int) -> Solve:
        for S_ref, N_ref, solve in self._entries:
            if N_ref == N and S_ref.shape == S.shape and torch.equal(S_ref, S):
                return solve
        solve = Solve(S, N, self.damping)
        self._entries.append((S, N, solve))
        return solve


def _inv_sqrt(mu: torch.Tensor, lam: float) -> torch.Tensor:
    shifted = mu + lam
    cutoff = mu.numel() * torch.finfo(torch.float64).eps * float(mu.max().clamp_min(0.0))
    out = torch.zeros_like(shifted)
    keep = shifted > cutoff
    out[keep] = shifted[keep].rsqrt()
    return out


EXACT_SPECTRUM_MAX = 2048  # on a GPU, Gram matrices above this size try a checked block Krylov first (the CPU: exact)
KRYLOV_TOL = 1e-10  # a Krylov estimate is kept only if every leading Ritz value's residual is below this, relative


def _krylov_ritz(A: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The k leading eigenpairs (θ descending, U) of A Aᵀ from a block Krylov subspace, or None.

    A fixed Gaussian block of 2k columns, four blocks deep, then Rayleigh–Ritz: O(rows·cols·k)
    instead of O(rows³). Kept only when each residual ‖A Aᵀu − θu‖ is below KRYLOV_TOL·θ_1 (for a
    symmetric matrix that bounds the pair's error); None sends the caller to its exact path."""
    g = torch.Generator(device="cpu").manual_seed(0)
    block = torch.randn(A.shape[0], 2 * k, generator=g, dtype=torch.float64).to(A.device)
    basis = []
    for _ in range(4):
        block = torch.linalg.qr(block).Q
        basis.append(block)
        block = A @ (A.t() @ block)
    Q = torch.linalg.qr(torch.cat(basis, dim=1)).Q
    B = A.t() @ Q
    theta, Z = torch.linalg.eigh(B.t() @ B)
    theta, U = theta.flip(0)[:k], Q @ Z.flip(1)[:, :k]
    residual = torch.linalg.vector_norm(A @ (A.t() @ U) - U * theta, dim=0)
    if float(residual.max()) <= KRYLOV_TOL * float(theta[0].clamp_min(1e-300)):
        return theta, U
    return None


def _gpu_krylov(A: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``_krylov_ritz`` where finalize tries it first: a GPU's Gram matrices above EXACT_SPECTRUM_MAX rows.
    None elsewhere (the CPU: exact or ARPACK) and where it does not certify."""
    if A.device.type == "cuda" and A.shape[0] > max(EXACT_SPECTRUM_MAX, 4 * k):
        return _krylov_ritz(A, k)
    return None


def _leading_sv2(Y: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest squared singular values of Y, descending.

    All eigenvalues of the smaller Gram matrix (A Aᵀ, A the short side of Y). On a GPU above
    EXACT_SPECTRUM_MAX, the block Krylov estimate of ``_krylov_ritz`` (GEMMs) first, kept where it
    passes its residual check. Not on the CPU: there it never certified these spectra (their 64th
    value is not isolated) and cost 4 s to fail at 4096², while the exact route is as fast as a
    certified Lanczos (studies/v1/bench-notebook.md)."""
    A = Y if Y.shape[0] <= Y.shape[1] else Y.t()  # the short side first: A Aᵀ is the smaller Gram
    ritz = _gpu_krylov(A, k)
    if ritz is not None:
        return ritz[0].clamp_min(0.0)
    return linalg.leading_gram_eigvals(A, k)


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


def _leading_subspace(A: torch.Tensor, k: int) -> torch.Tensor:
    """Orthonormal basis (columns) of the k leading eigenvectors of A Aᵀ: A's top-k left singular subspace.

    On the CPU by ``linalg.leading_gram_eigvecs`` (ARPACK's Lanczos, checked, or LAPACK). On a GPU,
    above EXACT_SPECTRUM_MAX rows, ``_krylov_ritz``'s vectors where they pass its residual check first."""
    ritz = _gpu_krylov(A, k)
    if ritz is not None:
        return ritz[1]
    return linalg.leading_gram_eigvecs(A, k)


def rank_cross(Ma: torch.Tensor, Mb: torch.Tensor, rank: int) -> float:
    """½(⟨T_r(M_a), M_b⟩ + ⟨M_a, T_r(M_b)⟩), T_r the rank-r truncation (Rule 1's rank-r cross term).

    Each half's top-r singular subspace is measured against the other half's matrix, which enters
    linearly: its noise is independent of that subspace, so the term has the signal's expectation
    and zero for pure noise. ⟨T_r(X), Y⟩ = ⟨UᵀX, UᵀY⟩ with U X's top-r left singular vectors (taken
    on the short side of X, where the Gram matrix is smaller)."""
    if Ma.shape[0] > Ma.shape[1]:
        Ma, Mb = Ma.t(), Mb.t()
    if rank >= Ma.shape[0]:
        return float((Ma * Mb).sum())  # rank r keeps everything: the full cross term
    total = 0.0
    for X, Y in ((Ma, Mb), (Mb, Ma)):
        U = _leading_subspace(X, rank)
        total += float(((U.t() @ X) * (U.t() @ Y)).sum())
    return total / 2


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
             rank: int, damping: float, heads: list[dict] = (),
             score: str = "resnorm2", attention: dict | None = None,
             rank_cross: bool = False) -> tuple[list[dict], list[dict], dict]:
    """Module rows, layer rows and the split-half stability record for a finished sweep (``rank_cross``:
    also the cross-half rank-r ρ², ``resnorm2_rank_x``)."""
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

    costs = cost_model(modules, heads, attention)
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
            "cost": costs.cost([layer], rank).fraction,
            "resnorm_a": math.sqrt(sum(half_r2[0].get(m["name"], 0.0) for m in ms)),
            "resnorm_b": math.sqrt(sum(half_r2[1].get(m["name"], 0.0) for m in ms)),
            **layer_cross_columns(ms, r2, acc.batches),
        })
    apply_score(layers, score)
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


def attach_predictions(card, module_cols: Mapping[str, Mapping[str, float]],
                       layer_cols: Mapping[str, Mapping[int, float]], score: str, meta: dict):
    """A copy of ``card`` with predicted-gain module columns (summed per layer) and layer columns
    filled, scored by ``score`` and with ``meta`` merged into its metadata."""
    import dataclasses

    from ..card.card import LayerCard

    modules = [dataclasses.replace(m, **{c: float(v[m.name]) for c, v in module_cols.items() if m.name in v})
               for m in card.modules]
    layers = []
    for l in card.layers:
        row = dataclasses.asdict(l)
        for c, values in module_cols.items():
            ms = [m for m in modules if m.layer == l.layer and getattr(m, c) is not None]
            row[c] = sum(getattr(m, c) for m in ms) if ms else None
        for c, values in layer_cols.items():
            row[c] = values.get(l.layer)
        layers.append(row)
    apply_score(layers, score)
    settings = {**card.meta["settings"], "score": score}
    return LayerCard(modules, layers, {**card.meta, **meta, "settings": settings})

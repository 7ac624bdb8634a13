"""The float64 solves behind every column: (Σ + λI)^{-1/2} applied to C, one factorization per distinct S.

``Solve`` factors Σ + λI once (its Cholesky factor L, or the eigen-decomposition where δ = 0 asks for
a pseudo-inverse) and whitens any C with it: M = L⁻¹C has the norm and singular values of
(Σ + λI)^{-1/2} C. ``SolveCache`` keeps one ``Solve`` per distinct S, so that modules that read the
same input (q/k/v, gate/up) share it; finalize and the coupling pass both use it.
"""
from __future__ import annotations

import torch

from . import linalg
from .damping import ridge


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

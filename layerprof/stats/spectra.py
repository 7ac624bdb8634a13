"""The leading spectra of the whitened matrices: σ_i(M)² for rank-r resnorm, and the halves' top-r
subspaces for the cross-half rank-r term. Exact on the CPU (LAPACK, or ARPACK's checked Lanczos); on a
GPU, above ``EXACT_SPECTRUM_MAX`` rows, a block Krylov estimate first, kept only where it certifies.
"""
from __future__ import annotations

import torch

from . import linalg


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

"""The float64 dense linear algebra of finalize and the coupling pass, on the device that holds it.

On a GPU: ``torch.linalg`` (cuSOLVER, cuBLAS). On the CPU: scipy's LAPACK and BLAS (the OpenBLAS
that numpy and scipy ship) by default, because the two finalize needs most run faster there than
through torch's MKL on the machine we measure on (2-core AMD EPYC, one thread, d = 1024;
``bench/bench_lapack.py``): ``eigvalsh`` 0.065 s against 0.106 s, and the Gram matrix of the
whitened C by ``dsyrk`` (one triangle, half the FLOPs of a GEMM) 0.027 s against 0.046 s (above
2048, ``eigvalsh`` goes through torch, which is faster there: ``SCIPY_EIGVALSH_MAX``). Where
finalize has to compute nfn's tr(W Σ Wᵀ) itself (statistics without the sweep's ``y2``), it halves
its FLOPs too: ‖W L‖² − λ‖W‖² with L the Cholesky factor finalize has already, by ``dtrmm``.
``LAYERPROF_CPU_LAPACK=torch`` selects torch on the CPU too (MKL is the better library on some Intel
machines; results agree to float64 rounding either way).

Every function takes and returns torch tensors (float64 in, float64 out); BLAS threads follow
torch's thread setting inside ``blas_threads``.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np
import torch

CPU_LAPACK_ENV = "LAYERPROF_CPU_LAPACK"
CPU_LAPACKS = ("scipy", "torch")


def cpu_lapack() -> str:
    """Which library runs float64 LAPACK on the CPU: ``LAYERPROF_CPU_LAPACK`` (scipy, the default, or torch)."""
    value = os.environ.get(CPU_LAPACK_ENV, "scipy").strip().lower() or "scipy"
    if value not in CPU_LAPACKS:
        raise ValueError(f"{CPU_LAPACK_ENV} must be one of {', '.join(CPU_LAPACKS)}, got {value!r}")
    return value


def library(device: torch.device) -> str:
    """The library that runs finalize's float64 work for statistics on ``device`` (the card records it)."""
    return cpu_lapack() if device.type == "cpu" else "torch"


def _scipy(t: torch.Tensor) -> bool:
    return library(t.device) == "scipy"


@contextlib.contextmanager
def blas_threads(n: int):
    """scipy's BLAS limited to ``n`` threads inside the block (torch's own setting is ``memory.threads``)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n, user_api="blas"):
        yield


# Above this size torch's eigvalsh (MKL in the CPU build) beats scipy's (OpenBLAS) on the CPU we measure: one
# thread, 0.57–0.69× scipy's time at 3072–4096, against 1.4–2.2× at 1024 and 0.95–1.13× at 2048
# (`bench/bench_lapack.py --eig-sizes ...`, studies/v1/bench-notebook.md). The other routines stay with scipy at
# every size (Cholesky and dsyrk 1.5–2× faster there, dtrsm within 10%).
SCIPY_EIGVALSH_MAX = 2048


def _scipy_eigvalsh(A: torch.Tensor) -> bool:
    """scipy's eigvalsh for a problem of A.shape[0] rows (Σ itself, or the Gram matrix A Aᵀ)."""
    return _scipy(A) and A.shape[0] <= SCIPY_EIGVALSH_MAX


def eigvalsh(A: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of the symmetric A (its lower triangle is read), ascending."""
    if not _scipy_eigvalsh(A):
        return torch.linalg.eigvalsh(A)
    from scipy.linalg import eigvalsh as _eigvalsh

    # The Fortran view of a row-major A is Aᵀ (no copy): its upper triangle is A's lower one.
    return torch.from_numpy(_eigvalsh(A.numpy().T, lower=False, check_finite=False, driver="evd"))


def cholesky(A: torch.Tensor) -> torch.Tensor | None:
    """The lower Cholesky factor of A, or None where A is not positive definite."""
    if not _scipy(A):
        L, info = torch.linalg.cholesky_ex(A)
        return L if int(info) == 0 else None
    from scipy.linalg import lapack

    # LAPACK on the Fortran view Aᵀ (= A): its upper factor U (A = UᵀU) is read back as Uᵀ = L, row-major.
    U, info = lapack.dpotrf(A.numpy().T, lower=0, clean=1, overwrite_a=0)
    return torch.from_numpy(np.ascontiguousarray(U.T)) if info == 0 else None


def solve_lower(L: torch.Tensor, B: torch.Tensor, *, transpose: bool = False) -> torch.Tensor:
    """L⁻¹B (or L⁻ᵀB with ``transpose``) for the lower-triangular L."""
    if not _scipy(L):
        if transpose:
            return torch.linalg.solve_triangular(L.t(), B, upper=True)
        return torch.linalg.solve_triangular(L, B, upper=False)
    from scipy.linalg import blas

    # On the Fortran views (Lᵀ = U upper, Bᵀ), without copies: (L⁻¹B)ᵀ = Bᵀ U⁻¹ and (L⁻ᵀB)ᵀ = Bᵀ U⁻ᵀ.
    B = B.contiguous()
    X = blas.dtrsm(1.0, L.contiguous().numpy().T, B.numpy().T, side=1, lower=0, trans_a=1 if transpose else 0)
    return torch.from_numpy(X.T)


def leading_gram_eigvals(A: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest eigenvalues of A Aᵀ (the squared singular values of A), descending, clamped at 0.

    The Gram matrix by ``dsyrk`` and all its eigenvalues: exact, and on the CPU as fast as ARPACK's
    Lanczos for the 64 leading ones even at 3072² and 4096² (2.7–3.2 s against 2.8–3.0, 5.8–5.9 s
    against 6.0–6.6; studies/v1/bench-notebook.md), so there is no iterative route here."""
    if not _scipy(A):
        return torch.linalg.eigvalsh(A @ A.t()).flip(0)[:k].clamp_min(0.0)
    from scipy.linalg import blas, eigvalsh as _eigvalsh

    # dsyrk on the Fortran view Aᵀ with trans=1 forms (Aᵀ)ᵀ Aᵀ = A Aᵀ, upper triangle only.
    G = blas.dsyrk(1.0, A.numpy().T, trans=1, lower=0)
    if not _scipy_eigvalsh(A):  # G is A.shape[0] square; dsyrk filled its upper triangle only
        return torch.linalg.eigvalsh(torch.from_numpy(G), UPLO="U").flip(0)[:k].clamp_min(0.0)
    mu = _eigvalsh(G, lower=False, check_finite=False, driver="evd")
    return torch.from_numpy(mu[::-1][:k].copy()).clamp_min(0.0)


LANCZOS_TOL = 1e-10  # ARPACK's leading pairs are kept only if each residual is below this, relative


def _lanczos(A: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """ARPACK's k leading eigenpairs (θ descending, V) of A Aᵀ on the operator x ↦ A(Aᵀx), or None.

    No Gram matrix is formed. The start vector is a seeded Gaussian: deterministic, and with no
    structure to be orthogonal to (all ones, an earlier start, is orthogonal to every
    leading eigenvector where the gradients sum to zero over the features, as into a LayerNorm;
    ARPACK recovered from that in a test, but only through rounding). Stopped when ARPACK
    estimates every residual below LANCZOS_TOL·θ_i (θ_i ≤ θ_1, so the check below then passes;
    iterating on to machine precision took 20–30% more products and moved the projectors by
    ≤ 4e-12); kept when every residual ‖A Aᵀv − θv‖ ≤ LANCZOS_TOL·θ_1 (for a symmetric matrix that
    bounds each pair's error), else None."""
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    a = A.numpy()
    m = a.shape[0]
    if k >= m - 1:  # ARPACK needs k < m - 1 (and the exact route is as cheap there)
        return None
    op = LinearOperator((m, m), matvec=lambda x: a @ (a.T @ x), dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(m)
    try:
        theta, V = eigsh(op, k=k, which="LA", tol=LANCZOS_TOL, v0=v0)
    except ArpackNoConvergence:
        return None
    order = np.argsort(theta)[::-1]
    theta, V = theta[order], V[:, order]
    residual = np.linalg.norm(a @ (a.T @ V) - V * theta, axis=0)
    if theta[0] > 0 and residual.max() <= LANCZOS_TOL * theta[0]:
        return theta, V
    return None


def leading_gram_eigvecs(A: torch.Tensor, k: int) -> torch.Tensor:
    """Orthonormal eigenvectors of A Aᵀ for its k largest eigenvalues (columns, descending).

    On the CPU through scipy: ARPACK's Lanczos (``_lanczos``, checked), else LAPACK's dsyevr on the
    Gram matrix for the k leading pairs. At d = 1024, k = 8: 0.02–0.03 s against 0.09 s
    (``python bench/bench_rank_cross.py``)."""
    m = A.shape[0]
    k = min(k, m)
    if not _scipy(A):
        return torch.linalg.eigh(A @ A.t()).eigenvectors.flip(1)[:, :k]
    found = _lanczos(A, k)
    if found is not None:
        return torch.from_numpy(np.ascontiguousarray(found[1]))
    return leading_gram_eigvecs_lapack(A, k)


def leading_gram_eigvecs_lapack(A: torch.Tensor, k: int) -> torch.Tensor:
    """``leading_gram_eigvecs``'s fallback on the CPU: the Gram matrix by dsyrk, then LAPACK's dsyevr
    for the k leading pairs only (the reduction to tridiagonal form is the whole cost, as for eigvalsh)."""
    from scipy.linalg import blas, eigh as _eigh

    a, m = A.numpy(), A.shape[0]
    k = min(k, m)
    G = blas.dsyrk(1.0, a.T, trans=1, lower=0)
    _, V = _eigh(G, lower=False, check_finite=False, driver="evr", subset_by_index=[m - k, m - 1])
    return torch.from_numpy(V[:, ::-1].copy(order="C"))  # a copy: torch takes no negative strides


def weighted_trace(W: torch.Tensor, sigma: torch.Tensor, L: torch.Tensor | None, lam: float) -> float:
    """tr(W Σ Wᵀ); with L the Cholesky factor of Σ + λI, as ‖W L‖² − λ‖W‖² (a triangular product)."""
    if L is None or not _scipy(W):
        return float(((W @ sigma) * W).sum())
    from scipy.linalg import blas

    # On Fortran views: Lᵀ (upper) times Wᵀ gives (W L)ᵀ; only its norm is needed.
    WL = blas.dtrmm(1.0, L.numpy().T, W.numpy().T, side=0, lower=0, trans_a=0)
    return float(np.vdot(WL, WL)) - lam * float((W * W).sum())

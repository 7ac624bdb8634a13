"""layerprof.stats.linalg: finalize's float64 LAPACK, scipy's and torch's, against independent references."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import layerprof as lp
from layerprof.stats import linalg


@pytest.fixture(params=linalg.CPU_LAPACKS)
def library(request, monkeypatch):
    monkeypatch.setenv(linalg.CPU_LAPACK_ENV, request.param)
    return request.param


def _spd(d: int, rows: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(rows, d, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3.0, d, dtype=torch.float64)
    return X.t() @ X / rows


def test_eigvalsh_matches_numpy(library):
    A = _spd(60, 200)
    got = linalg.eigvalsh(A)
    ref = np.linalg.eigvalsh(A.numpy())  # numpy's own routine, ascending
    assert got.dtype == torch.float64 and got.shape == (60,)
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-12 * ref.max())


def test_eigvalsh_reads_the_lower_triangle(library):
    A = _spd(30, 90)
    broken = A.clone()
    broken.triu_(1).mul_(7.0)  # garbage above the diagonal
    broken += torch.tril(A)
    np.testing.assert_allclose(linalg.eigvalsh(broken).numpy(), np.linalg.eigvalsh(A.numpy()), atol=1e-12)


def test_cholesky_and_solves(library):
    A = _spd(50, 80) + 1e-3 * torch.eye(50, dtype=torch.float64)
    B = torch.randn(50, 23, dtype=torch.float64)
    L = linalg.cholesky(A)
    assert torch.equal(L, torch.tril(L))
    torch.testing.assert_close(L @ L.t(), A, rtol=0, atol=1e-12)
    Y = linalg.solve_lower(L, B)
    torch.testing.assert_close(L @ Y, B, rtol=0, atol=1e-11)
    Z = linalg.solve_lower(L, B, transpose=True)
    torch.testing.assert_close(L.t() @ Z, B, rtol=0, atol=1e-11)
    # (Σ + λI)⁻¹B through both solves equals a general solver's answer.
    torch.testing.assert_close(linalg.solve_lower(L, Y, transpose=True), torch.linalg.solve(A, B), rtol=1e-9, atol=0)
    # Non-contiguous right-hand sides (a transposed view) give the same answer, and B is left as it was.
    Bt = B.t().contiguous().t()
    before = Bt.clone()
    torch.testing.assert_close(linalg.solve_lower(L, Bt), Y, rtol=0, atol=1e-12)
    assert torch.equal(Bt, before)


def test_cholesky_of_an_indefinite_matrix_is_none(library):
    A = _spd(20, 40)
    A[3, 3] = -1.0
    assert linalg.cholesky(A) is None


@pytest.mark.parametrize("shape", [(40, 70), (70, 40)])
def test_leading_gram_eigvals_are_the_squared_singular_values(library, shape):
    Y = torch.randn(*shape, dtype=torch.float64)
    got = linalg.leading_gram_eigvals(Y if shape[0] <= shape[1] else Y.t(), 12)
    ref = np.linalg.svd(Y.numpy(), compute_uv=False)[:12] ** 2  # descending
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-11)


def test_large_eigenvalue_problems_take_torchs_eigvalsh_with_the_same_result(monkeypatch):
    """Above SCIPY_EIGVALSH_MAX the CPU's eigenvalues come from torch (faster there): Σ's and the Gram
    matrix's (dsyrk fills one triangle, which torch must read) equal numpy's."""
    monkeypatch.setattr(linalg, "SCIPY_EIGVALSH_MAX", 8)
    sigma = _spd(30, 60)
    np.testing.assert_allclose(linalg.eigvalsh(sigma).numpy(), np.linalg.eigvalsh(sigma.numpy()), rtol=1e-11,
                               atol=1e-13)
    Y = torch.randn(25, 70, dtype=torch.float64)
    ref = np.linalg.svd(Y.numpy(), compute_uv=False)[:10] ** 2
    np.testing.assert_allclose(linalg.leading_gram_eigvals(Y, 10).numpy(), ref, rtol=1e-11)


def test_lanczos_start_has_no_structure_to_miss():
    """Leading eigenvectors orthogonal to all ones (gradients that sum to zero over the features, as
    into a LayerNorm): the certified pairs are still the leading ones."""
    gen = np.random.default_rng(0)
    m, n = 120, 300
    B = gen.standard_normal((m, n)) * np.linspace(3.0, 0.1, n)
    A = torch.from_numpy((np.eye(m) - 1.0 / m) @ B)  # every column ⊥ ones
    found = linalg._lanczos(A, 6)
    assert found is not None
    ref = np.linalg.eigvalsh((A @ A.t()).numpy())[::-1][:6]
    np.testing.assert_allclose(found[0], ref, rtol=1e-10)
    assert np.abs(np.ones(m) @ found[1]).max() < 1e-8  # the pairs found are the ones ⊥ ones


@pytest.mark.parametrize("shape", [(40, 70), (70, 40)])
@pytest.mark.parametrize("lanczos", ["converges", "falls back"])
def test_leading_gram_eigvecs_span_the_top_singular_subspace(library, monkeypatch, shape, lanczos):
    """The projector onto the k leading eigenvectors of A Aᵀ equals numpy's from the SVD of A, by
    ARPACK's Lanczos and by the exact fallback taken when its residual check fails."""
    if lanczos == "falls back":
        monkeypatch.setattr(linalg, "LANCZOS_TOL", 0.0)  # no residual passes: the dsyevr path runs
    g = torch.Generator().manual_seed(3)
    A = torch.randn(*shape, generator=g, dtype=torch.float64) * torch.linspace(0.2, 2.0, shape[1], dtype=torch.float64)
    for k in (1, 5):
        U = linalg.leading_gram_eigvecs(A, k)
        ref = np.linalg.svd(A.numpy())[0][:, :k]
        assert U.shape == (shape[0], k)
        np.testing.assert_allclose(U.t() @ U, np.eye(k), atol=1e-12)
        np.testing.assert_allclose((U @ U.t()).numpy(), ref @ ref.T, atol=1e-9)


def test_weighted_trace(library):
    sigma = _spd(45, 100)
    lam = 0.02
    L = linalg.cholesky(sigma + lam * torch.eye(45, dtype=torch.float64))
    W = torch.randn(17, 45, dtype=torch.float64)
    ref = float(np.trace(W.numpy() @ sigma.numpy() @ W.numpy().T))
    assert math.isclose(linalg.weighted_trace(W, sigma, L, lam), ref, rel_tol=1e-12)
    assert math.isclose(linalg.weighted_trace(W, sigma, None, lam), ref, rel_tol=1e-12)


def test_an_unknown_library_names_the_choices(monkeypatch):
    monkeypatch.setenv(linalg.CPU_LAPACK_ENV, "mkl")
    with pytest.raises(ValueError, match="LAYERPROF_CPU_LAPACK must be one of scipy, torch"):
        linalg.eigvalsh(torch.eye(3, dtype=torch.float64))


def test_blas_threads_limits_and_restores():
    from threadpoolctl import threadpool_info

    def blas_threads_now():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads_now()
    with linalg.blas_threads(1):
        assert all(n == 1 for n in blas_threads_now())
    assert blas_threads_now() == before


def test_the_card_is_the_same_under_either_library(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 5))
    batches = [{"x": torch.randn(64, 24), "y": torch.randint(0, 5, (64,))} for _ in range(4)]

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x, y=None):
            return self.net(x)

    loss = lambda out, b: nn.functional.cross_entropy(out, b["y"])  # noqa: E731
    cards = {}
    for lib in linalg.CPU_LAPACKS:
        monkeypatch.setenv(linalg.CPU_LAPACK_ENV, lib)
        cards[lib] = lp.profile(Wrap(), batches, loss_fn=loss, targets=["net.0", "net.2"], progress=False,
                                coupling=False, rank=4)
    a, b = cards["scipy"], cards["torch"]
    compared = 0
    for ra, rb in [*zip(a.modules, b.modules), *zip(a.layers, b.layers)]:
        for key, va in vars(ra).items():
            vb = getattr(rb, key)
            for x, y in zip(va, vb) if isinstance(va, list) else [(va, vb)]:  # sv2: the leading spectrum
                if isinstance(x, float) and math.isfinite(x):
                    assert math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12), (key, x, y)
                    compared += 1
    assert compared > 60

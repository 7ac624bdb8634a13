"""stats_update: every backend against the float64 reference on a grid of shapes, dtypes and masks.

Tolerance (analytic, not tuned): a sum of n products computed in fp32 from exactly
widened inputs has error |ŝ − s| ≤ γ_n Σ|a_i b_i| with γ_n ≈ n·u, u = 2⁻²⁴
(Higham, Accuracy and Stability of Numerical Algorithms, §3.1). So we check
|S − S_ref| ≤ n·u·(|X|ᵀ|X|) elementwise (n = rows accumulated), and likewise for C, q.
"""
import pytest
import torch

from layerprof import ops
from layerprof.ops import stats_update_reference

U32 = 2.0 ** -24
BACKENDS = [name for name, st in ops.backends().items() if st.available and "cpu" in st.devices]


def _case(d_in, d_out, rows, dtype, mask_kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, d_in, generator=g) * 3 + 0.5).to(dtype)
    gr = torch.randn(rows, d_out, generator=g).to(dtype)
    if mask_kind == "none":
        mask = None
    elif mask_kind == "holes":
        mask = torch.rand(rows, generator=g) > 0.3
    else:
        mask = torch.zeros(rows, dtype=torch.bool)
    return x, gr, mask


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("d_in,d_out", [(1, 1), (59, 7), (64, 64), (257, 3)])
@pytest.mark.parametrize("rows", [0, 1, 1025])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mask_kind", ["none", "holes", "all_masked"])
def test_stats_update_matches_reference(backend, d_in, d_out, rows, dtype, mask_kind):
    x, g, mask = _case(d_in, d_out, rows, dtype, mask_kind)
    S, C, q = torch.zeros(d_in, d_in), torch.zeros(d_in, d_out), torch.zeros(())
    S64, C64, q64 = (t.double() for t in (S, C, q))
    # Two calls: accumulation into existing sums is part of the contract.
    for _ in range(2):
        ops.stats_update(backend, S, C, q, x, g, mask)
        stats_update_reference(S64, C64, q64, x, g, mask)
    xs, gs = (x, g) if mask is None else (x[mask], g[mask])
    n = 2 * xs.shape[0]
    ax, ag = xs.double().abs(), gs.double().abs()
    bound_S = 2 * (n + 1) * U32 * (ax.t() @ ax)
    bound_C = 2 * (n + 1) * U32 * (ax.t() @ ag)
    assert ((S.double() - S64).abs() <= bound_S + 1e-300).all()
    assert ((C.double() - C64).abs() <= bound_C + 1e-300).all()
    assert abs(float(q) - float(q64)) <= 2 * (n * d_out + 1) * U32 * float(q64) + 1e-300
    if mask_kind == "all_masked" or rows == 0:
        assert S.abs().sum() == 0 and C.abs().sum() == 0 and float(q) == 0


def test_fp64_accumulators_are_exact_to_fp64():
    x, g, mask = _case(59, 7, 1025, torch.float32, "holes")
    S, C, q = torch.zeros(59, 59, dtype=torch.float64), torch.zeros(59, 7, dtype=torch.float64), \
        torch.zeros((), dtype=torch.float64)
    ops.stats_update("torch", S, C, q, x, g, mask)
    S64, C64, q64 = torch.zeros_like(S), torch.zeros_like(C), torch.zeros_like(q)
    stats_update_reference(S64, C64, q64, x, g, mask)
    # Both sum the same fp64 products; only the summation order may differ (n·u64 bound, u64 = 2^-53).
    xs = x[mask].double().abs()
    assert ((S - S64).abs() <= 1025 * 2.0 ** -53 * (xs.t() @ xs)).all()


def test_unknown_backend_named_in_error():
    with pytest.raises(ValueError, match="unknown backend 'fast'.*auto"):
        ops.resolve_backend("fast")


def test_auto_resolves_without_gpu_and_unavailable_backend_falls_back_with_warning():
    assert ops.resolve_backend("auto", "cpu") in BACKENDS
    table = ops.backends()
    missing = [n for n, st in table.items() if not st.available]
    for name in missing:
        with pytest.warns(UserWarning, match=f"backend '{name}' is not available"):
            ops._warned.discard(name)
            assert ops.resolve_backend(name, "cpu") == "torch"
    assert all(st.reason for st in table.values())

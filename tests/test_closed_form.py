"""ρ²/2 is the exact least-squares loss decrease of a last linear layer under squared loss.

Model: frozen nonlinear features → Linear(d_in, d_out); loss L = mean_t ½‖y_t − z_t‖² over
the batch. Curvature per row is I/N, so the best correction ΔW lowers L by exactly
½ tr(Cᵀ Σ⁻¹ C) = ρ²/2 at δ = 0 (docs/method.md): compared against an independent lstsq fit.
"""
import math

import numpy as np
import pytest
import torch
from torch import nn

import layerprof as lp


class Regressor(nn.Module):
    def __init__(self, d_feat=7, d_in=9, d_out=4):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(d_feat, d_in), nn.Tanh())
        self.head_fit = nn.Linear(d_in, d_out)

    def forward(self, x, z):
        y = self.head_fit(self.features(x))
        return {"loss": 0.5 * ((y - z) ** 2).sum(-1).mean(), "y": y}


def _data(n=300, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 7, generator=g, dtype=dtype)
    z = torch.sin(x[:, :4] * 2) + 0.1 * torch.randn(n, 4, generator=g, dtype=dtype)
    return x, z


def _exact_decrease(model, x, z):
    with torch.no_grad():
        F = model.features(x).double().numpy()
        W = model.head_fit.weight.double().numpy()
        b = model.head_fit.bias.double().numpy()
    Z = z.double().numpy()
    L0 = 0.5 * np.mean(np.sum((F @ W.T + b - Z) ** 2, axis=1))
    Wt, *_ = np.linalg.lstsq(F, Z - b, rcond=None)  # the optimal W*ᵀ with the bias fixed
    L1 = 0.5 * np.mean(np.sum((F @ Wt + b - Z) ** 2, axis=1))
    return L0 - L1, np.linalg.cond(F.T @ F)


@pytest.mark.parametrize("dtype,stat_dtype,rtol", [
    (torch.float64, torch.float64, 1e-9),   # fp64 end to end: only summation order differs
    (torch.float32, torch.float32, None),   # fp32: tolerance from cond (below)
])
def test_resnorm_squared_over_two_is_the_least_squares_decrease(dtype, stat_dtype, rtol):
    torch.manual_seed(0)
    model = Regressor().to(dtype)
    x, z = _data(dtype=dtype)
    card = lp.profile(model, [{"x": x, "z": z}], targets=["head_fit"], rank=4, damping=0.0, dtype=stat_dtype,
                      progress=False)
    decrease, cond = _exact_decrease(model, x, z)
    rho2 = card.module("head_fit").resnorm ** 2
    if rtol is None:
        # fp32 sums have relative error ≲ n·u (u = 2⁻²⁴); the solve amplifies it by cond(S).
        rtol = 300 * 2.0 ** -24 * cond
        assert rtol < 0.05, "features too ill-conditioned for a meaningful fp32 check"
    assert math.isclose(rho2 / 2, decrease, rel_tol=rtol)
    # The fraction of the residual the inputs explain is exactly ρ²/(N q) at δ = 0.
    assert 0 < card.module("head_fit").resid_explained <= 1 + 1e-9


def test_summed_over_batches_scales_with_batch_count():
    # L is summed over nb equal batches (each a mean over B rows, N = nb·B). Then C = XᵀR/B and
    # Σ = S/N, so ρ² = (N/B²)‖P_X R‖² while the exact decrease of the summed loss is ‖P_X R‖²/(2B):
    # ρ²/2 = nb · ΔL_sum. ρ² grows with the sweep; rankings and shares do not change.
    torch.manual_seed(0)
    model = Regressor().double()
    x, z = _data(n=300)
    parts = [{"x": x[i::3], "z": z[i::3]} for i in range(3)]
    card = lp.profile(model, parts, targets=["head_fit"], rank=4, damping=0.0, dtype=torch.float64,
                      progress=False)
    decrease_mean, _ = _exact_decrease(model, x, z)  # of the mean over all N rows
    decrease_sum = 3 * decrease_mean  # L_sum = Σ_b mean_b = (N/B)·mean = 3·mean
    assert math.isclose(card.module("head_fit").resnorm ** 2 / 2, 3 * decrease_sum, rel_tol=1e-9)

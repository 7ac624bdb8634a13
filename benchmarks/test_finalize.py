"""Finalize's float64 work for one 1024 × 1024 module, against accumulating its statistics over 12,288 rows
(the sweep's share for that module): finalize does not grow with the tokens, the sweep does."""
import torch

from conftest import paired
from layerprof.stats.accumulate import ModuleStats
from layerprof.stats.finalize import module_columns
from layerprof.stats.ops import stats as reference_ops

D, ROWS = 1024, 12288


def test_finalize(benchmark):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(ROWS, D, generator=gen) @ (torch.randn(D, D, generator=gen) / D ** 0.5)  # correlated inputs
    g = torch.randn(ROWS, D, generator=gen)
    weight = torch.randn(D, D, generator=gen) / D ** 0.5
    S, C, q = torch.zeros(D, D), torch.zeros(D, D), torch.zeros(())

    def accumulate():
        S.zero_(), C.zero_(), q.zero_()
        reference_ops.stats_update_torch(S, C, q, x, g)

    accumulate()
    st = ModuleStats(ROWS, S.clone(), C.clone(), q.clone())
    # eigvalsh 4/3·d³, Cholesky d³/3, the solve L⁻¹C d²·d_out, the Gram of L⁻¹C and its spectrum 2·d³ + 4/3·d³
    flops = 4 / 3 * D ** 3 + D ** 3 / 3 + D ** 2 * D + 2 * D ** 3 + 4 / 3 * D ** 3
    benchmark.group = f"finalize: one {D} × {D} module, {ROWS:,} rows"
    paired(benchmark, lambda: module_columns(st, weight, rank=8, damping=1e-3), accumulate, rounds=3,
           info={"flops": flops, "baseline": "stats_update over the rows (torch)"})

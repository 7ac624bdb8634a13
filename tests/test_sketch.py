"""Sketch mode: CΩ instead of C — unbiased ρ² and ‖C‖², error shrinking with k, exact where k ≥ d_out."""
import math
import statistics

import pytest
import torch

import layerprof as lp
from conftest import make_batches, make_model


@pytest.fixture(scope="module")
def setup():
    model = make_model("llama").double()
    batches = make_batches(n=4)
    dense = lp.profile(model, batches, rank=4, dtype=torch.float64, progress=False)
    return model, batches, dense


def test_resnorm_and_grad_norm_estimates_are_unbiased(setup):
    # E‖MΩ‖² = ‖M‖² for Ω with N(0, 1/k) entries. Over 40 independent Ω the mean estimate of
    # ρ² must sit within 4 standard errors of the dense value (a 4σ test: false alarm ~6e-5).
    model, batches, dense = setup
    runs = [lp.profile(model, batches, rank=4, dtype=torch.float64, progress=False, sketch=8, sketch_seed=s)
            for s in range(40)]
    for i, d in enumerate(dense.modules):
        if d.d_out <= 8:
            continue
        for col in ("resnorm", "grad_norm"):
            est = [getattr(r.modules[i], col) ** 2 for r in runs]
            se = statistics.stdev(est) / math.sqrt(len(est))
            assert abs(statistics.mean(est) - getattr(d, col) ** 2) <= 4 * se + 1e-12, (d.name, col)


def test_error_shrinks_as_k_grows_and_ranking_settles(setup):
    model, batches, dense = setup

    def err(k):
        card = lp.profile(model, batches, rank=4, dtype=torch.float64, progress=False, sketch=k)
        return statistics.mean(abs(s.resnorm ** 2 - d.resnorm ** 2) / d.resnorm ** 2
                               for s, d in zip(card.modules, dense.modules) if d.d_out > k), card

    e8, _ = err(8)
    e32, c32 = err(32)
    assert e32 < e8
    assert c32.meta["settings"]["sketch"] == 32 and c32.meta["settings"]["sketched_modules"] > 0


def test_sketch_wider_than_module_is_dense_and_exact(setup):
    model, batches, dense = setup
    card = lp.profile(model, batches, rank=4, dtype=torch.float64, progress=False, sketch=1000)
    assert card.meta["settings"]["sketched_modules"] == 0
    for a, b in zip(dense.modules, card.modules):
        assert a.resnorm == b.resnorm


def test_sketch_memory_and_bad_settings():
    model = make_model("llama")
    with lp.Profiler(model, rank=4, sketch=8) as prof:
        for b in make_batches(n=1):
            model(**b).loss.backward()
    down = "model.layers.0.mlp.gate_proj"  # 24 -> 40: sketched to 8 columns
    assert prof.acc.total(down).C.shape == (24, 8)
    with pytest.raises(lp.ProfileError, match="smaller than rank"):
        lp.Profiler(model, rank=8, sketch=4)
    with pytest.raises(lp.ProfileError, match="coupling needs the dense C"):
        lp.profile(model, make_batches(n=1), rank=4, sketch=8, coupling=True, progress=False)

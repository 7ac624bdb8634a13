"""Every card column against an independent float64 computation (tests/reference.py).

Two regimes:
* float64 model and float64 statistics: layerprof and the reference then differ only in
  summation order and in which (exact-in-theory) linear algebra they use, so columns
  agree to ~cond·1e-13; we allow 1e-8 relative (cond here stays below 1e5, checked).
* float32 model and statistics (the default): by STYLE's rule the fp32 card's error
  against the fp64 reference must be at most 2× the error of plain fp32 PyTorch doing
  the same sums (X.T @ X and X.T @ G of the fp32 activations), finalized in fp64.
"""
import math

import numpy as np
import pytest
import torch

import layerprof as lp
from conftest import MODELS, assert_untouched, make_batches, make_model, snapshot
from reference import COLUMNS, reference_columns, reference_stats, weight_of


def _check_card(card, stats, model, rank, damping, rtol):
    assert {m.name for m in card.modules} == set(stats)
    for row in card.modules:
        s = stats[row.name]
        ref = reference_columns(s["N"], s["S"], s["C"], s["q"], weight_of(model, row.name), rank, damping)
        assert ref["cond"] < 1e5
        for col in COLUMNS:
            got, want = getattr(row, col), ref[col]
            assert math.isclose(got, want, rel_tol=rtol, abs_tol=1e-12), f"{row.name}.{col}: {got} vs {want}"


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_columns_float64_every_architecture(arch):
    model = make_model(arch).double()
    batches = make_batches()
    snap = snapshot(model)
    card = lp.profile(model, batches, rank=4, damping=1e-3, dtype=torch.float64, progress=False)
    assert_untouched(model, snap)  # parameters bitwise, requires_grad, modes, hooks
    stats = reference_stats(model, batches, [m.name for m in card.modules])
    _check_card(card, stats, model, 4, 1e-3, 1e-8)
    # Every block is on the card with all of its linear modules.
    n_layers = model.config.num_hidden_layers
    assert [l.layer for l in card.layers] == list(range(n_layers))
    assert all(l.modules == MODELS[arch][1] for l in card.layers)


def test_layer_aggregates_and_split_halves():
    model = make_model("llama").double()
    batches = make_batches(n=4)
    card = lp.profile(model, batches, rank=4, dtype=torch.float64, progress=False)
    full = reference_stats(model, batches, [m.name for m in card.modules])
    halves = [reference_stats(model, batches[h::2], list(full)) for h in (0, 1)]
    total = sum(m.resnorm ** 2 for m in card.modules)
    for l in card.layers:
        ms = [m for m in card.modules if m.layer == l.layer]
        r2 = sum(m.resnorm ** 2 for m in ms)
        assert math.isclose(l.resnorm ** 2, r2, rel_tol=1e-12)
        # The default score (the placement study's choice) is the layer's mean activation energy.
        assert card.meta["settings"]["score"] == "energy"
        assert math.isclose(l.score, sum(m.energy for m in ms) / len(ms), rel_tol=1e-12)
        assert math.isclose(l.gain_share, r2 / total, rel_tol=1e-12)
        assert math.isclose(l.predicted_gain, r2 / 2, rel_tol=1e-12)
        assert math.isclose(l.grad_norm ** 2, sum(m.grad_norm ** 2 for m in ms), rel_tol=1e-12)
        for h, key in ((0, "resnorm_a"), (1, "resnorm_b")):
            r2h = 0.0
            for m in ms:
                s = halves[h][m.name]
                r2h += reference_columns(s["N"], s["S"], s["C"], s["q"], weight_of(model, m.name), 4, 1e-3)[
                    "resnorm"] ** 2
            assert math.isclose(getattr(l, key), math.sqrt(r2h), rel_tol=1e-8)
    # Kendall τ of the halves, computed independently with scipy.
    from scipy.stats import kendalltau
    tau = kendalltau([l.resnorm_a for l in card.layers], [l.resnorm_b for l in card.layers]).statistic
    assert math.isclose(card.meta["stability"]["kendall_tau"], tau, rel_tol=1e-12)
    assert card.meta["stability"]["batches_per_half"] == [2, 2]


CARD_BACKENDS = [b for b in ("torch", "cpp", "triton") if b == "torch" or (
    lp.backends()[b].available and "cpu" in lp.backends()[b].devices)]


@pytest.mark.parametrize("backend", CARD_BACKENDS)
@pytest.mark.parametrize("arch", ["gpt2", "qwen3"])
def test_columns_float32_within_twice_plain_torch_error(arch, backend):
    # Run for every backend available here: a whole card from each one meets the same bound.
    model = make_model(arch)
    batches = make_batches()
    card = lp.profile(model, batches, rank=4, progress=False, backend=backend)
    assert card.meta["settings"]["backend"] == backend
    names = [m.name for m in card.modules]
    exact = reference_stats(model, batches, names, double=False)  # fp32 activations, fp64 sums
    for row in card.modules:
        s = exact[row.name]
        ref = reference_columns(s["N"], s["S"], s["C"], s["q"], weight_of(model, row.name), 4, 1e-3)
        # Plain fp32's error: the exact sums rounded to fp32 (the least any fp32 GEMM commits),
        # finalized again; plus the fp32 GEMM accumulation bound n·u·|value| amplified by
        # √cond through the (Σ+λI)^{-1/2} solve.
        S32 = s["S"].astype(np.float32).astype(np.float64)
        C32 = s["C"].astype(np.float32).astype(np.float64)
        pl = reference_columns(s["N"], S32, C32, float(np.float32(s["q"])), weight_of(model, row.name), 4, 1e-3)
        for col in COLUMNS:
            err = abs(getattr(row, col) - ref[col])
            err_plain = abs(pl[col] - ref[col])
            n = s["N"]
            floor = n * 2.0 ** -24 * abs(ref[col]) * max(1.0, ref["cond"] ** 0.5)
            assert err <= 2 * err_plain + floor, f"{row.name}.{col}: {err} vs plain {err_plain}"


@pytest.mark.parametrize("backend", [b for b in CARD_BACKENDS if b != "torch"])
def test_every_backend_gives_the_torch_backends_card(backend):
    # Same model, same batches: only the fp32 summation order differs between backends, so
    # every column agrees to the fp32 accumulation bound amplified by the solve: n·u·√cond
    # relative (n = rows, u = 2^-24) — about 1e-4 here; the layer ranking is identical.
    model = make_model("llama")
    batches = make_batches(n=4)
    ref = lp.profile(model, batches, rank=4, progress=False, backend="torch")
    card = lp.profile(model, batches, rank=4, progress=False, backend=backend)
    assert card.ranking() == ref.ranking()
    for a, b in zip(ref.modules, card.modules):
        tol = a.rows * 2.0 ** -24 * max(1.0, a.cond ** 0.5) * 4
        for col in COLUMNS:
            assert math.isclose(getattr(a, col), getattr(b, col), rel_tol=tol), (a.name, col)


@pytest.mark.parametrize("score", ["resnorm2", "resnorm2_rank", "resnorm2_over_noise", "resnorm2_rank_over_noise",
                                   "energy"])
def test_score_option_sets_the_layer_score(score):
    card = lp.profile(make_model("llama"), make_batches(), rank=4, progress=False, score=score)
    want = {"resnorm2": lambda l: l.resnorm ** 2, "resnorm2_rank": lambda l: l.resnorm_rank ** 2,
            "resnorm2_over_noise": lambda l: l.resnorm ** 2 / l.noise_amp,
            "resnorm2_rank_over_noise": lambda l: l.resnorm_rank ** 2 / l.noise_amp, "energy": lambda l: l.energy}[score]
    for l in card.layers:
        assert l.score == pytest.approx(want(l), rel=1e-12)
        assert l.gain_share == pytest.approx(l.resnorm ** 2 / sum(x.resnorm ** 2 for x in card.layers), rel=1e-12)
    assert card.ranking() == sorted((l.layer for l in card.layers), key=lambda i: -want(card.layer(i)))
    assert card.place(layers=1).layers == [card.ranking()[0]]
    assert card.meta["settings"]["score"] == score


def test_unknown_score_is_refused():
    with pytest.raises(lp.ProfileError, match="score must be one of"):
        lp.profile(make_model("llama"), make_batches(), rank=4, progress=False, score="vibes")

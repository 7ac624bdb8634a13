"""The budget-aware and noise-free card columns against independent computations.

* ρ²×, ‖C‖²×, rank-r ρ²× (Rule 1): from the float64 reference twin's statistics of the even and
  odd batches (tests/reference.py), by explicit solves and numpy's SVD of the symmetrically whitened
  gradients — float64 model and statistics, so the only differences are summation order and linear
  algebra (1e-8 relative, as test_columns).
* the simulated LoRA run: against a twin that forms ΔW = (α/r) B A explicitly and lets
  autograd take the gradients of the quadratic model, stepped by the same torch AdamW.
* κ: exactly 2 / d_out for a linear layer under mean-squared error (the loss is quadratic).
* the warm-up: its hook adapters against PEFT's own LoRA layers, step for step.
"""
import math

import numpy as np
import pytest
import torch
from torch import nn

import layerprof as lp
from conftest import assert_untouched, make_batches, make_model, snapshot
from layerprof.stats.accumulate import ModuleStats
from layerprof.card.budget import BudgetError, TrainingBudget
from layerprof.stats.finalize import noise_columns
from layerprof.predict.simulate import _local_loss, _run_adam, curvature, simulate_module
from layerprof.card.scores import DEFAULT_SCORE
from reference import reference_stats

BUDGET = TrainingBudget(steps=6, lr=1e-2, r=2, lora_alpha=4)


def _explicit_cross(sa, sb, total, nb, damping):
    d = total["S"].shape[0]
    sigma = total["S"] / total["N"]
    A = sigma + damping * np.trace(sigma) / d * np.eye(d)
    n = nb[0] + nb[1]
    Ga, Gb = sa["C"] / nb[0], sb["C"] / nb[1]
    return n * n * float(np.trace(Ga.T @ np.linalg.solve(A, Gb))), n * n * float((Ga * Gb).sum())


def _explicit_rank_cross(Xa, Xb, r):
    """½(⟨T_r(Xa), Xb⟩ + ⟨Xa, T_r(Xb)⟩) by numpy's full SVD."""
    def trunc(X):
        U, s, Vt = np.linalg.svd(X, full_matrices=False)
        return (U[:, :r] * s[:r]) @ Vt[:r]
    return (float((trunc(Xa) * Xb).sum()) + float((Xa * trunc(Xb)).sum())) / 2


def _explicit_rank_cross_stats(sa, sb, total, nb, damping, r):
    """Rank-r ρ²× with the symmetric (Σ + λI)^{-1/2}: the truncation commutes with any whitening
    W, WᵀW = (Σ + λI)⁻¹ (they differ by a rotation), so it must equal finalize's Cholesky version."""
    d = total["S"].shape[0]
    sigma = total["S"] / total["N"]
    mu, V = np.linalg.eigh(sigma + damping * np.trace(sigma) / d * np.eye(d))
    W = (V / np.sqrt(mu)) @ V.T
    n = nb[0] + nb[1]
    return n * n * _explicit_rank_cross(W @ (sa["C"] / nb[0]), W @ (sb["C"] / nb[1]), r)


def test_cross_half_columns_match_explicit_float64():
    model = make_model("gpt2").double()
    batches = make_batches(n=5, seed=3)
    card = lp.profile(model, batches, rank=2, dtype=torch.float64, rank_cross=True, progress=False)
    assert card.meta["settings"]["rank_cross"] is True
    names = [m.name for m in card.modules]
    # Halves hold alternate batches: 0, 2, 4 and 1, 3.
    a = reference_stats(model, batches[0::2], names)
    b = reference_stats(model, batches[1::2], names)
    tot = reference_stats(model, batches, names)
    for row in card.modules:
        rho_x, grad_x = _explicit_cross(a[row.name], b[row.name], tot[row.name], (3, 2), 1e-3)
        assert math.isclose(row.resnorm2_x, rho_x, rel_tol=1e-8, abs_tol=1e-12), row.name
        assert math.isclose(row.grad_norm2_x, grad_x, rel_tol=1e-8, abs_tol=1e-12), row.name
        rank_x = _explicit_rank_cross_stats(a[row.name], b[row.name], tot[row.name], (3, 2), 1e-3, 2)
        assert math.isclose(row.resnorm2_rank_x, rank_x, rel_tol=1e-8, abs_tol=1e-12), row.name
        assert row.resnorm2_rank_x != pytest.approx(row.resnorm2_x, rel=1e-3)  # rank 2 truncates here
    for layer in card.layers:
        ms = [m for m in card.modules if m.layer == layer.layer]
        assert math.isclose(layer.resnorm2_x, sum(m.resnorm2_x for m in ms), rel_tol=1e-12)
        assert math.isclose(layer.resnorm2_rank_x, sum(m.resnorm2_rank_x for m in ms), rel_tol=1e-12)
        assert math.isclose(layer.noise_share, (layer.resnorm ** 2 - layer.resnorm2_x) / layer.resnorm ** 2,
                            rel_tol=1e-9)


def _pure_noise_halves(d_in: int, d_out: int, nb: int, rows: int) -> list[ModuleStats]:
    """Two halves of nb batches (alternating) whose gradients are zero-mean noise: no signal."""
    halves = [ModuleStats(0, torch.zeros(d_in, d_in, dtype=torch.float64),
                          torch.zeros(d_in, d_out, dtype=torch.float64), torch.zeros((), dtype=torch.float64))
              for _ in range(2)]
    for i in range(nb):
        X = torch.randn(rows, d_in, dtype=torch.float64)
        G = torch.randn(rows, d_out, dtype=torch.float64) / rows
        halves[i % 2].add_(ModuleStats(rows, X.t() @ X, X.t() @ G, (G * G).sum()))
    return halves


def test_cross_half_removes_the_noise_bias_that_naive_rho_carries():
    """Pure-noise gradients: naive ρ² is all bias, the cross-half estimate averages to zero."""
    torch.manual_seed(0)
    d_in, d_out, nb, rows = 6, 5, 8, 64
    naive, cross = [], []
    from layerprof.stats.finalize import cross_half_columns
    from layerprof.stats.solve import SolveCache

    for trial in range(200):
        halves = _pure_noise_halves(d_in, d_out, nb, rows)
        total = halves[0] + halves[1]
        cache = SolveCache(1e-3)
        out = cross_half_columns(total, *halves, (nb // 2, nb // 2), damping=1e-3, cache=cache)
        sigma = total.S / total.N
        P = torch.linalg.inv(sigma + 1e-3 * torch.trace(sigma) / d_in * torch.eye(d_in, dtype=torch.float64))
        naive.append(float(torch.trace(total.C.t() @ P @ total.C)))
        cross.append(out["resnorm2_x"])
    naive, cross = np.array(naive), np.array(cross)
    # The naive mean is positive by construction; the cross-half mean is within 4 standard
    # errors of zero (a test that a biased estimator fails: its mean is ~20 SE away).
    assert naive.mean() > 0
    assert abs(cross.mean()) < 4 * cross.std(ddof=1) / math.sqrt(len(cross))
    assert abs(naive.mean()) > 10 * naive.std(ddof=1) / math.sqrt(len(naive))


def test_rank_cross_is_computed_when_asked_or_when_the_score_needs_it():
    model = make_model("gpt2")
    batches = make_batches(n=4, seed=2)
    plain = lp.profile(model, batches, rank=2, score="resnorm2_rank_over_noise", progress=False)
    assert plain.meta["settings"]["rank_cross"] is False
    assert all(m.resnorm2_rank_x is None for m in plain.modules) and all(l.resnorm2_rank_x is None for l in plain.layers)
    scored = lp.profile(model, batches, rank=2, progress=False)  # the default score needs it
    assert scored.meta["settings"]["rank_cross"] is True
    assert scored.meta["settings"]["score"] == DEFAULT_SCORE
    with pytest.raises(lp.ProfileError, match="rank_cross=False.*resnorm2_rank_over_noise"):
        lp.profile(model, batches, rank=2, rank_cross=False, progress=False)
    for l in scored.layers:
        assert l.score == pytest.approx(l.resnorm2_rank_x / l.noise_amp, rel=1e-12)
    # The report's noise table shows it beside ρ(r)² only where the card has it.
    assert "| ρ(r)²× |" in scored.to_markdown() and "ρ(r)²×" not in plain.to_markdown()
    # The card round-trips the column through its file schema.
    again = lp.LayerCard.from_dict(scored.to_dict())
    assert [l.resnorm2_rank_x for l in again.layers] == [l.resnorm2_rank_x for l in scored.layers]


@pytest.mark.parametrize("shape", [(40, 70), (70, 40)])
@pytest.mark.parametrize("route", ["lanczos", "exact"])
def test_rank_cross_matches_numpy_svd(monkeypatch, shape, route):
    """Both orientations (the short side carries the Gram); the CPU's subspace routes: ARPACK's Lanczos
    and, where its check fails, LAPACK's exact pairs (the GPU's block Krylov: test_krylov_ritz_*)."""
    import layerprof.stats.spectra as fin
    from layerprof.stats import linalg

    if route == "exact":
        monkeypatch.setattr(linalg, "LANCZOS_TOL", 0.0)  # no residual passes: the dsyevr path runs
    gen = np.random.default_rng(1)
    m, n = shape
    # A shared low-rank signal with a decaying spectrum, plus independent noise per half.
    signal = (gen.standard_normal((m, 6)) * np.array([9.0, 7, 5, 4, 3, 2])) @ gen.standard_normal((6, n))
    Xa = signal + 0.3 * gen.standard_normal((m, n))
    Xb = signal + 0.3 * gen.standard_normal((m, n))
    for r in (1, 3, 5):
        got = fin.rank_cross(torch.from_numpy(Xa), torch.from_numpy(Xb), r)
        assert got == pytest.approx(_explicit_rank_cross(Xa, Xb, r), rel=1e-9)
    # A rank at or above the short side keeps everything: the full cross term.
    assert fin.rank_cross(torch.from_numpy(Xa), torch.from_numpy(Xb), min(shape)) == pytest.approx(float((Xa * Xb).sum()))


def test_krylov_ritz_matches_svd_where_it_certifies_and_declines_otherwise():
    """The GPU's route for Gram matrices above EXACT_SPECTRUM_MAX (GEMMs only), run here on CPU tensors:
    a certified estimate equals the SVD's leading pairs; a flat spectrum it cannot resolve in its four
    blocks returns None, which sends finalize to the exact path."""
    import layerprof.stats.spectra as fin

    gen = np.random.default_rng(2)
    m, n = 90, 200
    U0 = np.linalg.qr(gen.standard_normal((m, m)))[0]
    V0 = np.linalg.qr(gen.standard_normal((n, m)))[0]
    s = np.concatenate([[40.0, 30, 20, 10], 1e-3 * np.ones(m - 4)])  # four isolated values, a flat tail
    A = torch.from_numpy(U0 @ np.diag(s) @ V0.T)
    ritz = fin._krylov_ritz(A, 4)
    assert ritz is not None
    theta, U = ritz
    np.testing.assert_allclose(theta.numpy(), s[:4] ** 2, rtol=1e-10)
    np.testing.assert_allclose((U @ U.t()).numpy(), U0[:, :4] @ U0[:, :4].T, atol=1e-9)
    flat = torch.from_numpy(gen.standard_normal((m, n)))
    assert fin._krylov_ritz(flat, 8) is None


def test_leading_sv2_is_exact_on_the_cpu_at_any_size(monkeypatch):
    """Above EXACT_SPECTRUM_MAX the CPU still takes the exact Gram route (the block Krylov is the GPU's):
    the values are numpy's SVD's, and _krylov_ritz is never called."""
    import layerprof.stats.spectra as fin

    monkeypatch.setattr(fin, "EXACT_SPECTRUM_MAX", 8)
    monkeypatch.setattr(fin, "_krylov_ritz", lambda A, k: pytest.fail("block Krylov on the CPU"))
    gen = np.random.default_rng(4)
    Y = torch.from_numpy(gen.standard_normal((150, 60)) * np.linspace(0.1, 3.0, 60))
    ref = np.linalg.svd(Y.numpy(), compute_uv=False)[:12] ** 2
    np.testing.assert_allclose(fin._leading_sv2(Y, 12).numpy(), ref, rtol=1e-11)
    A = torch.from_numpy(gen.standard_normal((60, 150)))
    assert fin._leading_subspace(A, 4).shape == (60, 4)  # the subspaces: ARPACK / LAPACK, no Krylov either


def test_rank_cross_removes_the_noise_bias_of_rank_r_rho():
    """Pure noise: the naive rank-r ρ² (the default score's numerator) is all bias, its cross-half
    counterpart averages to zero."""
    from layerprof.stats.finalize import cross_half_columns
    from layerprof.stats.solve import SolveCache

    torch.manual_seed(1)
    d_in, d_out, nb, rows, r = 6, 5, 8, 64, 2
    naive, cross = [], []
    for trial in range(200):
        halves = _pure_noise_halves(d_in, d_out, nb, rows)
        total = halves[0] + halves[1]
        out = cross_half_columns(total, *halves, (nb // 2, nb // 2), damping=1e-3, cache=SolveCache(1e-3), rank=r)
        sigma = total.S / total.N
        P = torch.linalg.inv(sigma + 1e-3 * torch.trace(sigma) / d_in * torch.eye(d_in, dtype=torch.float64))
        naive.append(float(torch.linalg.eigvalsh(total.C.t() @ P @ total.C)[-r:].sum()))
        cross.append(out["resnorm2_rank_x"])
    naive, cross = np.array(naive), np.array(cross)
    assert abs(cross.mean()) < 4 * cross.std(ddof=1) / math.sqrt(len(cross))
    assert naive.mean() > 10 * naive.std(ddof=1) / math.sqrt(len(naive))


def test_noise_columns_batches_to_halve():
    # signal 1, noise 3 at 10 batches: share 0.75; at c·10 batches the share is 3 / (c + 3), halved at c = 5.
    out = noise_columns(4.0, 1.0, 10)
    assert out["noise_share"] == pytest.approx(0.75)
    assert out["batches_to_halve_noise"] == 50
    assert 3 / (5 + 3) == pytest.approx(0.75 / 2)
    assert noise_columns(4.0, -1.0, 10)["batches_to_halve_noise"] is None  # no signal left to keep


def _twin_run(G, sigma, kappa, budget, seed):
    """ΔW formed explicitly, gradients by autograd, the same AdamW: the simulation's reference."""
    d_in, d_out = G.shape
    gen = torch.Generator().manual_seed(seed)
    A = ((torch.rand(budget.r, d_in, generator=gen, dtype=torch.float64) * 2 - 1) / math.sqrt(d_in)).requires_grad_()
    B = torch.zeros(d_out, budget.r, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.AdamW([A, B], lr=budget.lr, betas=budget.betas, eps=budget.eps, weight_decay=budget.weight_decay)
    for _ in range(budget.steps):
        dW = budget.scale * B @ A
        loss = (G.t() * dW).sum() + 0.5 * kappa * torch.trace(dW @ sigma @ dW.t())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return A.detach(), B.detach()


@pytest.mark.parametrize("kappa,wd", [(0.0, 0.0), (0.7, 0.0), (2.5, 0.1)])
def test_simulated_adam_matches_an_explicit_autograd_twin(kappa, wd):
    torch.manual_seed(1)
    d_in, d_out = 7, 5
    X = torch.randn(40, d_in, dtype=torch.float64)
    sigma = X.t() @ X / 40
    G = torch.randn(d_in, d_out, dtype=torch.float64)
    budget = TrainingBudget(steps=9, lr=3e-2, r=3, lora_alpha=5, weight_decay=wd)
    A, B = _run_adam(G, sigma, kappa, 0.0, budget, seed=4)
    A2, B2 = _twin_run(G, sigma, kappa, budget, seed=4)
    assert torch.allclose(A, A2, rtol=1e-10, atol=1e-12) and torch.allclose(B, B2, rtol=1e-10, atol=1e-12)
    dW = budget.scale * B2 @ A2
    want = float((G.t() * dW).sum() + 0.5 * kappa * torch.trace(dW @ sigma @ dW.t()))
    assert _local_loss((A, B), G, sigma, kappa, budget.scale) == pytest.approx(want, rel=1e-10)


def _half(C, S, N):
    return ModuleStats(N, S, C, torch.zeros((), dtype=torch.float64))


def _local_problem(d_in=6, d_out=4, N=200):
    """A module's statistics with a known answer: S of N Gaussian rows, a Gaussian gradient G."""
    torch.manual_seed(2)
    X = torch.randn(N, d_in, dtype=torch.float64)
    return X.t() @ X, torch.randn(d_in, d_out, dtype=torch.float64), N


def test_simulated_gain_is_bounded_by_the_quadratic_optimum_and_ranks_signal():
    S, G, N = _local_problem()
    budget = TrainingBudget(steps=200, lr=5e-2, r=4, lora_alpha=8)
    kappa = 1.5
    gain = simulate_module(_half(G, S, N), _half(G, S, N), (1, 1), kappa, budget, calib_rows_per_batch=N)
    # Best possible decrease of ⟨Gᵀ, ΔW⟩ + ½κ tr(ΔW Σ ΔWᵀ): ½ tr(Gᵀ Σ⁻¹ G) / κ.
    bound = 0.5 * float(torch.trace(G.t() @ torch.linalg.solve(S / N, G))) / kappa
    assert 0 < gain <= bound * (1 + 1e-9)
    assert gain > 0.5 * bound  # 200 Adam steps at rank ≥ d_out get most of it
    # Halves that disagree (pure noise) predict no gain; a stronger signal predicts more.
    noise = simulate_module(_half(G, S, N), _half(-G, S, N), (1, 1), kappa, budget, calib_rows_per_batch=N)
    strong = simulate_module(_half(2 * G, S, N), _half(2 * G, S, N), (1, 1), kappa, budget, calib_rows_per_batch=N)
    assert noise < 0 < gain < strong


def test_curvature_of_a_linear_layer_under_mse_is_two_over_d_out():
    torch.manual_seed(3)
    lin = nn.Linear(5, 3, bias=False).double()
    X = torch.randn(64, 5, dtype=torch.float64)
    Y = torch.randn(64, 3, dtype=torch.float64)
    before = lin.weight.detach().clone()
    D = {"lin": torch.randn(3, 5, dtype=torch.float64)}
    sigmas = {"lin": X.t() @ X / 64}
    model = nn.Sequential()
    model.add_module("lin", lin)
    loss_of = lambda m, _: float(nn.functional.mse_loss(m(X), Y).detach())  # noqa: E731
    measured = curvature(model, [None], {0: ["lin"]}, D, sigmas, loss_of, lambda m: m.weight)
    assert measured.kappa[0] == pytest.approx(2 / 3, rel=1e-6)
    assert measured.median_layers == [] and measured.evaluations == 3
    assert torch.equal(lin.weight, before)  # restored bitwise


def test_curvature_retries_larger_steps_then_gives_a_concave_layer_the_median():
    # L = Σ_i c_i ‖W_i − W_i⁰‖²: along D the second difference is 2 c_i ε² ‖D‖², so κ_i = 2 c_i
    # (Σ = I, tr(D Σ Dᵀ) = ‖D‖²). Layer 2 is concave (c = −1): no ε gives a positive estimate.
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(2, 2, bias=False).double() for _ in range(3)])
    start = [m.weight.detach().clone() for m in model]
    c = [1.0, 3.0, -1.0]
    loss_of = lambda m, _: float(sum(ci * ((mi.weight - w0) ** 2).sum() for ci, mi, w0 in zip(c, m, start)))  # noqa: E731
    D = {str(i): torch.ones(2, 2, dtype=torch.float64) for i in range(3)}
    sigmas = {str(i): torch.eye(2, dtype=torch.float64) for i in range(3)}
    measured = curvature(model, [None], {i: [str(i)] for i in range(3)}, D, sigmas, loss_of, lambda m: m.weight)
    assert measured.kappa[0] == pytest.approx(2.0, rel=1e-6)
    assert measured.kappa[1] == pytest.approx(6.0, rel=1e-6)
    assert measured.median_layers == [2] and measured.kappa[2] == pytest.approx(4.0, rel=1e-6)
    assert measured.evaluations == 1 + 2 + 2 + 2 * 3  # base, one try each for 0 and 1, every scale for 2
    assert all(torch.equal(m.weight, w0) for m, w0 in zip(model, start))


def test_budget_validation_names_the_field():
    with pytest.raises(BudgetError, match="steps"):
        TrainingBudget(steps=0)
    with pytest.raises(BudgetError, match="lr"):
        TrainingBudget(lr=float("nan"))
    with pytest.raises(BudgetError, match="r must"):
        TrainingBudget(r=True)
    with pytest.raises(BudgetError, match="betas"):
        TrainingBudget(betas=(0.9, 1.0))
    b = TrainingBudget(steps=10, warmup_fraction=0.25)
    assert b.warmup_steps == 3 and TrainingBudget.from_dict(b.to_dict()) == b


def test_profile_with_budget_fills_the_columns_and_leaves_the_model_untouched():
    model = make_model("gpt2")
    batches = make_batches(n=4, seed=5)
    snap = snapshot(model)
    card = lp.profile(model, batches, rank=2, progress=False, budget=BUDGET, score="sim_gain")
    assert_untouched(model, snap)
    assert card.meta["budget"] == BUDGET.to_dict() and card.meta["settings"]["score"] == "sim_gain"
    assert card.meta["warmup"]["steps"] == 1 and card.meta["warmup"]["passes"] == 2
    for l in card.layers:
        ms = [m for m in card.modules if m.layer == l.layer]
        assert l.score == l.sim_gain == pytest.approx(sum(m.sim_gain for m in ms))
        assert l.lca_gain == pytest.approx(sum(m.lca_gain for m in ms))
        assert l.kappa is not None and l.kappa >= 0
    assert sorted(l.rank for l in card.layers) == list(range(1, len(card.layers) + 1))
    assert card.ranking()[0] == max(card.layers, key=lambda l: l.sim_gain).layer
    plan = card.place(layers=1)
    assert plan.layers == [card.ranking()[0]]
    again = lp.LayerCard.from_dict(card.to_dict())
    assert [l.sim_gain for l in again.layers] == [l.sim_gain for l in card.layers]


def test_budget_scores_need_a_budget():
    model = make_model("gpt2")
    with pytest.raises(lp.ProfileError, match="budget="):
        lp.profile(model, make_batches(n=2), progress=False, score="lca_gain")
    with pytest.raises(lp.ProfileError, match="needs budget"):
        lp.profile(model, make_batches(n=2), progress=False, predict=("warmup",))
    with pytest.raises(lp.ProfileError, match="lp.profile"):
        lp.Profiler(model, score="sim_gain")


def test_warmup_adapters_train_exactly_like_peft_lora():
    """Hook adapters vs PEFT's LoRA layers from the same A₀: the same losses and factors, step for step."""
    from peft import LoraConfig, get_peft_model

    from layerprof.model.targets import modules_by_name
    from layerprof.predict.warmup import warmup_lca

    batches = make_batches(n=4, seed=6)
    model = make_model("gpt2")
    names = ["transformer.h.1.attn.c_attn", "transformer.h.2.mlp.c_fc"]
    mods = modules_by_name(model, names)
    dims = {n: (m.weight.shape[0], m.weight.shape[1]) for n, m in mods.items()}  # Conv1D: d_in × d_out
    budget = TrainingBudget(steps=30, lr=1e-2, r=2, lora_alpha=6, warmup_fraction=0.1)
    for p in model.parameters():
        p.requires_grad_(False)
    out = warmup_lca(model, batches, mods, dims, budget, lambda m, b: m(**b).loss, seed=7)
    assert out["steps"] == 3 and set(out["gains"]) == set(names)

    # The same run through PEFT, its lora_A set to the warm-up's initial A (same generator draws).
    peft_model = get_peft_model(make_model("gpt2"), LoraConfig(r=2, lora_alpha=6, target_modules=names,
                                                                fan_in_fan_out=True, lora_dropout=0.0))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for n in names:
            layer = dict(peft_model.base_model.model.named_modules())[n]
            d_in = dims[n][0]
            layer.lora_A["default"].weight.copy_((torch.rand(2, d_in, generator=gen) * 2 - 1) / math.sqrt(d_in))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    peft_model.eval()
    losses = []
    for t in range(4):
        opt.zero_grad()
        loss = peft_model(**batches[t]).loss
        loss.backward()
        losses.append(float(loss))
        if t < 3:
            opt.step()
    assert out["loss_first"] == pytest.approx(losses[0], rel=1e-5)
    assert out["loss_last"] == pytest.approx(losses[-1], rel=1e-5)
    assert losses[-1] != losses[0]  # the warm-up did train


def test_shrunk_drift_follows_only_the_signal_the_halves_share():
    """drift="shrunk": s·G_a with s = clamp(⟨G_a, G_b⟩/‖G_a‖², 0, 1). Agreeing halves: s = 1, the card's
    simulation exactly; opposite halves (pure noise): s = 0, no drift, so no fitted noise to lose on."""
    from layerprof.predict.simulate import simulated_gains

    S, G, N = _local_problem()
    budget = TrainingBudget(steps=50, lr=5e-2, r=4, lora_alpha=8)
    kw = dict(nb=(1, 1), kappa={"m": 1.5}, budget=budget, calib_rows_per_batch=N)
    same = {"m": (_half(G, S, N), _half(G, S, N))}
    assert simulated_gains(same, drift="shrunk", **kw) == simulated_gains(same, drift="half", **kw)
    opposite = {"m": (_half(G, S, N), _half(-G, S, N))}
    half, shrunk = simulated_gains(opposite, drift="half", **kw)["m"], simulated_gains(opposite, drift="shrunk", **kw)["m"]
    assert half < 0 and shrunk > half  # the card's drift fits the noise and is penalized for it
    with pytest.raises(ValueError, match="drift must be one of"):
        simulated_gains(same, drift="both", **kw)


def test_curvature_replays_upstream_modules_and_gives_bitwise_the_same_kappa(monkeypatch):
    # Blocks wide enough (256² weights ≥ REPLAY_MIN_WEIGHTS) for Replay to answer from its records: every
    # perturbed forward computes only from the perturbed layer up, and the losses, hence κ, are identical.
    from transformers import LlamaConfig, LlamaForCausalLM

    import layerprof.predict.replay as replay

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=256, intermediate_size=512, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    batch = {"input_ids": torch.randint(0, 97, (2, 12))}
    batch["labels"] = batch["input_ids"]
    layer_modules = {l: [f"model.layers.{l}.mlp.{k}" for k in ("gate_proj", "up_proj", "down_proj")] for l in range(3)}
    modules = dict(model.named_modules())
    D = {n: torch.randn_like(modules[n].weight, dtype=torch.float64) for ns in layer_modules.values() for n in ns}
    sigmas = {n: torch.eye(modules[n].weight.shape[1], dtype=torch.float64) for n in D}

    def loss_of(m, batches):
        with torch.no_grad():
            return float(m(**batches[0]).loss)

    replays = []

    class Spy(replay.Replay):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            replays.append(self)

    monkeypatch.setattr(replay, "Replay", Spy)
    plain = curvature(model, [batch], layer_modules, D, sigmas, loss_of, lambda m: m.weight, replay=False)
    fast = curvature(model, [batch], layer_modules, D, sigmas, loss_of, lambda m: m.weight, replay=True)
    assert fast.kappa == plain.kappa and fast.evaluations == plain.evaluations
    assert replays[0].skipped == 0 and replays[1].skipped > 0

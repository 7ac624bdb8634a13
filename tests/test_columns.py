"""Every card column against an independent float64 computation (tests/reference.py).

Two regimes:
* float64 model and float64 statistics: layerprof and the reference then differ only in
  summation order and in which (exact-in-theory) linear algebra they use, so columns
  agree to ~cond·1e-13; we allow 1e-8 relative (cond here stays below 1e5, checked).
* float32 model and statistics (the default): the fp32 card's error against the fp64
  reference must be at most 2× the error of plain fp32 PyTorch doing the same sums
  (torch GEMMs X.T @ X and X.T @ G of the rows the sweep captured, summed in fp32; the worst
  of twelve summation orders), finalized in fp64 — per column, worst module against worst module.
"""
import math

import pytest
import torch

import layerprof as lp
from layerprof.card.scores import DEFAULT_SCORE
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
        # The default score (the placement study's round-9 choice) is the layer's cross-half rank-r ρ² (the
        # sum of its modules') over its noise amp (the mean of its modules'); the cross-half ρ² is the sum of
        # its modules'.
        assert card.meta["settings"]["score"] == DEFAULT_SCORE
        noise = sum(m.noise_amp for m in ms) / len(ms)
        assert math.isclose(l.score, sum(m.resnorm2_rank_x for m in ms) / noise, rel_tol=1e-12)
        assert math.isclose(l.resnorm2_x, sum(m.resnorm2_x for m in ms), rel_tol=1e-12)
        assert math.isclose(l.gain_share, r2 / total, rel_tol=1e-12)
        assert math.isclose(l.predicted_gain, r2 / 2, rel_tol=1e-12)
        assert math.isclose(l.grad_norm ** 2, sum(m.grad_norm ** 2 for m in ms), rel_tol=1e-12)
        for h, key in ((0, "resnorm_a"), (1, "resnorm_b")):
            # Each half's C against the whole sweep's Σ (docs/method.md §3: the halves differ in C).
            r2h = 0.0
            for m in ms:
                s, f = halves[h][m.name], full[m.name]
                r2h += reference_columns(f["N"], f["S"], s["C"], s["q"], weight_of(model, m.name), 4, 1e-3)[
                    "resnorm"] ** 2
            assert math.isclose(getattr(l, key), math.sqrt(r2h), rel_tol=1e-8)
    # Kendall τ of the halves, computed independently with scipy.
    from scipy.stats import kendalltau
    tau = kendalltau([l.resnorm_a for l in card.layers], [l.resnorm_b for l in card.layers]).statistic
    assert math.isclose(card.meta["stability"]["kendall_tau"], tau, rel_tol=1e-12)
    assert card.meta["stability"]["batches_per_half"] == [2, 2]


CARD_BACKENDS = [b for b in ("torch", "cpp", "triton") if b == "torch" or (
    lp.backends()[b].available and "cpu" in lp.backends()[b].devices)]


def _captured_rows(model, batches, backend):
    """{module: [(X, G) of each call, masked rows only]} as the sweep's accumulator received them."""
    from layerprof.stats.accumulate import Accumulator

    rows: dict = {}
    original = Accumulator.update

    def spy(self, name, x, g, mask, n, input_id=None, y2=None):
        xs, gs = (x, g) if mask is None else (x[mask], g[mask])
        rows.setdefault(name, []).append((xs.detach().clone(), gs.detach().clone()))
        return original(self, name, x, g, mask, n, input_id, y2)

    Accumulator.update = spy
    try:
        lp.profile(model, batches, rank=4, progress=False, backend=backend)
    finally:
        Accumulator.update = original
    return rows


def _sums(calls, order: str) -> dict:
    """N, S, C, q of the captured rows: exactly (float64) or as plain fp32 torch sums them."""
    if order == "float64":
        X = torch.cat([x for x, _ in calls]).double()
        G = torch.cat([g for _, g in calls]).double()
        return {"N": X.shape[0], "S": (X.T @ X).numpy(), "C": (X.T @ G).numpy(), "q": float((G * G).sum())}
    d_in, d_out = calls[0][0].shape[1], calls[0][1].shape[1]
    S, C, q, N = torch.zeros(d_in, d_in), torch.zeros(d_in, d_out), torch.zeros(()), 0
    for x, g in calls:
        x, g = x.float(), g.float()
        N += x.shape[0]
        if order == "reverse":
            x, g = x.flip(0), g.flip(0)
        if order.startswith("shuffle"):
            perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(int(order[7:])))
            x, g = x[perm], g[perm]
        if order == "addmm":  # accumulated inside the GEMM, as S.addmm_(x.t(), x)
            S, C = torch.addmm(S, x.T, x), torch.addmm(C, x.T, g)
        else:
            step = 32 if order == "tiles" else max(1, x.shape[0])  # tiles: blocks of rows, as a tiled kernel
            for i in range(0, x.shape[0], step):
                S, C = S + x[i:i + step].T @ x[i:i + step], C + x[i:i + step].T @ g[i:i + step]
        q = q + (g * g).sum()
    return {"N": N, "S": S.double().numpy(), "C": C.double().numpy(), "q": float(q)}


@pytest.mark.parametrize("backend", CARD_BACKENDS)
@pytest.mark.parametrize("arch", ["gpt2", "qwen3"])
def test_columns_float32_within_twice_plain_torch_error(arch, backend):
    # Run for every backend available here: a whole card from each one meets the same bound.
    model = make_model(arch)
    batches = make_batches()
    card = lp.profile(model, batches, rank=4, progress=False, backend=backend)
    assert card.meta["settings"]["backend"] == backend
    # The rows the sweep itself fed to the accumulator, so that the comparison isolates summation
    # and finalize (a reference forward may round activations differently: attention kernels).
    rows = _captured_rows(model, batches, backend)
    exact = {n: _sums(r, "float64") for n, r in rows.items()}
    # Plain fp32 PyTorch on the same rows: torch GEMMs summed in fp32 (as flash-attention's tests
    # hold a kernel to the plain implementation's own error). fp32 rounding depends on the
    # summation order.
    # Columns amplified by cond(Σ) (cond itself) swing by 2× between two equally good roundings,
    # so the plain error is the worst over those four orders and eight shuffles of the rows.
    orders = ["forward", "reverse", "tiles", "addmm"] + [f"shuffle{i}" for i in range(8)]
    plains = [{n: _sums(r, order) for n, r in rows.items()} for order in orders]
    worst, worst_plain = {c: 0.0 for c in COLUMNS}, {c: 0.0 for c in COLUMNS}
    for row in card.modules:
        s = exact[row.name]
        w = weight_of(model, row.name)
        ref = reference_columns(s["N"], s["S"], s["C"], s["q"], w, 4, 1e-3)
        for plain in plains:
            p = plain[row.name]
            pl = reference_columns(p["N"], p["S"], p["C"], p["q"], w, 4, 1e-3)
            for col in COLUMNS:
                worst_plain[col] = max(worst_plain[col], abs(pl[col] - ref[col]) / max(abs(ref[col]), 1e-300))
        for col in COLUMNS:
            worst[col] = max(worst[col], abs(getattr(row, col) - ref[col]) / max(abs(ref[col]), 1e-300))
    for col in COLUMNS:
        # Per column, the worst relative error over the card's modules: at most twice plain fp32's,
        # plus 4 units of fp32 rounding (so that a column plain fp32 happens to get exact still
        # allows the one rounding of the result).
        assert worst[col] <= 2 * worst_plain[col] + 4 * 2.0 ** -24, (col, worst[col], worst_plain[col])


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
                                   "resnorm2_rank_x_over_noise", "energy"])
def test_score_option_sets_the_layer_score(score):
    card = lp.profile(make_model("llama"), make_batches(), rank=4, progress=False, score=score)
    want = {"resnorm2": lambda l: l.resnorm ** 2, "resnorm2_rank": lambda l: l.resnorm_rank ** 2,
            "resnorm2_over_noise": lambda l: l.resnorm ** 2 / l.noise_amp,
            "resnorm2_rank_over_noise": lambda l: l.resnorm_rank ** 2 / l.noise_amp,
            "resnorm2_rank_x_over_noise": lambda l: l.resnorm2_rank_x / l.noise_amp, "energy": lambda l: l.energy}[score]
    for l in card.layers:
        assert l.score == pytest.approx(want(l), rel=1e-12)
        assert l.gain_share == pytest.approx(l.resnorm ** 2 / sum(x.resnorm ** 2 for x in card.layers), rel=1e-12)
    assert card.ranking() == sorted((l.layer for l in card.layers), key=lambda i: -want(card.layer(i)))
    assert card.place(layers=1).layers == [card.ranking()[0]]
    assert card.meta["settings"]["score"] == score


def test_unknown_score_is_refused():
    with pytest.raises(lp.ProfileError, match="score must be one of"):
        lp.profile(make_model("llama"), make_batches(), rank=4, progress=False, score="vibes")


def test_finalize_factors_each_input_once_and_holds_one_at_a_time(monkeypatch):
    # Llama: q/k/v read one input and gate/up another, so 4 distinct inputs per layer. Each is
    # factored once (shared by its modules) and released after its last module: finalize never
    # holds two inputs' float64 Σ and Cholesky factor at once (at 8B scale: tens of GB).
    from layerprof.stats import solve as fin

    made, held = [], []
    real_init, real_get = fin.Solve.__init__, fin.SolveCache.get

    def init(self, *a, **kw):
        made.append(self)
        real_init(self, *a, **kw)

    def get(self, *a, **kw):
        out = real_get(self, *a, **kw)
        held.append(self.held())
        return out

    monkeypatch.setattr(fin.Solve, "__init__", init)
    monkeypatch.setattr(fin.SolveCache, "get", get)
    model = make_model("llama")
    card = lp.profile(model, make_batches(n=4), rank=2, progress=False, coupling=False)
    layers = len(card.layers)
    assert len(card.modules) == 7 * layers
    assert len(made) == 4 * layers
    assert held and max(held) == 1  # the columns themselves are checked against the reference above

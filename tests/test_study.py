"""The placement study's protocol: baselines, resumable runs, intervals (no LoRA training here)."""
import numpy as np
import pytest

import layerprof as lp
from conftest import make_batches, make_model
from layerprof.place.selectors import depth_bins, middle_k, stratified_k, uniform_k
from layerprof.study.protocol import PLACEMENT_SCORES, Protocol, RunStore, placement_sets
from layerprof.study.statistics import bootstrap_spearman, seed_spread

pytestmark = pytest.mark.study


def test_uniform_and_middle_k():
    layers = list(range(16))
    assert uniform_k(layers, 4) == [2, 6, 10, 14]
    assert uniform_k(list(range(8)), 2) == [2, 6]
    assert uniform_k(list(range(6)), 1) == [3]
    assert middle_k(list(range(8)), 2) == [3, 4]
    assert middle_k(list(range(6)), 1) == [2]
    assert all(len(uniform_k(layers, k)) == k for k in range(1, 17))


def test_stratified_k_takes_the_best_layer_of_each_of_uniform_ks_bins():
    import random

    rng = random.Random(0)
    for L in range(1, 25):
        layers = list(range(10, 10 + L))  # block indices need not start at 0
        for k in range(1, L + 1):
            bins = depth_bins(layers, k)
            # k contiguous bins that cover the stack once, each holding uniform-k's pick for it.
            assert [l for b in bins for l in b] == layers and len(bins) == k and all(bins)
            assert all(c in b for c, b in zip(uniform_k(layers, k), bins))
            scores = {l: rng.random() for l in layers}
            picked = stratified_k(scores, layers, k)
            assert len(picked) == k and picked == sorted(picked)
            for p, b in zip(picked, bins):
                assert p in b and scores[p] == max(scores[l] for l in b)
    # A score that grows with depth picks each bin's deepest layer; ties go to the shallower.
    assert stratified_k({l: float(l) for l in range(12)}, list(range(12)), 3) == [3, 7, 11]
    assert stratified_k({l: 1.0 for l in range(8)}, list(range(8)), 2) == [0, 4]


def test_run_store_resumes_and_keys_by_layer_set(tmp_path):
    store = RunStore(tmp_path / "runs.json")
    store.put(60, [3, 1], 0, {"gain": 0.5, "step_seconds": 0.1})
    store.put(60, [1, 3], 1, {"gain": 0.7, "step_seconds": 0.1})
    assert store.gains(60, [1, 3], 2) == [0.5, 0.7]
    assert store.gains(60, [1, 3], 3) is None  # seed 2 not run yet
    again = RunStore(tmp_path / "runs.json")  # a restarted study sees what finished
    assert again.get(60, [3, 1], 0)["gain"] == 0.5 and again.get(300, [1, 3], 0) is None


def test_bootstrap_interval_contains_the_estimate_and_tightens_with_agreement():
    score = [1.0, 2.0, 3.0, 4.0, 5.0]
    exact = [[0.1, 0.1, 0.1], [0.2, 0.2, 0.2], [0.3, 0.3, 0.3], [0.4, 0.4, 0.4], [0.5, 0.5, 0.5]]
    assert bootstrap_spearman(score, exact) == (pytest.approx(1.0), pytest.approx(1.0), pytest.approx(1.0))
    rng = np.random.default_rng(0)
    noisy = [list(0.1 * (i + 1) + rng.normal(0, 0.2, 3)) for i in range(5)]
    rho, lo, hi = bootstrap_spearman(score, noisy)
    assert lo <= rho <= hi and hi - lo > 0.2
    spread, std = seed_spread(noisy)
    assert std == pytest.approx(np.sqrt(np.mean([np.var(g, ddof=1) for g in noisy])))
    assert spread == pytest.approx(max(map(np.mean, noisy)) - min(map(np.mean, noisy)))


def test_placement_sets_have_k_layers_and_every_baseline():
    model = make_model("gpt2")
    card = lp.profile(model, make_batches(n=4), rank=2, progress=False, coupling=True,
                      budget=dict(steps=4, lr=1e-2, r=2, lora_alpha=4))
    sets = placement_sets(card, 1, 3, PLACEMENT_SCORES)
    for name in ("first-k", "last-k", "uniform-k", "middle-k", "grad-norm top-k", "act-norm top-k", "nfn top-k",
                 "card simulated top-k", "card simulated coupled greedy", "card warm-up LCA top-k",
                 "card energy stratified-k", "random-k draw 2"):
        assert len(sets[name]) == 1, name
    assert sets["full"] == [0, 1, 2]
    # k = 1: one bin holding every layer, so stratified-k is the score's top-1.
    assert sets["card energy stratified-k"] == sets["card energy top-k"]
    cheap = sets["card simulated cost ≤ 0.6"]
    from layerprof.place.placement import card_cost_model

    assert card_cost_model(card).cost(cheap, card.rank).fraction <= 0.6 + 1e-12
    assert sets["card simulated top-k"] == [max(card.layers, key=lambda l: l.sim_gain).layer]


def test_protocol_restricts_the_scores_and_the_cost_cap():
    model = make_model("gpt2")
    card = lp.profile(model, make_batches(n=4), rank=2, progress=False, coupling=True)
    proto = Protocol(budgets=[4], scores=["energy", "resnorm2_rank_over_noise"], cost_cap=False)
    sets = placement_sets(card, 2, 1, proto.placement_scores(), proto.cost_cap)
    cards = {n for n in sets if n.startswith("card ")}
    assert cards == {f"card {s} {m}" for s in ("energy", "ρ(r)²/noise")
                     for m in ("top-k", "stratified-k", "coupled greedy")}
    # Two bins over three layers ([0], [1, 2]): layer 0 and the better of 1 and 2.
    strat = sets["card energy stratified-k"]
    energy = {l.layer: l.energy for l in card.layers}
    assert strat == [0, max((1, 2), key=lambda l: (energy[l], -l))]
    with pytest.raises(ValueError, match="unknown study score"):
        Protocol(budgets=[4], scores=["energy", "nope"])


def test_top_k_ranks_signed_scores_and_gain_ignores_negative_layers():
    model = make_model("gpt2")
    card = lp.profile(model, make_batches(n=4), rank=2, progress=False)
    from dataclasses import asdict

    rows = [asdict(l) for l in card.layers]
    for r, s in zip(rows, [-3.0, -1.0, 2.0]):
        r["score"] = s
    signed = lp.LayerCard(card.modules, rows, card.meta)
    assert signed.place(layers=2, spread=False).layers == [1, 2]  # -1 beats -3
    assert signed.place(layers=2, spread=False).predicted_gain_fraction == pytest.approx(1.0)  # only layer 2 counts


def test_protocol_validation():
    with pytest.raises(ValueError):
        Protocol(budgets=[])
    with pytest.raises(ValueError):
        Protocol(seeds=0)
    assert Protocol().config(300, 2).steps == 300


def test_shared_ranking_bound_holds_for_every_ranking_and_is_reached():
    from layerprof.study.statistics import shared_ranking_bound
    from layerprof.card.rankcorr import spearman

    rng = np.random.default_rng(0)
    for _ in range(3000):
        a, b, s1, s2 = (rng.permutation(8).astype(float) for _ in range(4))
        blind = min(spearman(s1, a), spearman(s1, b))
        assert blind <= shared_ranking_bound(spearman(a, b)) + 1e-12
        aware = min(spearman(s1, a), spearman(s2, b))
        assert aware <= shared_ranking_bound(spearman(a, b), spearman(s1, s2)) + 1e-12
    # Reached: a score equal to the measured ranking at both budgets, or halfway between them.
    a = np.arange(6.0)
    assert shared_ranking_bound(spearman(a, a)) == pytest.approx(1.0)
    assert shared_ranking_bound(-1.0) == pytest.approx(0.0, abs=1e-12)
    assert shared_ranking_bound(-1.0, -1.0) == pytest.approx(1.0)


def test_seed_ceiling_is_one_for_agreeing_seeds_and_falls_with_their_noise():
    from layerprof.study.statistics import seed_ceiling

    rng = np.random.default_rng(0)
    truth = np.arange(12.0)
    assert seed_ceiling([[t, t + 0.01, t - 0.01] for t in truth]) == pytest.approx(1.0)
    # Seeds that rank the layers independently of each other: no score can track their mean.
    unrelated = seed_ceiling([list(rng.normal(size=3)) for _ in truth])
    assert unrelated is None or unrelated < 0.7
    # Noise comparable to the spread: the ceiling lies strictly between, and more seeds raise it.
    noisy3 = [list(t + rng.normal(scale=3.0, size=3)) for t in truth]
    noisy6 = [g + list(t + rng.normal(scale=3.0, size=3)) for g, t in zip(noisy3, truth)]
    c3, c6 = seed_ceiling(noisy3), seed_ceiling(noisy6)
    assert 0.5 < c3 < 1.0 and c3 < c6 < 1.0
    assert seed_ceiling([[1.0], [2.0]]) is None  # one seed: nothing to compare

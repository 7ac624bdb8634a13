"""Placement: objectives against brute force over every subset, the cost model, the Pareto front."""
import itertools
import math

import numpy as np
import pytest

import layerprof as lp
from layerprof.card.cost import ADAPTER_OVERHEAD, CostModel, ModuleShape
from layerprof.place.placement import module_ranks


def synthetic_card(scores, d=16, rank=4, seed=0):
    """A card with given layer scores: one module per layer whose ρ² is the score."""
    rng = np.random.default_rng(seed)
    modules, layers = [], []
    for i, s in enumerate(scores):
        sv2 = sorted(rng.random(8) + 1e-3, reverse=True)
        sv2 = [v * s / sum(sv2) for v in sv2]
        modules.append(dict(name=f"model.layers.{i}.mlp", layer=i, kind="linear", d_in=d, d_out=d + i, rows=10,
                            resnorm=math.sqrt(s), resnorm_rank=math.sqrt(sum(sv2[:rank])),
                            rank_capture=sum(sv2[:rank]) / s, energy=1.0, cond=1.0, erank=1.0, noise_amp=1.0,
                            grad_norm=1.0 + i, act_norm=1.0, nfn=1.0, resid_explained=0.5,
                            lora_params=rank * (2 * d + i), sv2=sv2))
        layers.append(dict(layer=i, modules=1, resnorm=math.sqrt(s), resnorm_rank=0.0, rank_capture=0.0,
                           gain_share=s / sum(scores), predicted_gain=s / 2, score=s, energy=1.0, noise_amp=1.0,
                           grad_norm=1.0 + i, act_norm=1.0, nfn=1.0, lora_params=rank * (2 * d + i), cost=0.0,
                           resnorm_a=0.0, resnorm_b=0.0, rank=0))
    meta = {"settings": {"rank": rank}, "heads": [{"name": "lm_head", "d_in": d, "d_out": 50}]}
    return lp.LayerCard(modules, layers, meta)


SCORES = [5.0, 1.0, 3.0, 0.5, 2.0, 4.0, 0.1]


def _brute(card, feasible):
    model = CostModel([ModuleShape(m.name, m.layer, m.d_in, m.d_out) for m in card.modules], 2.0 * 16 * 50)
    total = sum(SCORES)
    for k in range(1, len(SCORES) + 1):
        for subset in itertools.combinations(range(len(SCORES)), k):
            c = model.cost(subset, card.rank)
            g = sum(SCORES[i] for i in subset) / total
            if feasible(subset, c, g):
                yield subset, c, g


def test_layers_k_is_top_k():
    card = synthetic_card(SCORES)
    assert card.place(layers=3).layers == [0, 2, 5]


def test_spread_places_stratified_k_on_the_score():
    card = synthetic_card(SCORES)  # 7 layers; k = 3 bins: [0, 1], [2, 3], [4, 5, 6]
    plan = card.place(layers=3, spread=True)
    assert plan.layers == [0, 2, 5]  # the best of each bin (here also the top-3)
    plan = card.place(layers=2, spread=True)  # bins [0, 1, 2], [3, 4, 5, 6]: top-2 would be [0, 5] too
    assert plan.layers == [0, 5]
    card = synthetic_card([5.0, 4.0, 3.0, 0.2, 0.1, 0.05, 0.3])
    assert card.place(layers=2, spread=False).layers == [0, 1]  # the plain top-k
    plan = card.place(layers=2, spread=True)
    assert plan.layers == [0, 6] and plan.modules == ["model.layers.0.mlp", "model.layers.6.mlp"]
    assert card.place(layers=2).layers == [0, 6]  # stratified-k is the default for layers=k on the score
    assert card.place(layers=2, by="energy").layers == card.place(layers=2, by="energy", spread=False).layers
    for bad in (dict(budget=0.7, spread=True), dict(layers=2, spread=True, coupled=True),
                dict(objective="cost", target_gain=0.5, spread=True)):
        with pytest.raises(lp.PlacementError, match="spread=True"):
            card.place(**bad)


@pytest.mark.parametrize("budget", [0.52, 0.55, 0.62, 0.7, 0.9, 1.0])
def test_budget_is_exact_against_brute_force(budget):
    card = synthetic_card(SCORES)
    plan = card.place(budget=budget)
    options = list(_brute(card, lambda s, c, g: c.fraction <= budget + 1e-12))
    best = max(g for _, _, g in options)
    assert math.isclose(plan.predicted_gain_fraction, best, rel_tol=1e-12)
    assert plan.cost <= budget + 1e-12


@pytest.mark.parametrize("target", [0.3, 0.6, 0.9, 1.0])
def test_cost_objective_is_exact_against_brute_force(target):
    card = synthetic_card(SCORES)
    plan = card.place(objective="cost", target_gain=target)
    options = list(_brute(card, lambda s, c, g: g >= target - 1e-12))
    cheapest = min(c.fraction for _, c, _ in options)
    assert math.isclose(plan.cost, cheapest, rel_tol=1e-12)
    assert plan.predicted_gain_fraction >= target - 1e-12


def test_params_budget_against_brute_force():
    card = synthetic_card(SCORES)
    limit = 3 * 4 * 40
    plan = card.place(params=limit)
    options = list(_brute(card, lambda s, c, g: c.adapter_params <= limit))
    assert math.isclose(plan.predicted_gain_fraction, max(g for _, _, g in options), rel_tol=1e-12)
    assert plan.cost_detail.adapter_params <= limit


def test_cost_model_backward_depth():
    card = synthetic_card([1.0] * 6)
    costs = [card.place(objective="gain", layers=1, by="grad_norm").cost]  # top layer by grad_norm = layer 5
    assert card.place(layers=1, by="grad_norm").layers == [5]
    single = [CostModel([ModuleShape(m.name, m.layer, m.d_in, m.d_out) for m in card.modules], 1600.0)
              .cost([i], 4).fraction for i in range(6)]
    assert all(a > b for a, b in zip(single, single[1:])), "adapting a lower layer must cost more"
    assert math.isclose(card.place(budget=1.0).cost, 1.0)
    # Adapting only the top layer: forward + head + top layer backward + its adapter, no deeper backward.
    m = CostModel([ModuleShape(x.name, x.layer, x.d_in, x.d_out) for x in card.modules], 1600.0)
    fwd = sum(2 * x.d_in * x.d_out for x in card.modules) + 1600.0
    top = card.modules[-1]
    step = fwd + 1600.0 + 2 * top.d_in * top.d_out + (6 * 4 + ADAPTER_OVERHEAD) * (top.d_in + top.d_out)
    assert math.isclose(m.cost([5], 4).train_flops_per_row, step)
    assert costs[0] == pytest.approx(single[5])


def test_cost_model_attention_term_by_hand():
    """4·T·w FLOPs per row and layer forward, twice that backward from the lowest adapted layer up."""
    from layerprof.card.cost import cost_model

    card = synthetic_card([1.0] * 4)
    rows = [dict(name=m.name, layer=m.layer, d_in=m.d_in, d_out=m.d_out) for m in card.modules]
    heads = [{"d_in": 16, "d_out": 50}]
    plain = cost_model(rows, heads)
    attn = cost_model(rows, heads, {"width": 12, "seq_len": 10.0})
    a = 4.0 * 12 * 10.0
    for layers in ([3], [1, 3], [0], [0, 1, 2, 3]):
        extra = 4 * a + 2 * a * (4 - min(layers))  # every layer's forward; the backward from the lowest up
        assert attn.step_flops(layers, 4) == pytest.approx(plain.step_flops(layers, 4) + extra, rel=1e-15)
    assert attn.backward_flops_each([0, 2]) == [attn.backward_flops(0), attn.backward_flops(2)]
    # It weighs the always-paid forward and the backward depth: a top layer costs more of a full step.
    assert attn.cost([3], 4).fraction > plain.cost([3], 4).fraction
    with pytest.raises(ValueError, match="attention"):
        CostModel([], attention_flops_per_row=-1.0)


def test_attention_shape_from_the_config_or_none():
    from torch import nn
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    from layerprof.card.cost import attention_shape

    llama = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                         vocab_size=40))
    assert attention_shape(llama, 24.0) == {"width": 64, "seq_len": 24.0}  # heads × head_dim, not hidden
    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                                vocab_size=40))
    wrapper = nn.Sequential(nn.Identity(), bert)  # the encoder's config, one module down
    assert attention_shape(wrapper, 8.0) == {"width": 32, "seq_len": 8.0}
    assert attention_shape(nn.Sequential(nn.Linear(4, 4)), 8.0) is None  # no transformers config
    assert attention_shape(llama, None) is None  # no sequence length (inputs were not n × T)


def test_card_records_attention_and_old_cards_cost_without_it(tmp_path):
    import json

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=64, n_positions=32))
    short = [{"input_ids": torch.randint(0, 64, (2, 8)), "labels": torch.randint(0, 64, (2, 8))}]
    long = [{"input_ids": torch.randint(0, 64, (1, 24)), "labels": torch.randint(0, 64, (1, 24))}]
    card = lp.profile(model, short + long, progress=False, coupling=False)
    # Positions-weighted: 16 positions of length 8, 24 of length 24.
    assert card.meta["attention"] == {"width": 32, "seq_len": pytest.approx((16 * 8 + 24 * 24) / 40)}
    path = tmp_path / "card.json"
    card.save(path)
    data = json.loads(path.read_text())
    assert lp.LayerCard.load(path).meta["attention"]["width"] == 32
    del data["meta"]["attention"]  # a card written before the term existed
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    from layerprof.place.placement import card_cost_model

    top = [card.layers[-1].layer]
    with_term, without = card_cost_model(card), card_cost_model(lp.LayerCard.load(old))
    assert without.attention == 0.0 and with_term.attention == 4.0 * 32 * card.meta["attention"]["seq_len"]
    assert with_term.cost(top, card.rank).fraction > without.cost(top, card.rank).fraction


def test_pareto_front_is_non_dominated_and_reaches_full_gain():
    card = synthetic_card(SCORES)
    front = card.place(layers=2).front
    costs = [p["cost"] for p in front]
    gains = [p["gain_fraction"] for p in front]
    assert costs == sorted(costs) and gains == sorted(gains) and len(set(gains)) == len(gains)
    assert math.isclose(gains[-1], 1.0)
    every = list(_brute(card, lambda s, c, g: True))
    for p in front:  # nothing is both cheaper and better
        assert not any(c.fraction < p["cost"] - 1e-12 and g > p["gain_fraction"] + 1e-12 for _, c, g in every)


def test_greedy_mode_is_feasible_and_close():
    card = synthetic_card(SCORES)
    exact = card.place(budget=0.6)
    greedy = card.place(budget=0.6, exact_max_layers=0)
    assert greedy.cost <= 0.6 + 1e-12
    assert greedy.predicted_gain_fraction >= 0.9 * exact.predicted_gain_fraction


def test_rank_target_ranks_from_the_spectrum():
    card = synthetic_card(SCORES)
    ranks = module_ranks(card, rank_target=0.8)
    for m in card.modules:
        cum = np.cumsum(m.sv2) / m.resnorm ** 2
        expect = int(np.argmax(cum >= 0.8 - 1e-12)) + 1
        assert ranks[m.name] == expect
        assert ranks[m.name] == 1 or cum[ranks[m.name] - 2] < 0.8
    plan = card.place(layers=2, rank_target=0.8)
    assert plan.ranks == {n: ranks[n] for n in plan.modules}


def _greedy_family_reference(card):
    """The greedy family written out set by set (how placement enumerated it before it streamed)."""
    from layerprof.place.placement import card_cost_model

    model = card_cost_model(card)
    ranks = module_ranks(card)
    ids = [l.layer for l in card.layers]
    col = np.array([l.score for l in card.layers])
    adapter = np.array([model.adapter_flops(l, ranks) for l in ids])
    ratio = col / adapter
    full = model.full_flops(ranks)
    sets = []
    for low in range(len(ids)):
        above = sorted(range(low + 1, len(ids)), key=lambda j: -ratio[j])
        for n in range(len(above) + 1):
            members = sorted([low, *above[:n]])
            sets.append((members, model.step_flops([ids[j] for j in members], ranks) / full,
                         col[members].sum() / col.sum(), sum(
                             model.adapter_params(ids[j], ranks) for j in members)))
    return sets


@pytest.mark.parametrize("seed", range(6))
def test_streamed_greedy_family_picks_what_the_written_out_family_picks(seed):
    rng = np.random.default_rng(seed)
    card = synthetic_card(list(rng.random(11) * 5 + 0.01), seed=seed)
    sets = _greedy_family_reference(card)
    for budget in (0.3, 0.55, 0.8):
        fits = [s for s in sets if s[1] <= budget + 1e-12]
        if not fits:
            continue
        best = max(s[2] for s in fits)
        want = min((s for s in fits if s[2] >= best - 1e-12), key=lambda s: s[1])
        plan = card.place(budget=budget, exact_max_layers=0)
        assert plan.layers == want[0] and plan.predicted_gain_fraction == pytest.approx(want[2], abs=1e-12)
        # The front: every point is a family set, none dominates another, and at each point's cost
        # no family set is better.
        for p in plan.front:
            assert max(s[2] for s in sets if s[1] <= p["cost"] + 1e-12) == pytest.approx(p["gain_fraction"], abs=1e-12)
    for target in (0.25, 0.6, 0.95):
        reach = [s for s in sets if s[2] >= target - 1e-12]
        cheapest = min(s[1] for s in reach)
        want = max((s for s in reach if s[1] <= cheapest + 1e-12), key=lambda s: s[2])
        assert card.place(objective="cost", target_gain=target, exact_max_layers=0).layers == want[0]
    params = int(np.median([s[3] for s in sets]))
    fits = [s for s in sets if s[3] <= params]
    best = max(s[2] for s in fits)
    want = min((s for s in fits if s[2] >= best - 1e-12), key=lambda s: s[1])
    assert card.place(params=params, exact_max_layers=0).layers == want[0]


def test_a_large_card_places_in_bounded_memory():
    import tracemalloc

    card = synthetic_card(list(np.random.default_rng(0).random(1500) + 0.01))
    tracemalloc.start()
    plan = card.place(budget=0.3)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert plan.cost <= 0.3 + 1e-12 and len(plan.front) <= 256
    assert peak < 100 * 2 ** 20  # the written-out family would take ~9 GB here

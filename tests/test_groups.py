"""Profiling in several sweeps when the statistics do not fit at once (memory planner groups).

The card of G sweeps over the same batches, one group of whole layers each, must equal
the one-sweep card: module rows from their own sweep, and the columns that depend on
every layer (gain share, rank, cost, stability) recomputed over all layers.
"""
import dataclasses

import pytest
import torch

import layerprof as lp
from conftest import assert_untouched, make_batches, make_model, snapshot
from layerprof.pipeline.memory_plan import plan_memory
from layerprof.model.targets import find_targets
from layerprof.card.scores import DEFAULT_SCORE

KW = dict(acc_bytes=4, input_bytes=4, rows_per_batch=33, device=torch.device("cpu"))


def _layer_need(targets, layer):
    return sum(3 * (t.d_in ** 2 + t.d_in * t.d_out) * 4 + 33 * t.d_in * 4 for t in targets.values()
               if t.layer == layer)


def test_planner_groups_whole_layers_that_fit():
    targets = find_targets(make_model("llama"))
    budget = _layer_need(targets, 0) + _layer_need(targets, 1)  # two of the three layers per sweep
    plan = plan_memory(targets, sketch=None, max_memory=budget, **KW)
    assert plan.mode == "dense" and plan.sweeps == 2
    assert [n for g in plan.groups for n in g] == list(targets)  # every target once, in order
    for g in plan.groups:
        layers = {targets[n].layer for n in g}
        assert all(sum(1 for n in targets if targets[n].layer == l) == sum(1 for n in g if targets[n].layer == l)
                   for l in layers), "a layer was split between sweeps"
        assert sum(3 * (targets[n].d_in ** 2 + targets[n].d_in * targets[n].d_out) * 4 + 33 * targets[n].d_in * 4
                   for n in g) <= budget
    assert plan.to_dict()["sweeps"] == 2 and "2 sweeps" in plan.describe()
    with pytest.raises(MemoryError, match="do not fit even one layer per sweep: layer 0"):
        plan_memory(targets, sketch=None, max_memory=_layer_need(targets, 0) - 1, **KW)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_card_from_several_sweeps_equals_one_sweep(arch):
    model = make_model(arch)
    batches = make_batches(n=4)
    # Coupling needs one sweep, so the several-sweep card has none (and coupling=None goes without):
    # compare with the one-sweep card without it.
    one = lp.profile(model, batches, rank=4, sketch=None, progress=False, coupling=False)
    targets = find_targets(model)
    rows = batches[0]["input_ids"].numel()
    need = [sum(3 * (t.d_in ** 2 + t.d_in * t.d_out) * 4 + rows * t.d_in * 4 for t in targets.values()
                if t.layer == l) for l in range(3)]
    many = lp.profile(model, batches, rank=4, sketch=None, progress=False, max_memory=max(need), coupling=None)
    assert many.meta["memory_plan"]["sweeps"] == 3 and many.meta["sweep"]["sweeps"] == 3
    assert not many.meta.get("coupling") and many.meta["settings"]["score"] == DEFAULT_SCORE
    assert [m.name for m in many.modules] == [m.name for m in one.modules]
    for a, b in [*zip(one.modules, many.modules), *zip(one.layers, many.layers)]:
        for f in dataclasses.fields(a):
            va, vb = getattr(a, f.name), getattr(b, f.name)
            if isinstance(va, (str, type(None))):
                assert va == vb, (a, f.name)
            else:
                assert va == pytest.approx(vb, rel=1e-9, abs=1e-12), (a, f.name)
    assert many.meta["stability"]["kendall_tau"] == one.meta["stability"]["kendall_tau"]
    assert many.meta["data"] == one.meta["data"]
    assert many.place(layers=1).layers == one.place(layers=1).layers


def test_several_sweeps_need_reiterable_batches_and_no_coupling():
    model = make_model("llama")
    targets = find_targets(model)
    budget = _layer_need(targets, 0) * 2  # rows per batch 33 here, as KW
    batches = make_batches(n=2, batch=3, seq=11)
    with pytest.raises(lp.ProfileError, match="one-shot iterator; pass a list"):
        lp.profile(model, iter(batches), rank=4, sketch=None, progress=False, max_memory=budget)
    with pytest.raises(lp.ProfileError, match="coupling needs every layer's statistics in one sweep"):
        lp.profile(model, batches, rank=4, sketch=None, coupling=True, progress=False, max_memory=budget)


def test_planner_counts_shared_inputs_once():
    # Llama: q/k/v read one tensor, gate/up another. With the sharing of one no-grad forward,
    # a budget that fits the shared dense statistics but not the unshared estimate stays dense
    # in one sweep — and the sweep then fits (statistics_bytes on the card within the plan).
    from layerprof.pipeline.memory_plan import shared_inputs
    from layerprof.model.batches import frozen_eval

    model = make_model("llama")
    targets = find_targets(model)
    batch = make_batches(n=1, batch=3, seq=11)[0]
    with frozen_eval(model):
        shared = shared_inputs(model, targets, batch)
    for layer in range(3):
        p = f"model.layers.{layer}."
        assert shared[p + "self_attn.q_proj"] == shared[p + "self_attn.k_proj"] == shared[p + "self_attn.v_proj"]
        assert shared[p + "mlp.gate_proj"] == shared[p + "mlp.up_proj"] != shared[p + "mlp.down_proj"]
        assert shared[p + "self_attn.o_proj"] != shared[p + "self_attn.q_proj"]
    alone = plan_memory(targets, sketch=None, max_memory=10 ** 12, **KW)
    both = plan_memory(targets, sketch=None, max_memory=10 ** 12, shared=shared, **KW)
    d = 24  # hidden size of the tiny Llama (every S here is d×d)
    assert alone.dense_bytes - both.dense_bytes == 3 * 4 * 3 * (2 * d * d + d * d)  # per layer: k, v, up S saved
    assert alone.activation_bytes - both.activation_bytes == 3 * 33 * 4 * (3 * d)
    budget = both.dense_bytes + both.activation_bytes
    assert plan_memory(targets, sketch="auto", max_memory=budget, **KW).mode == "sketch"  # unshared: too big
    before = snapshot(model)
    card = lp.profile(model, make_batches(n=2, batch=3, seq=11), rank=4, progress=False, max_memory=budget)
    assert card.meta["memory_plan"]["mode"] == "dense" and card.meta["memory_plan"]["sweeps"] == 1
    assert card.meta["sweep"]["statistics_bytes"] <= card.meta["memory_plan"]["statistics_bytes"]
    assert_untouched(model, before)


def test_merging_a_group_that_fell_back_places_every_layer_by_the_fallback():
    """If one group's card had to fall back to the naive score (a module it profiled fired in only one
    split half), the merged card does too: one score for all layers, and the reason kept."""
    from layerprof.pipeline.merge import merge_group_cards
    from layerprof.card.scores import DEFAULT_SCORE, SCORES

    model, batches = make_model("llama"), make_batches(n=4)
    parts = [lp.profile(model, batches, rank=4, progress=False, targets=rf"model\.layers\.{i}\..*") for i in (0, 1, 2)]
    assert {p.meta["settings"]["score"] for p in parts} == {DEFAULT_SCORE}
    why = "some module fired in only one split half (its layer has no cross-half estimate)"
    fell = parts[1]
    fell.meta["settings"] = {**fell.meta["settings"], "score": "resnorm2_rank_over_noise", "score_fallback": why}
    merged = merge_group_cards(parts)
    assert merged.meta["settings"]["score"] == "resnorm2_rank_over_noise"
    assert merged.meta["settings"]["score_fallback"] == why
    naive = [SCORES["resnorm2_rank_over_noise"](dataclasses.asdict(l)) for l in merged.layers]
    assert [l.score for l in merged.layers] == pytest.approx(naive, rel=1e-12)
    assert [l.layer for l in merged.layers] == [0, 1, 2]

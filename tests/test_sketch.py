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
    dense = lp.profile(model, batches, rank=4, dtype=torch.float64, progress=False, score="resnorm2")
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
        card = lp.profile(model, batches, rank=4, dtype=torch.float64, progress=False, sketch=k, score="resnorm2")
        return statistics.mean(abs(s.resnorm ** 2 - d.resnorm ** 2) / d.resnorm ** 2
                               for s, d in zip(card.modules, dense.modules) if d.d_out > k), card

    e8, c8 = err(8)
    e32, c32 = err(32)
    assert e32 < e8
    # The ranking settles on the dense one: wider sketches agree with it at least as well.
    from layerprof.card.rankcorr import kendall_tau

    dense_scores = [l.score for l in dense.layers]
    tau = {k: kendall_tau([l.score for l in c.layers], dense_scores) for k, c in ((8, c8), (32, c32))}
    assert tau[32] >= tau[8] and tau[32] > 0.5
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


def test_memory_planner_chooses_sketch_when_dense_does_not_fit():
    from transformers import LlamaConfig, LlamaForCausalLM

    from layerprof.pipeline.memory_plan import plan_memory
    from layerprof.model.targets import find_targets

    torch.manual_seed(0)  # MLP outputs (300) wider than the default sketch (128): sketching saves memory
    model = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=24, intermediate_size=300, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    targets = find_targets(model)
    kw = dict(acc_bytes=4, input_bytes=4, rows_per_batch=33, device=torch.device("cpu"))
    dense = plan_memory(targets, max_memory=10 ** 9, **kw)
    assert dense.mode == "dense" and dense.statistics_bytes == sum(
        3 * (t.d_in ** 2 + t.d_in * t.d_out) * 4 for t in targets.values())
    budget = dense.dense_bytes + dense.activation_bytes - 1
    tight = plan_memory(targets, max_memory=budget, **kw)
    assert tight.mode == "sketch" and tight.sketch == 128 and tight.statistics_bytes < dense.statistics_bytes
    with pytest.raises(MemoryError, match="do not fit even one layer per sweep"):
        plan_memory(targets, max_memory=1000, **kw)
    # profile() follows the plan (refined with the input sharing it observes: q/k/v and gate/up
    # hold one S) and stores it; a budget nothing fits is a clear error.
    from layerprof.pipeline.memory_plan import shared_inputs

    batches = [{k: v for k, v in b.items()} for b in make_batches(n=2)]
    shared = plan_memory(targets, max_memory=10 ** 9, shared=shared_inputs(model, targets, batches[0]), **kw)
    budget = shared.dense_bytes + shared.activation_bytes - 1
    card = lp.profile(model, batches, rank=4, progress=False, max_memory=budget)
    assert card.meta["memory_plan"]["mode"] == "sketch" and card.meta["settings"]["sketch"] == 128
    assert card.meta["settings"]["sketched_modules"] == 4  # gate/up of 2 blocks
    assert lp.profile(model, batches, rank=4, progress=False).meta["memory_plan"]["mode"] == "dense"
    with pytest.raises(lp.ProfileError, match="do not fit"):
        lp.profile(model, batches, rank=4, progress=False, max_memory=1000)

"""Measured step cost: the cost model's terms fitted to timed LoRA steps (layerprof.pipeline.step_cost)."""
import numpy as np
import pytest
import torch

import layerprof as lp
from layerprof.place.placement import card_cost_model
from layerprof.pipeline.step_cost import calibration_shapes, fit_terms

from conftest import VOCAB, assert_untouched, make_batches, snapshot


def _deep_gpt2(layers=8):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=16, n_layer=layers, n_head=2,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                      bos_token_id=0, eos_token_id=0)).eval()


class StepClock:
    """A clock that advances by a known cost model's step at the end of every timed step: a·F + b·B(P) +
    c·A(P) in the FLOP model's terms, P being the layers whose modules are PEFT LoRA layers right now."""

    def __init__(self, model, card, a, b, c):
        self.flops = card_cost_model(card)
        self.card, self.abc, self.t, self.calls, self.steps = card, (a, b, c), 0.0, 0, []
        self.model, self.modes = model, set()

    def __call__(self):
        self.calls += 1
        self.modes.add(self.model.training)
        if self.calls % 2 == 0:
            hooked = {m.layer for m in self.card.modules
                      if m.layer is not None and hasattr(self.model.get_submodule(m.name), "lora_A")}
            a, b, c = self.abc
            f = self.flops
            self.steps.append(sorted(hooked))
            self.t += (a * f.forward + b * f.backward_flops(min(hooked))
                       + c * sum(f.adapter_flops(l, self.card.rank) for l in hooked))
        return self.t


def test_calibration_shapes_vary_the_three_terms_apart():
    assert calibration_shapes(range(8)) == [list(range(8)), [6, 7], [4, 5, 6, 7], [0], [7]]
    assert calibration_shapes([5, 1, 3]) == [[1, 3, 5], [5], [1]]   # duplicates dropped, full first
    assert calibration_shapes([4]) == [[4]]


def test_fit_terms_recovers_exact_coefficients_and_never_goes_negative():
    rng = np.random.default_rng(0)
    terms = rng.uniform(0.5, 2.0, size=(5, 3))
    coef = np.array([0.3, 1.7, 0.9])
    np.testing.assert_allclose(fit_terms(terms, terms @ coef), coef, rtol=1e-10)
    # Times that fall as the second term grows: its weight is pinned at 0, not negative.
    terms = np.array([[1.0, 1.0, 1.0], [1.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 4.0, 1.0]])
    seconds = np.array([3.0, 2.5, 3.0, 1.5])
    fitted = fit_terms(terms, seconds)
    assert np.all(fitted >= 0) and fitted[1] == 0.0


def test_measured_step_cost_recovers_the_machine_and_leaves_the_model_untouched():
    model = _deep_gpt2()
    batches = make_batches(n=3)
    card = lp.profile(model, batches, coupling=False, progress=False)
    a, b, c = 2.0, 1.0, 3.5          # this "machine": a costly forward, costly adapters
    clock = StepClock(model, card, a, b, c)
    snap = snapshot(model)
    rng = torch.get_rng_state()
    modules = dict(model.named_modules())
    measured = lp.measure_step_cost(model, batches, card, steps=2, warmup=1, clock=clock)
    assert_untouched(model, snap)
    assert dict(model.named_modules()) == modules and not hasattr(model, "peft_config")  # PEFT's layers taken out
    assert torch.equal(torch.get_rng_state(), rng)      # dropout's draws did not move the caller's RNG
    assert clock.modes == {True}                         # timed in train mode, as the fine-tune runs
    sc = measured.meta["step_cost"]
    assert sc["forward_scale"] / sc["backward_scale"] == pytest.approx(a / b, rel=1e-9)
    assert sc["adapter_scale"] / sc["backward_scale"] == pytest.approx(c / b, rel=1e-9)
    flops = card_cost_model(card)   # in FLOP units: the fitted full step is the FLOP model's
    full = flops.full_flops(card.rank)
    assert (sc["forward_scale"] * flops.forward + sc["backward_scale"] * flops.backward_flops(0)
            + sc["adapter_scale"] * sum(flops.adapter_flops(l, card.rank) for l in range(8))) == pytest.approx(full)
    assert sc["max_error"] < 1e-9
    assert [p["layers"] for p in sc["placements"]] == calibration_shapes(range(8))
    # Every shape timed (1 + 2) times, in alternation: full, quarter, half, bottom, top, full, ...
    assert clock.steps == calibration_shapes(range(8)) * 3
    # The card's costs are now the machine's: the step ratio of the clock's own model.

    def step(layers):
        return (a * flops.forward + b * flops.backward_flops(min(layers))
                + c * sum(flops.adapter_flops(l, card.rank) for l in layers))

    for row in measured.layers:
        assert row.cost == pytest.approx(step([row.layer]) / step(range(8)), rel=1e-9)
    plan = measured.place(budget=0.5)
    assert plan.cost == pytest.approx(step(plan.layers) / step(range(8)), rel=1e-9) and plan.cost <= 0.5
    # The FLOP card is unchanged; the measured one survives a save/load.
    assert "step_cost" not in card.meta
    assert lp.LayerCard.from_dict(measured.to_dict()).place(budget=0.5).layers == plan.layers


def test_measured_step_cost_times_real_steps_on_the_cpu():
    model = _deep_gpt2(layers=4)
    batches = make_batches(n=2)
    card = lp.profile(model, batches, coupling=False, progress=False)
    snap = snapshot(model)
    measured = lp.measure_step_cost(model, batches, card, steps=2)
    assert_untouched(model, snap)
    sc = measured.meta["step_cost"]
    assert all(p["seconds"] > 0 for p in sc["placements"]) and sc["placements"][0]["measured_fraction"] == 1.0
    assert min(sc["forward_scale"], sc["backward_scale"], sc["adapter_scale"]) >= 0


def test_bad_input_names_the_fix_and_leaves_the_model_as_it_was():
    model = _deep_gpt2(layers=4)
    batches = make_batches(n=2)
    card = lp.profile(model, batches, coupling=False, progress=False)
    snap = snapshot(model)
    with pytest.raises(lp.ProfileError, match="positive int"):
        lp.measure_step_cost(model, batches, card, steps=0)
    with pytest.raises(lp.ProfileError, match="at least one batch"):
        lp.measure_step_cost(model, [], card)
    other = _deep_gpt2(layers=2)
    with pytest.raises(lp.ProfileError, match="not in this model"):
        lp.measure_step_cost(other, batches, card)
    from peft import LoraConfig, get_peft_model

    with pytest.raises(lp.ProfileError, match="base model"):
        lp.measure_step_cost(get_peft_model(_deep_gpt2(layers=4), LoraConfig(target_modules=["c_attn"], fan_in_fan_out=True)), batches, card)
    bad = [{"input_ids": b["input_ids"]} for b in batches]   # no labels: no loss
    with pytest.raises(lp.ProfileError, match="labels"):
        lp.measure_step_cost(model, bad, card, steps=1, warmup=0)
    assert_untouched(model, snap)


def test_a_card_with_a_broken_step_cost_is_refused(tmp_path):
    model = _deep_gpt2(layers=4)
    card = lp.profile(model, make_batches(n=2), coupling=False, progress=False)
    data = card.to_dict()
    data["meta"]["step_cost"] = {"forward_scale": -1.0, "backward_scale": 1.0, "adapter_scale": 1.0, "placements": []}
    with pytest.raises(lp.CardFormatError, match="forward_scale"):
        lp.LayerCard.from_dict(data)

"""PEFT round trip: the plan's LoraConfig adapts exactly plan.modules, with the plan's ranks."""

import pytest

import layerprof as lp
from conftest import make_batches, make_model


def lora_modules(peft_model):
    """Qualified names (in the base model) of modules that received a LoRA adapter, with their rank."""
    out = {}
    for name, module in peft_model.base_model.model.named_modules():
        lora_A = getattr(module, "lora_A", None)
        if lora_A is not None and "default" in lora_A:
            out[name] = lora_A["default"].weight.shape[0]
    return out


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_get_peft_model_adapts_exactly_the_plan(arch):
    from peft import get_peft_model

    model = make_model(arch)
    card = lp.profile(model, make_batches(), rank=4, progress=False)
    plan = card.place(layers=2)
    config = plan.lora_config(r=4, lora_alpha=8)
    peft_model = get_peft_model(make_model(arch), config)
    adapted = lora_modules(peft_model)
    assert set(adapted) == set(plan.modules)
    assert set(adapted.values()) == {4}
    assert {card.module(n).layer for n in adapted} == set(plan.layers)
    # A LoRA forward/backward runs and only adapter weights train.
    b = make_batches(n=1)[0]
    peft_model(**b).loss.backward()
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_per_module_ranks_reach_peft_through_rank_pattern(tmp_path):
    from peft import LoraConfig, get_peft_model

    model = make_model("llama")
    card = lp.profile(model, make_batches(), rank=4, progress=False)
    plan = card.place(layers=2, rank_target=0.6)
    config = plan.lora_config(r=4, lora_alpha=8)
    assert len(set(plan.ranks.values())) > 1, "test needs differing ranks"
    adapted = lora_modules(get_peft_model(make_model("llama"), config))
    assert adapted == plan.ranks
    # Constant scaling alpha/r across modules.
    for key, r in config.rank_pattern.items():
        assert config.alpha_pattern[key] / r == 8 / 4
    # The config survives JSON (what `layerprof place --out` writes) and loads back.
    config.save_pretrained(tmp_path)
    again = LoraConfig.from_pretrained(tmp_path)
    assert lora_modules(get_peft_model(make_model("llama"), again)) == plan.ranks


def test_plan_rejects_conflicting_arguments():
    card = lp.profile(make_model("llama"), make_batches(), rank=4, progress=False)
    with pytest.raises(ValueError, match="target_modules is set by the plan"):
        card.place(layers=1).lora_config(target_modules=["q_proj"])

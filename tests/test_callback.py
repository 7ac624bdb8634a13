"""LayerCardCallback inside a real transformers Trainer (tiny Llama, CPU).

Six equal-length rows in two batches of three: the callback profiles every row whatever
the sampler's order, so its card must match ``lp.profile`` on the same rows; training
with the callback must end bitwise where training without it ends.
"""
import json

import numpy as np
import pytest
import torch

import layerprof as lp
from conftest import VOCAB, make_model
from layerprof.callback import LayerCardCallback  # the public path (layerprof/integrations/callback.py)
from layerprof.card.scores import DEFAULT_SCORE
from test_peft import lora_modules

ROWS, SEQ = 6, 10


def _rows():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, VOCAB, (ROWS, SEQ), generator=g)
    return [{"input_ids": r, "attention_mask": torch.ones(SEQ, dtype=torch.long), "labels": r.clone()} for r in ids]


def _train(model, tmp_path, callbacks, steps=2):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=3,
                             learning_rate=1e-2, report_to=[], save_strategy="no", logging_strategy="no",
                             use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=_rows(), callbacks=callbacks)
    trainer.train()
    return trainer


def _reference_card(model, rank=4):
    rows = _rows()
    batches = [{k: torch.stack([r[k] for r in rows[i:i + 3]]) for k in rows[0]} for i in (0, 3)]
    return lp.profile(model, batches, rank=rank, progress=False)


def _assert_same_columns(a, b):
    assert [m.name for m in a.modules] == [m.name for m in b.modules]
    for col in ("resnorm", "resnorm_rank", "energy", "grad_norm", "rows"):
        np.testing.assert_allclose([getattr(m, col) for m in a.modules], [getattr(m, col) for m in b.modules],
                                   rtol=1e-4, err_msg=col)


def test_callback_writes_card_and_placement_and_leaves_training_unchanged(tmp_path, capsys):
    ref = _reference_card(make_model("llama"))
    cb = LayerCardCallback(batches=2, layers=1, rank=4, exports=("peft", "axolotl", "llamafactory"))
    with_cb = _train(make_model("llama"), tmp_path / "a", [cb])
    err = capsys.readouterr().err
    assert f"written to {tmp_path / 'a' / 'layerprof'}" in err and "recommended layers" in err
    lines = [l for l in err.splitlines() if l.startswith("layerprof:")]
    assert len(lines) == 2 and "profiling LlamaForCausalLM on the first 2 training batches for a 2-step" in lines[0]
    assert "of the all-layer score at" in lines[1]
    written = json.loads((tmp_path / "a" / "layerprof" / "adapter" / "adapter_config.json").read_text())
    assert written["task_type"] == "CAUSAL_LM"  # the Trainer's model is a causal LM
    without = _train(make_model("llama"), tmp_path / "b", [])
    # Training is untouched: the same steps end at bitwise the same weights.
    assert with_cb.state.global_step == 2
    for (n, p), (_, q) in zip(with_cb.model.named_parameters(), without.model.named_parameters()):
        assert torch.equal(p, q), n
    # The card is the card of those rows, profiled before the first step, with predictions for
    # the run the Trainer does (Rule 2: its steps, lr and AdamW settings).
    _assert_same_columns(cb.card, ref)
    budget = cb.card.meta["budget"]
    assert (budget["steps"], budget["lr"], budget["r"], budget["lora_alpha"]) == (2, 1e-2, 4, 8.0)
    assert budget["betas"] == [0.9, 0.999] and budget["weight_decay"] == 0.0
    assert all(l.sim_gain is not None and l.lca_gain is not None for l in cb.card.layers)
    out = tmp_path / "a" / "layerprof"
    # The default placement (studies/v1/notebook.md, round 9) is stratified-k on ρ(r)²×/noise amp, with or without
    # a budget (the budget's predictions are diagnostics beside it); the saved card is the card the
    # callback holds.
    assert cb.card.meta["settings"]["score"] == DEFAULT_SCORE and not cb.card.meta.get("coupling")
    over_noise = {l.layer: l.resnorm2_rank_x / l.noise_amp for l in cb.card.layers}
    assert cb.card.ranking() == sorted(over_noise, key=lambda l: -over_noise[l])
    assert lp.LayerCard.load(out / "card.json").ranking() == cb.card.ranking()
    assert (out / "card.md").read_text().startswith("# Layer Card")
    assert "<svg" in (out / "card.html").read_text()
    plan = json.loads((out / "placement.json").read_text())
    assert plan["layers"] == cb.card.place(layers=1).layers == cb.plan.layers
    for name in ("adapter/adapter_config.json", "axolotl.yml", "llamafactory.yaml"):
        assert (out / name).exists(), name


def test_callback_on_a_peft_model_profiles_the_base_layers(tmp_path):
    from peft import LoraConfig, get_peft_model

    ref = _reference_card(make_model("llama"))
    peft_model = get_peft_model(make_model("llama"), LoraConfig(r=4, target_modules="all-linear"))
    cb = LayerCardCallback(batches=2, budget=0.9, rank=4, lora_alpha=3)
    _train(peft_model, tmp_path, [cb], steps=1)
    # Names are the base model's, values are the base model's (adapters disabled while profiling).
    _assert_same_columns(cb.card, ref)
    assert not cb.card.meta["unfired"]
    # r and alpha of the budget are the PeftModel's own (alpha 8 is PEFT's default), not the callback's.
    assert (cb.card.meta["budget"]["r"], cb.card.meta["budget"]["lora_alpha"]) == (4, 8.0)
    # The exported config applies to a fresh base model and adapts exactly the plan.
    config = LoraConfig.from_pretrained(str(tmp_path / "layerprof" / "adapter"))
    assert set(lora_modules(get_peft_model(make_model("llama"), config))) == set(cb.plan.modules)


def test_callback_rejects_bad_arguments():
    with pytest.raises(ValueError, match="batches must be a positive int"):
        LayerCardCallback(batches=0)
    with pytest.raises(ValueError, match="at most one of"):
        LayerCardCallback(layers=2, budget=0.5)
    with pytest.raises(ValueError, match="unknown export format"):
        LayerCardCallback(exports=("deepspeed",))


def test_callback_checks_its_profile_settings_when_built():
    """Bad settings fail at construction with ProfileConfig's message, not when training starts."""
    with pytest.raises(lp.ProfileError, match="rank must be a positive int"):
        LayerCardCallback(rank=0)
    with pytest.raises(lp.ProfileError, match="unknown setting"):
        LayerCardCallback(rnak=4)
    # The budget is the Trainer's, filled in at on_train_begin: a budget-aware score is accepted now.
    assert LayerCardCallback(score="sim_gain").config.score == "sim_gain"
    assert LayerCardCallback(predict=False).config.budget is None

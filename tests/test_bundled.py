"""The bundled default: real trained weights, offline, small, and a real domain shift."""
import math

import pytest
import torch

from layerprof.model.bundled import MODEL_DIR, calibration_batches, heldout_text, load_default_model, text_batches
from layerprof.study.checkpoints import load_deep24_model, load_deep_model, load_mid_model


def _loss(model, batches):
    with torch.no_grad():
        total = sum(model(**b).loss.item() * int((b["labels"] != -100).sum()) for b in batches)
    return total / sum(int((b["labels"] != -100).sum()) for b in batches)


def test_weights_are_small_and_load_offline():
    size = sum(f.stat().st_size for f in MODEL_DIR.iterdir())
    assert size <= 10 * 2 ** 20
    model = load_default_model()
    assert model.config.n_layer >= 6 and model.config.vocab_size == 256


def test_weights_are_trained_and_the_calibration_text_is_a_domain_shift():
    # Uniform bytes cost ln 256 = 5.55 nats. The trained model must do far better on held-out
    # Shakespeare (The Tempest, never trained on) than on Python's documentation prose.
    model = load_default_model()
    in_domain = _loss(model, text_batches(heldout_text(), batch_size=4, seq_len=128, n_batches=6))
    shifted = _loss(model, calibration_batches(batch_size=4, seq_len=128, n_batches=6))
    assert in_domain < 2.3 < math.log(256)
    assert shifted > in_domain + 0.3


def test_calibration_batches_are_padded_with_masked_labels():
    batches = calibration_batches(batch_size=4, seq_len=64, n_batches=5)
    assert len(batches) == 5
    for b in batches:
        assert b["input_ids"].shape == (4, 64)
        pad = b["attention_mask"] == 0
        assert (b["labels"][pad] == -100).all() and (b["labels"][~pad] == b["input_ids"][~pad]).all()
    assert any(bool((b["attention_mask"] == 0).any()) for b in batches)


@pytest.mark.parametrize("load, layers", [(load_deep_model, 16), (load_mid_model, 12), (load_deep24_model, 24)])
def test_study_decoders_are_trained_at_their_depth(load, layers):
    # The placement study's depth axis (8, 12, 16, 24 blocks): each model is real, not initialised weights.
    model = load()
    assert model.config.n_layer == layers and model.config.n_embd == 64 and model.config.vocab_size == 256
    in_domain = _loss(model, text_batches(heldout_text(), batch_size=4, seq_len=128, n_batches=6))
    assert in_domain < 2.3 < math.log(256)


def test_a_missing_study_model_names_the_command_that_trains_it(tmp_path):
    from layerprof.study.checkpoints import _load_study_model

    with pytest.raises(FileNotFoundError, match="studies/v1/checkpoints.*--layers 12 --width 64"):
        _load_study_model(tmp_path / "shakespeare-gpt2-mid", layers=12, dtype=torch.float32)

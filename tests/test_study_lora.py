"""Placement study plumbing on a tiny model (the real study is studies/v1/notebook.md, not a test)."""

import pytest
import torch

import layerprof as lp
from conftest import make_batches, make_model
from layerprof.card.rankcorr import spearman
from layerprof.study.lora import StudyConfig, probe_layers, train_lora
from layerprof.study.task import Task

pytestmark = pytest.mark.study


@pytest.fixture(scope="module")
def task():
    train, evals = make_batches(n=4, seed=1), make_batches(n=2, seed=2)
    return Task("tiny gpt2", lambda: make_model("gpt2"), train, evals, train[:2])


@pytest.fixture(scope="module")
def card(task):
    return lp.profile(task.model(), task.calibration, rank=4, progress=False)


def test_train_lora_trains_only_the_named_modules_and_lowers_train_loss(task, card):
    mods = [m.name for m in card.modules if m.layer == 2]
    out = train_lora(task, mods, StudyConfig(steps=30, r=4, lora_alpha=8, lr=1e-2),
                     {m.name: m.kind for m in card.modules})
    assert out["adapted_modules"] == 4
    assert out["trainable_params"] == sum(4 * (m.d_in + m.d_out) for m in card.modules if m.layer == 2)
    assert out["step_seconds"] > 0
    # Thirty LoRA steps on one block lower the held-out loss of the bundled task.
    assert out["eval_after"] < out["eval_before"] and out["gain"] == pytest.approx(out["eval_before"] - out["eval_after"])


def test_spearman_matches_scipy():
    from scipy.stats import spearmanr

    a, b = [3.0, 1.0, 2.0, 5.0, 5.0, 0.5], [1.0, 0.2, 0.3, 2.0, 1.5, 0.1]
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert spearman([1, 2], [2, 1]) is None


def test_probe_stores_measured_gains_and_correlations(task, card):
    probe = probe_layers(card, task, StudyConfig(steps=2, r=4, lora_alpha=8))
    assert set(probe["spearman"]) >= {"resnorm2", "resnorm2_x", "grad_norm", "act_norm", "depth"}
    assert all(torch.isfinite(torch.tensor(v)) for v in probe["measured_gain"].values())

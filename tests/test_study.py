"""Placement study plumbing on a tiny model (the real study is docs/RESULTS.md, not a test)."""
import csv
import json
import math

import pytest
import torch

import layerprof as lp
from conftest import make_batches, make_model
from layerprof.study import (StudyConfig, Task, placements, probe_layers, run_study, spearman, study_runs, train_lora,
                             write_report)


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
    assert math.isfinite(out["gain"]) and out["step_seconds"] > 0


def test_placements_have_equal_budget_and_the_baselines(card):
    p = placements(card, 1, 2)
    assert {k for k in p} >= {"card top-k", "card cost-budget", "first-k", "last-k", "grad-norm top-k",
                              "act-norm top-k", "nfn top-k", "full"}
    assert all(len(v) == 1 for k, v in p.items() if k not in ("full", "card cost-budget"))
    assert p["first-k"] == [0] and p["last-k"] == [2] and p["full"] == [0, 1, 2]
    assert p["card top-k"] == card.place(layers=1).layers


def test_study_runs_every_placement_and_writes_reports(task, card, tmp_path):
    card = lp.profile(task.model(), task.calibration, rank=4, progress=False, coupling=True)
    cfg = StudyConfig(steps=2, r=4, lora_alpha=8, random_seeds=2, seeds=2)
    messages = []
    result = run_study(task, card, k=2, cfg=cfg, progress=messages.append)
    # One message per placement or probe, each cfg.seeds trainings: what the CLI's ETA bar counts.
    assert len(messages) * cfg.seeds == study_runs(card, 2, cfg, probe=True) == (10 + 3) * 2
    names = [r.placement for r in result.runs]
    assert len(names) == 10 and names[-1] == "full"
    full = result.runs[-1]
    assert full.gain_fraction_of_full in (pytest.approx(1.0), None) and full.trainable_params > result.runs[0].trainable_params
    assert (full.gain_fraction_of_full is None) == (full.gain <= 0)
    assert all(len(r.gains) == 2 for r in result.runs)
    assert set(result.probe["measured_gain"]) == {"0", "1", "2"}
    paths = write_report(result, card.with_probe(result.probe), tmp_path)
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["placement"] for r in rows] == names
    assert "Single-layer probes" in paths["markdown"].read_text() and "Additivity" in paths["markdown"].read_text()
    assert paths["gain_vs_cost"].stat().st_size > 1000 and paths["predicted_vs_measured"].stat().st_size > 1000
    again = lp.LayerCard.from_dict(json.loads(json.dumps(card.with_probe(result.probe).to_dict())))
    assert [l.measured_gain for l in again.layers] == [result.probe["measured_gain"][str(i)] for i in range(3)]


def test_spearman_matches_scipy():
    from scipy.stats import spearmanr

    a, b = [3.0, 1.0, 2.0, 5.0, 5.0, 0.5], [1.0, 0.2, 0.3, 2.0, 1.5, 0.1]
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert spearman([1, 2], [2, 1]) is None


def test_probe_stores_measured_gains_and_correlations(task, card):
    probe = probe_layers(card, task, StudyConfig(steps=2, r=4, lora_alpha=8))
    assert set(probe["spearman"]) >= {"score (ρ²)", "grad_norm²", "act_norm"}
    assert all(torch.isfinite(torch.tensor(v)) for v in probe["measured_gain"].values())

"""Study v2's placement rules and figures (studies/v2): the rules as PROTOCOL.md defines them, and the
analysis recomputed by hand on synthetic runs."""
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "studies" / "v2"))
import analyze  # noqa: E402
import placements as P  # noqa: E402

pytestmark = pytest.mark.study

L30 = list(range(30))


def test_depth_rules_on_thirty_layers():
    # Bins i·30//7: [0–3] [4–7] [8–11] [12–16] [17–20] [21–24] [25–29].
    assert P.depth_rule(L30, 7) == [0, 7, 11, 16, 20, 24, 29]
    assert P.bin_first(L30, 7) == [0, 4, 8, 12, 17, 21, 25]
    assert P.probe_layers(L30) == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    assert P.probe_layers(list(range(6))) == list(range(6))


def test_budget_aware_switches_at_forty_steps():
    class Card:
        def place(self, layers):
            return type("Plan", (), {"layers": [1, 5, 9, 14, 18, 22, 27]})()

    assert P.budget_aware(Card(), L30, 7, 20) == [1, 5, 9, 14, 18, 22, 27]
    assert P.budget_aware(Card(), L30, 7, 39) == [1, 5, 9, 14, 18, 22, 27]
    assert P.budget_aware(Card(), L30, 7, 40) == P.bin_first(L30, 7)


def test_modules_under_takes_in_order_while_they_fit():
    class M:
        def __init__(self, name, params):
            self.name, self.lora_params = name, params

    card = type("Card", (), {"modules": [M("a", 5), M("b", 4), M("c", 3), M("d", 1)]})()
    assert P.modules_under(card, ["a", "b", "c", "d"], 9) == ["a", "b"]
    assert P.modules_under(card, ["c", "a", "b", "d"], 9) == ["c", "a", "d"]


def test_one_minus_cka_is_zero_for_a_block_that_rescales_and_in_range_otherwise():
    import layerprof as lp
    from conftest import make_batches, make_model

    model = make_model("llama")
    batches = make_batches()
    card = lp.profile(model, batches, progress=False)
    cka = P.one_minus_cka(model, card, batches)
    assert sorted(cka) == [0, 1, 2] and all(0 <= v <= 1 for v in cka.values())
    # A block whose output is its input times 3 keeps every linear similarity: 1 − CKA = 0.
    block = model.model.layers[1]
    original = block.forward
    block.forward = lambda hidden_states, *a, **k: hidden_states * 3
    try:
        assert P.one_minus_cka(model, card, batches)[1] == pytest.approx(0.0, abs=1e-12)
    finally:
        block.forward = original


def _runs(gains: dict, tasks=("smol-a", "smol-b", "smol-c"), steps=(20, 80), seeds=(0, 1, 2)):
    """Synthetic runs: gains[label](task, steps, seed) -> gain."""
    out = []
    for t in tasks:
        for st in steps:
            for s in seeds:
                for label, f in gains.items():
                    out.append({"task": t, "steps": st, "seed": s, "labels": [label], "gain": f(t, st, s),
                                "layers": [0], "modules": 7})
    return out


def test_figures_match_a_hand_computation():
    rng = np.random.default_rng(1)
    noise = {(t, st, s): float(rng.normal(0, 0.002)) for t in ("smol-a", "smol-b", "smol-c") for st in (20, 80)
             for s in range(3)}
    gains = {"full LoRA r=8": lambda t, st, s: 0.5,
             "uniform-k": lambda t, st, s: 0.40 + noise[(t, st, s)],
             "depth rule": lambda t, st, s: 0.39,
             "default": lambda t, st, s: 0.45 + noise[(t, st, s)],
             "budget-aware": lambda t, st, s: 0.41, "module-level": lambda t, st, s: 0.30}
    for i in range(5):
        gains[f"random-k draw {i}"] = lambda t, st, s, i=i: 0.35 + 0.01 * i
    fig = analyze.figures(_runs(gains))
    c = fig["smollm2"]["compare"]["default vs uniform-k"]
    # Paired over the same seeds, the noise cancels: (0.45 − 0.40) / 0.5 = 10 points in every row.
    assert c["pooled"]["mean"] == pytest.approx(10.0) and c["pooled"]["lo"] == pytest.approx(10.0)
    assert c["pooled"]["n_rows"] == 6 and len(c["rows"]) == 6
    best = fig["smollm2"]["compare"]["default vs best baseline"]
    assert {r["against"] for r in best["rows"].values()} == {"uniform-k"}
    shares = fig["smollm2"]["shares"]
    assert shares["depth rule"]["sum_ratio"] == pytest.approx(0.39 / 0.5)
    assert shares["random-k"]["median"] == pytest.approx(0.37 / 0.5)
    rk = fig["smollm2"]["random_k"]["smol-a@20"]
    draws = [0.35, 0.36, 0.37, 0.38, 0.39]
    assert rk["random_mean"] == pytest.approx(0.37) and rk["random_std"] == pytest.approx(statistics.stdev(draws))
    assert fig["smollm2"]["decision"]["default"] == "default"


def test_decision_falls_back_to_the_simplest_rule_nothing_beats():
    rng = np.random.default_rng(2)
    gains = {"full LoRA r=8": lambda t, st, s: 0.5}
    for label in ("uniform-k", "depth rule", "default", "budget-aware", "module-level"):
        gains[label] = lambda t, st, s: 0.40 + float(rng.normal(0, 0.01))
    gains["first-k"] = lambda t, st, s: 0.30
    for i in range(5):
        gains[f"random-k draw {i}"] = lambda t, st, s, i=i: 0.38 + 0.005 * i
    fig = analyze.figures(_runs(gains))
    assert fig["smollm2"]["decision"]["default"] == "uniform-k"


def test_no_decision_before_every_row_has_every_seed():
    gains = {"full LoRA r=8": lambda t, st, s: 0.5, "default": lambda t, st, s: 0.45,
             "uniform-k": lambda t, st, s: 0.40, "depth rule": lambda t, st, s: 0.40}
    fig = analyze.figures(_runs(gains, seeds=(0, 1)))
    assert "smollm2" not in fig and fig["rows"] == []
    fig = analyze.figures(_runs(gains, tasks=("smol-a",)))
    assert fig["smollm2"]["decision"] == {"default": None, "why": "pending: 2 of 6 rows complete"}


def test_bootstrap_interval_brackets_the_mean():
    d = np.array([1.0, 3.0, 8.0])
    lo, hi = analyze._boot([d], np.random.default_rng(0))
    assert lo < d.mean() < hi and lo >= 1.0 and hi <= 8.0


def test_results_page_is_the_data():
    """docs/results.md is exactly what the analysis script writes from the committed runs.json: no figure in
    it can drift from the data."""
    import json

    runs = json.loads(analyze.RUNS.read_text())["runs"] if analyze.RUNS.exists() else []
    want = analyze.page(analyze.figures(runs, analyze.RUNS.parent))
    assert analyze.PAGE.read_text(encoding="utf-8") == want, "run `python studies/v2/analyze.py --page`"

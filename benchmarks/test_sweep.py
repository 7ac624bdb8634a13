"""The card against the pass that feeds it: ``lp.profile`` ÷ a plain frozen forward+backward of the same
model on the same batches (the bundled GPT-2, 24 × 8 × 128 tokens), per CPU backend."""
import statistics

import pytest

import layerprof as lp
from conftest import linear_flops_ratio, paired
from layerprof.pipeline.benchmark import plain_backward


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_sweep(benchmark, bundled, backend):
    model, batches = bundled
    phases = {"sweep": [], "finalize": []}

    def card():
        c = lp.profile(model, batches, progress=False, backend=backend)
        phases["sweep"].append(c.meta["sweep"]["seconds"])
        phases["finalize"].append(c.meta["sweep"]["finalize_seconds"])
        return c

    benchmark.group = "sweep: bundled GPT-2, 24 × 8 × 128 tokens"
    paired(benchmark, card, lambda: plain_backward(model, batches), rounds=3, info={"backend": backend})
    if benchmark.disabled:
        return
    plain = benchmark.extra_info["baseline_seconds"]
    sweep, fin = statistics.median(phases["sweep"]), statistics.median(phases["finalize"])
    # The card's own phase timers (wall clock, which one thread on an idle core makes its CPU time).
    benchmark.extra_info.update({"sweep_seconds": sweep, "sweep_ratio": sweep / plain, "finalize_seconds": fin,
                                 "sweep_linear_flops_ratio": linear_flops_ratio(model)})

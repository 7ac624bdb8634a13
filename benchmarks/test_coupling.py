"""The coupling matrix's price: the card with ``coupling=True`` against the card without (bundled GPT-2,
16 × 8 × 128 tokens); the coupling pass's own seconds from the card."""
import statistics

import layerprof as lp
from conftest import paired


def test_coupling(benchmark, bundled):
    model, batches = bundled
    batches = batches[:16]
    seconds = []

    def card():
        c = lp.profile(model, batches, progress=False, coupling=True)
        seconds.append(c.meta["coupling"]["seconds"])

    benchmark.group = "coupling: bundled GPT-2, 16 × 8 × 128 tokens"
    paired(benchmark, card, lambda: lp.profile(model, batches, progress=False, coupling=False), rounds=3,
           info={"baseline": "card without coupling"})
    if not benchmark.disabled:
        benchmark.extra_info["coupling_seconds"] = statistics.median(seconds)

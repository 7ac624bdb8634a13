"""Sketch mode vs dense statistics on the bundled model: ranking agreement, error, memory.

For each sketch size k, profile the same batches with CΩ instead of C and report the
Kendall τ of the layer ranking against dense, the mean relative error of ρ² per module
(over 5 sketch seeds), and the statistics memory as a fraction of dense.

    python bench/bench_sketch.py [--batches 16]
"""
from __future__ import annotations

import argparse
import statistics

from harness import append, machine

import layerprof as lp
from layerprof.model.bundled import calibration_batches, load_default_model
from layerprof.card.rankcorr import kendall_tau


def stats_bytes(card, k):
    return sum(m.d_in ** 2 + m.d_in * (min(k, m.d_out) if k else m.d_out) for m in card.modules)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    model = load_default_model()
    batches = calibration_batches(n_batches=args.batches)
    dense = lp.profile(model, batches, progress=False, sketch=None)
    order = [l.score for l in dense.layers]
    print(f"# {machine()}\n{'k':>5} {'τ vs dense (min over seeds)':>28} {'mean rel err ρ²':>16} {'memory / dense':>15}")
    rows = []
    for k in (8, 16, 32, 64, 128, 256):
        taus, errs = [], []
        for seed in range(args.seeds):
            card = lp.profile(model, batches, progress=False, sketch=k, sketch_seed=seed)
            taus.append(kendall_tau(order, [l.score for l in card.layers]))
            errs += [abs(s.resnorm ** 2 - d.resnorm ** 2) / d.resnorm ** 2
                     for s, d in zip(card.modules, dense.modules) if d.d_out > k]
        mem = stats_bytes(dense, k) / stats_bytes(dense, None)
        print(f"{k:>5} {min(taus):>28.2f} {statistics.mean(errs) if errs else 0:>16.3f} {mem:>15.2f}")
        rows.append({"bench": "sketch_vs_dense", "k": k, "tau_min": round(min(taus), 3),
                     "rel_err_rho2": round(statistics.mean(errs), 4) if errs else 0.0, "memory_fraction": round(mem, 3),
                     "model": "bundled shakespeare-gpt2", "rows": dense.meta["data"]["rows"]})
    append(rows)


if __name__ == "__main__":
    main()

"""The coupling pass with and without replaying the upstream modules, side by side.

The default placement's coupling matrix takes two forwards per layer over up to 2,048 calibration
tokens (layerprof.predict.coupling). ``Replay`` returns the unperturbed forward's outputs for the modules
upstream of the perturbed layer instead of recomputing them. This times the whole coupling pass
(``layerprof.pipeline.predict.measure_coupling``, process CPU time, one thread) inside ``lp.profile`` with
replay on and off, interleaved, on the wide MLP (4 × 1024), the 16-block study decoder and
all-MiniLM-L6-v2, and checks that both give the same matrix.

    OMP_NUM_THREADS=1 python bench/bench_replay.py [--reps 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn

import layerprof as lp
import layerprof.predict.coupling as coupling
import layerprof.pipeline.predict as predict
from bench_wide import WideMLP
from layerprof.pipeline.benchmark import machine


def cases():
    from layerprof.study.classification import minilm_task
    from layerprof.study.tasks import deep_task

    torch.manual_seed(0)
    wide = WideMLP(1024).eval()
    rows = [{"x": torch.randn(4096, 1024), "y": torch.randint(0, 8, (4096,))} for _ in range(3)]
    yield ("wide MLP 4 × 1024, 3 × 4,096 rows", wide, rows,
           dict(loss_fn=lambda out, b: nn.functional.cross_entropy(out, b["y"]),
                targets=[f"layers.{i}" for i in range(4)]))
    deep = deep_task()
    yield "16-block study decoder (d 64), 16 × 8 × 128 tokens", deep.model().eval(), deep.calibration, {}
    mini = minilm_task(batch_size=32, seq_len=64, calibration_batches=4)
    yield "all-MiniLM-L6-v2 + probe, 4 × 32 × 64 tokens", mini.model().eval(), mini.calibration, {}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    real_measure, real_directions = predict.measure_coupling, coupling.output_directions
    print(f"{machine()}; process CPU time of the coupling pass, median of {args.reps}\n")
    print("| model | layers | no replay s | replay s | replay / no replay | max abs Δρ |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, model, batches, kw in cases():
        times, rhos = {True: [], False: []}, {}
        for _ in range(args.reps):
            for replay in (False, True):
                def timed(*a, **k):
                    t = time.process_time()
                    out = real_measure(*a, **k)
                    times[replay].append(time.process_time() - t)
                    return out
                predict.measure_coupling = timed
                coupling.output_directions = (lambda *a, _r=replay, **k: real_directions(*a, replay=_r, **k))
                try:
                    card = lp.profile(model, batches, progress=False, coupling=True, **kw)
                finally:
                    predict.measure_coupling, coupling.output_directions = real_measure, real_directions
                rhos[replay] = np.array(card.meta["coupling"]["rho"])
        off, on = statistics.median(times[False]), statistics.median(times[True])
        print(f"| {label} | {len(rhos[True])} | {off:.2f} | {on:.2f} | {on / off:.2f} | "
              f"{np.abs(rhos[True] - rhos[False]).max():.1e} |")


if __name__ == "__main__":
    main()

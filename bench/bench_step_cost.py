"""Measured LoRA step time of suffix and middle placements against the cost model, side by side.

For a study task's card, full-layer LoRA and placements of the top 1, 2, L/4, 3L/8, L/2, 3L/4 layers
and two middle layers train as PEFT models on the same batches, their steps alternating; the median
process time per step over full LoRA's is printed beside the card's modelled cost fraction. One thread.

    OMP_NUM_THREADS=1 python bench/bench_step_cost.py deep 30
"""
from __future__ import annotations

import statistics
import sys
import time

import torch

import layerprof as lp
from bench_step_time import ROOT, _peft
from layerprof.placement import card_cost_model
from layerprof.tasks import TASKS


def main(argv=None) -> None:
    argv = argv if argv is not None else sys.argv[1:]
    name, steps = argv[0], int(argv[1]) if len(argv) > 1 else 30
    torch.set_num_threads(1)
    card = lp.LayerCard.load(ROOT / "docs" / "study" / name / "card_60steps.json")
    layers = [l.layer for l in card.layers]
    n = len(layers)
    kinds = {m.name: m.kind for m in card.modules}
    task = TASKS[name]()
    plans = {"full": layers, **{f"top{m}": layers[-m:] for m in sorted({1, 2, n // 4, 3 * n // 8, n // 2, 3 * n // 4})},
             "mid2": layers[n // 2 - 1:n // 2 + 1]}
    runs = {k: _peft(task, [m.name for m in card.modules if m.layer in v], kinds) for k, v in plans.items()}
    times = {k: [] for k in runs}
    for step in range(steps + 3):
        batch = task.train[step % len(task.train)]
        for k, (model, opt) in runs.items():
            t = time.process_time()
            loss = model(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step >= 3:
                times[k].append(time.process_time() - t)
    full = statistics.median(times["full"])
    model = card_cost_model(card)
    print("| placement | layers | measured step / full LoRA | modelled |\n|---|---|---:|---:|")
    for k, v in plans.items():
        print(f"| {k} | {v} | {statistics.median(times[k]) / full:.3f} | {model.cost(v, card.rank).fraction:.3f} |")


if __name__ == "__main__":
    main()

"""Measured LoRA step time of many placements against the cost model, side by side; saved for the fit.

For a study task's card, full-layer LoRA and placements of the top 1, 2, L/4, 3L/8, L/2, 3L/4 layers,
two middle layers, the bottom layer alone and every other layer train as PEFT models on the same
batches, their steps alternating; the median process time per step over full LoRA's is printed beside
the card's modelled cost fraction. One thread. ``--out`` writes the measurements as JSON (the card, its
task's sequence length, each placement's layers and measured fraction), the input of
``studies/v1/scripts/fit_cost.py``.

    OMP_NUM_THREADS=1 python studies/v1/scripts/bench_step_cost.py deep --steps 30 [--out studies/v1/data/step_cost/deep.json]
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch

import layerprof as lp
from bench_step_time import ROOT, _peft, short_budget_card, timed_steps
from layerprof.place.placement import card_cost_model
from layerprof.study.protocol import with_attention
from layerprof.study.tasks import TASKS


def plans_of(layers: list[int]) -> dict[str, list[int]]:
    n = len(layers)
    plans = {"full": layers, **{f"top{m}": layers[-m:] for m in sorted({1, 2, n // 4, 3 * n // 8, n // 2, 3 * n // 4})},
             "mid2": layers[n // 2 - 1:n // 2 + 1], "bottom1": layers[:1], "every-other": layers[::2]}
    return {k: v for k, v in plans.items() if v}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task", choices=sorted(TASKS))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", help="write the measurements here (JSON) for studies/v1/scripts/fit_cost.py")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    card_path = short_budget_card(args.task)
    task = TASKS[args.task]()
    card = with_attention(lp.LayerCard.load(card_path), task)  # the cost model's attention term, for older cards
    layers = [l.layer for l in card.layers]
    kinds = {m.name: m.kind for m in card.modules}
    plans = plans_of(layers)
    runs = {k: _peft(task, [m.name for m in card.modules if m.layer in v], kinds) for k, v in plans.items()}
    times = timed_steps(task, runs, args.steps)
    full = statistics.median(times["full"])
    model = card_cost_model(card)
    measured = {k: statistics.median(times[k]) / full for k in plans}
    print(f"{args.task}: {len(layers)} layers, {args.steps} steps each, median process time per step\n")
    print("| placement | layers | measured step / full LoRA | modelled |\n|---|---|---:|---:|")
    for k, v in plans.items():
        print(f"| {k} | {v} | {measured[k]:.3f} | {model.cost(v, card.rank).fraction:.3f} |")
    if args.out:
        batch = task.train[0]
        seq_len = int(batch["input_ids"].shape[-1]) if "input_ids" in batch else None
        record = {"task": args.task, "card": str(card_path.relative_to(ROOT)), "seq_len": seq_len,
                  "steps": args.steps, "full_step_seconds": full,
                  "placements": [{"name": k, "layers": v, "measured": measured[k]} for k, v in plans.items()
                                 if k != "full"]}
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()

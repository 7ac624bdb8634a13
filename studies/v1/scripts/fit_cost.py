"""Fit the cost model's adapter overhead γ to measured LoRA step times, and check it.

Reads measured placements — `layerprof study` output folders (study.json + card.json) or the JSON
files ``studies/v1/scripts/bench_step_cost.py --out`` writes — compares the modelled cost fraction of every
placement with its measured step time / full LoRA's, and prints the least-squares γ
(``layerprof.card.cost.ADAPTER_OVERHEAD``) and the mean and largest errors with γ = 0, with the current
default and with the fitted value, each with and without the attention term (the card's
``meta.attention``; older cards get it from their study task).

    python studies/v1/scripts/fit_cost.py studies/v1/data/step_cost/*.json [studies/v1/data/study_bundled_timing:bundled ...]

A study folder's card written before the attention term gets it from the task named after a colon.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

import layerprof as lp
from layerprof.card.cost import ADAPTER_OVERHEAD, CostModel
from layerprof.place.placement import card_cost_model

ROOT = Path(__file__).resolve().parent.parent


def modelled(card, layers_list, overhead, attention=True):
    base = card_cost_model(card)
    model = CostModel(base.modules, base.head, overhead=overhead,
                      attention_flops_per_row=base.attention if attention else 0.0)
    return np.array([model.cost(layers, card.rank).fraction for layers in layers_list])


def load(source: str):
    """(label, card, [layers], measured fractions) of a study folder or a bench_step_cost JSON."""
    from layerprof.study.protocol import with_attention
    from layerprof.study.tasks import TASKS

    source, _, task = source.partition(":")
    path = Path(source)
    if path.is_dir():
        card = lp.LayerCard.load(path / "card.json")
        card = with_attention(card, TASKS[task]()) if task else card
        runs = [r for r in json.loads((path / "study.json").read_text())["runs"] if r["placement"] != "full"]
        return str(path), card, [r["layers"] for r in runs], np.array([r["step_time_fraction_of_full"] for r in runs])
    record = json.loads(path.read_text())
    card = with_attention(lp.LayerCard.load(ROOT / record["card"].replace("docs/", "data/", 1)), TASKS[record["task"]]())
    return (str(path), card, [p["layers"] for p in record["placements"]],
            np.array([p["measured"] for p in record["placements"]]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sources", nargs="+", help="folders written by `layerprof study` (FOLDER or FOLDER:TASK), "
                   "or bench_step_cost.py JSON files")
    args = p.parse_args(argv)
    data = [load(s) for s in args.sources]
    grid = np.linspace(0, 2000, 2001)
    fits = {}
    for attention in (False, True):
        err = [np.mean(np.concatenate([(modelled(c, ls, g, attention) - m) ** 2 for _, c, ls, m in data]))
               for g in grid]
        fits[attention] = float(grid[int(np.argmin(err))])
        print(f"least-squares γ over {sum(len(m) for *_, m in data)} placements, attention term "
              f"{'on' if attention else 'off'}: {fits[attention]:.0f} (default ADAPTER_OVERHEAD = {ADAPTER_OVERHEAD:.0f})")
    print("\nmean (largest) |modelled − measured| step-time fraction\n")
    print("| measured | placements | γ=0, no attention | γ=default, no attention | γ=default, attention "
          "| γ=fitted, attention |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, card, layers, measured in data:
        cells = []
        for g, attention in ((0.0, False), (ADAPTER_OVERHEAD, False), (ADAPTER_OVERHEAD, True), (fits[True], True)):
            e = np.abs(modelled(card, layers, g, attention) - measured)
            cells.append(f"{e.mean():.3f} ({e.max():.3f})")
        print(f"| {label} | {len(layers)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

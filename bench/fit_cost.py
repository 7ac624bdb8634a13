"""Fit the cost model's adapter overhead γ to measured LoRA step times, and check it.

Reads a `layerprof study` output folder (study.json + card.json), compares the
modelled cost fraction of every placement with its measured step time / full LoRA's,
and prints the least-squares γ (``layerprof.cost.ADAPTER_OVERHEAD``) and the error
with γ = 0, with the current default and with the fitted value.

    python bench/fit_cost.py docs/study_bundled_timing [docs/study_minilm_v2 ...]
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

import layerprof as lp
from layerprof.cost import ADAPTER_OVERHEAD, CostModel
from layerprof.placement import card_cost_model


def modelled(card, layers_list, overhead):
    base = card_cost_model(card)
    model = CostModel(base.modules, base.head, overhead=overhead)
    return np.array([model.cost(layers, card.rank).fraction for layers in layers_list])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("studies", nargs="+", help="folders written by `layerprof study`")
    args = p.parse_args(argv)
    data = []
    for folder in args.studies:
        card = lp.LayerCard.load(Path(folder) / "card.json")
        runs = [r for r in json.loads((Path(folder) / "study.json").read_text())["runs"] if r["placement"] != "full"]
        data.append((folder, card, [r["layers"] for r in runs],
                     np.array([r["step_time_fraction_of_full"] for r in runs])))
    grid = np.linspace(0, 2000, 2001)
    err = [np.mean(np.concatenate([(modelled(c, ls, g) - m) ** 2 for _, c, ls, m in data])) for g in grid]
    fitted = float(grid[int(np.argmin(err))])
    print(f"least-squares γ over {sum(len(m) for *_, m in data)} placements: {fitted:.0f} "
          f"(default ADAPTER_OVERHEAD = {ADAPTER_OVERHEAD:.0f})")
    print("| study | placements | mean abs error γ=0 | γ=default | γ=fitted |")
    print("|---|---:|---:|---:|---:|")
    for folder, card, layers, measured in data:
        e = [np.abs(modelled(card, layers, g) - measured).mean() for g in (0.0, ADAPTER_OVERHEAD, fitted)]
        print(f"| {folder} | {len(layers)} | {e[0]:.3f} | {e[1]:.3f} | {e[2]:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

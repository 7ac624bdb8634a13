"""Can any placement the study trained meet the cost-aware goal? (studies/v1/notebook.md, issue 10's third goal)

The goal asks the cost-aware recommendation to reach ≥ 90% of full LoRA at ≤ 60% of its step cost.
For each row (task @ budget) with a full-LoRA reference, this lists the distinct layer sets the study
trained (``studies/v1/data/study/TASK/study.json``, the candidates of ``TASK/candidates.json`` included) that
reach the gain, and their cost under the card's own cost model (``layerprof.place.placement.card_cost_model``,
the model `card.place(budget=...)` optimizes; deterministic, unlike the study's contended step
seconds). A row where none does says that no rule choosing among those placements meets the goal
there; it does not prove that no untried set would.

    python studies/v1/scripts/cost_feasible.py [--gain 0.9] [--cost 0.6] [--root studies/v1/data/study]
"""
from __future__ import annotations

import argparse
import os

from placement_rule import ROOT, study_rows


def trained_sets(placements: dict, extra: dict) -> dict[tuple, float]:
    """Distinct layer sets trained on one row -> their mean gain as a share of full LoRA."""
    full = placements.get("full", {}).get("mean")
    out = {}
    for name, p in {**placements, **extra}.items():
        # candidates.json keeps the mean gain only: its share of full LoRA is taken here.
        share = p.get("fraction_of_full", p["mean"] / full if full and "mean" in p else None)
        if name != "full" and share is not None:
            out.setdefault(tuple(p["layers"]), share)
    return out


def main() -> None:
    import layerprof as lp
    from layerprof.place.placement import card_cost_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gain", type=float, default=0.9, help="share of full LoRA to reach (default: %(default)s)")
    ap.add_argument("--cost", type=float, default=0.6, help="modelled cost cap, share of full LoRA (default: %(default)s)")
    ap.add_argument("--root", default=ROOT)
    args = ap.parse_args()
    print(f"| row | distinct sets trained | reaching ≥ {args.gain:.0%} at modelled cost ≤ {args.cost:.0%} | best of them |")
    print("|---|---:|---:|---|")
    rows = feasible = 0
    for study_dir, budget, study, extra in study_rows(args.root):
        placements = study["budgets"][budget]["placements"]
        card_path = os.path.join(study_dir, f"card_{budget}steps.json")
        if "full" not in placements or not os.path.exists(card_path):
            continue
        model = card_cost_model(lp.LayerCard.load(card_path))
        sets = trained_sets(placements, extra)
        costs = {layers: model.cost(list(layers), study["protocol"]["r"]).fraction for layers in sets}
        ok = sorted(((gain, layers, costs[layers]) for layers, gain in sets.items()
                     if gain >= args.gain and costs[layers] <= args.cost), reverse=True)
        rows += 1
        feasible += bool(ok)
        best = f"{list(ok[0][1])}: {ok[0][0]:.0%} at {ok[0][2]:.0%}" if ok else "–"
        print(f"| {os.path.basename(study_dir)} @ {budget} | {len(sets)} | {len(ok)} | {best} |")
    print(f"\n{feasible} of {rows} rows have at least one trained placement that meets both.")


if __name__ == "__main__":
    main()

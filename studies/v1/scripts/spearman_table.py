"""The Spearman goal on every stored probe row: Spearman(score, measured single-layer gain), 95% interval.

For each ``studies/v1/data/study/FOLDER/study.json`` with single-layer probes at a budget, rescore that budget's
stored card (``card_{budget}steps.json``) with each score and correlate it with the layers' mean
gains; the interval resamples each layer's seed runs (``layerprof.study.statistics.bootstrap_spearman``). Depth
(the layer index) is printed beside the scores as the no-statistics reference, and the seed ceiling
(``layerprof.study.statistics.seed_ceiling``: how well even the expected gains could correlate with the measured
seed means; where it is above the goal, the seeds' noise does not excuse a score's miss). A row counts
for the goal when its gains are separable (range > 3 × seed std, as the study records); a score
without its column on that card prints –.

Then, per task probed at two budgets, Spearman(gains at the short budget, gains at the long one) and
the best min(Spearman at either budget) a score blind to the budget can reach
(``study_summary.budget_agreement``, through ``layerprof.study.statistics.shared_ranking_bound``): where it is
below the goal, no such score meets the goal on that task, whatever it measures.

    python studies/v1/scripts/spearman_table.py [--scores resnorm2_rank_x_over_noise energy ...] [--goal 0.7]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
from pathlib import Path

from layerprof.card.card import LayerCard
from layerprof.card.scores import DEFAULT_SCORE, SCORES
from layerprof.study.protocol import rescore
from layerprof.study.statistics import bootstrap_spearman, seed_ceiling
from study_summary import budget_agreement

ROOT = os.path.join(os.path.dirname(__file__), "..", "data", "study")


def load_studies(root: str = ROOT) -> dict[str, dict]:
    """Every ``root/FOLDER/study.json``, by folder name."""
    studies = {}
    for path in sorted(glob.glob(os.path.join(root, "*", "study.json"))):
        with open(path) as f:
            studies[os.path.basename(os.path.dirname(path))] = json.load(f)
    return studies


def probe_rows(root: str = ROOT, studies: dict | None = None):
    """(row name, card path, per-layer seed gains, separable) for every budget with probes and a card."""
    for folder, study in (studies if studies is not None else load_studies(root)).items():
        for budget, rec in study["budgets"].items():
            probe = rec.get("probe") or {}
            card = os.path.join(root, folder, f"card_{budget}steps.json")
            if probe.get("gains") and os.path.exists(card):
                gains = [probe["gains"][str(i)] for i in range(len(probe["gains"]))]
                yield f"{folder}@{budget}", card, gains, bool(probe.get("separable"))


def cell(rho, lo, hi) -> str:
    return "–" if rho is None else f"{rho:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scores", nargs="+", choices=list(SCORES),
                    default=[DEFAULT_SCORE, "resnorm2_rank_over_noise", "energy", "sim_gain", "lca_gain"])
    ap.add_argument("--goal", type=float, default=0.7)
    ap.add_argument("--root", default=ROOT)
    args = ap.parse_args(argv)
    print("| row | separable | seed ceiling | " + " | ".join(args.scores) + " | depth |")
    print("|---|---|---:|" + "---|" * (len(args.scores) + 1))
    met = {s: [0, 0] for s in args.scores + ["depth"]}
    studies = load_studies(args.root)
    for name, card_path, gains, separable in probe_rows(args.root, studies):
        card = LayerCard.load(card_path)
        cells = []
        for s in args.scores:
            scored = rescore(card, s)
            r = bootstrap_spearman([l.score for l in scored.layers], gains) if scored else (None, None, None)
            cells.append(cell(*r))
            if separable and r[0] is not None:
                met[s][0] += r[0] >= args.goal
                met[s][1] += 1
        depth = bootstrap_spearman(list(range(len(gains))), gains)
        if separable:
            met["depth"][0] += depth[0] >= args.goal
            met["depth"][1] += 1
        ceiling = seed_ceiling(gains)
        print(f"| {name} | {'yes' if separable else 'no'} | {'–' if ceiling is None else f'{ceiling:.2f}'} | "
              + " | ".join(cells) + f" | {cell(*depth)} |")
    print("\nseparable rows at Spearman ≥ %.2f: " % args.goal
          + "; ".join(f"{s} {a} of {n}" for s, (a, n) in met.items()))
    print(f"\n| task | budgets | Spearman(short gains, long gains) | best a budget-blind score reaches at both |"
          f"\n|---|---|---:|---:|")
    for row in budget_agreement(studies, Path(args.root)):
        (b1, b2), r, best = row["budgets"], row["measured_agreement"], row["budget_blind_bound"]
        print(f"| {row['task']} | {b1}, {b2} | {r:+.2f} | {best:+.2f}{'' if best >= args.goal else ' (below the goal)'} |")

if __name__ == "__main__":
    main()

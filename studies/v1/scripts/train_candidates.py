"""Train placement candidates defined after a study ran, on the study's own rows, seeds and settings.

Round 5's addendum (studies/v1/notebook.md) defined **stratified-k** on a score: uniform-k's k equal depth
bins, and in each the layer with the highest score (``layerprof.place.placement.stratified_k``), on
activation energy and on ρ(r)²/noise amp. For each row (task @ budget) of ``studies/v1/data/study`` with a
card, this places each candidate at the study's k from that row's card, reuses the study's runs where
it measured the same layers, and trains the rest with the study's protocol and seeds
(``layerprof.study.protocol.train_placement``; runs cached in the study's runs.json, so an interrupted run
resumes). Results go to ``studies/v1/data/study/TASK/candidates.json``, which ``studies/v1/scripts/placement_rule.py`` reads
beside the study's own placements.

    OMP_NUM_THREADS=1 python studies/v1/scripts/train_candidates.py [--tasks bundled code ...] [--candidates NAME ...] [--root studies/v1/data/study]
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

import layerprof as lp

ROOT = Path(__file__).resolve().parent.parent / "data" / "study"
# Candidate name (as the study names card placements: "card <score label> <method>") -> the score it places
# by. Round 5: stratified-k on energy and ρ(r)²/noise amp; round 9: the cross-half (Rule 1) ρ(r)²×/noise amp,
# stratified-k and top-k (its cards need the column: studies/v1/scripts/add_rank_cross.py); round 10: the simulated and
# warm-up LCA gains, stratified-k.
CANDIDATES = {"card energy stratified-k": "energy",
              "card ρ(r)²/noise stratified-k": "resnorm2_rank_over_noise",
              "card ρ(r)²×/noise stratified-k": "resnorm2_rank_x_over_noise",
              "card ρ(r)²×/noise top-k": "resnorm2_rank_x_over_noise",
              # Round 10: the budget-aware columns (for the row's own step budget) with the placement that won.
              "card simulated stratified-k": "sim_gain",
              "card warm-up LCA stratified-k": "lca_gain"}
METHODS = ("stratified-k", "top-k")


def candidate_layers(card, k: int, names=None) -> dict[str, list[int]]:
    """Each candidate's layers on one card at k, as the study places them (``placement_sets``); a
    candidate whose score the card lacks is left out."""
    from layerprof.study.protocol import placement_sets

    out = {}
    for name in names or CANDIDATES:
        method = next(m for m in METHODS if name.endswith(" " + m))
        label = name.removesuffix(" " + method)
        sets = placement_sets(card, k, 0, {label: CANDIDATES[name]}, cost_cap=False)
        if name in sets:
            out[name] = sets[name]
    return out


def main(argv=None) -> None:
    from layerprof.study.protocol import Protocol, RunStore, measured_gains, train_placement
    from layerprof.study.tasks import TASKS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=ROOT, help="folder of TASK/study.json (default: studies/v1/data/study)")
    ap.add_argument("--tasks", nargs="*", help="tasks to run (default: every study under --root)")
    ap.add_argument("--candidates", nargs="*", choices=sorted(CANDIDATES), metavar="NAME",
                    help=f"candidates to place (default: all of {', '.join(CANDIDATES)})")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    folders = sorted(p.parent for p in args.root.glob("*/study.json"))
    for folder in folders:
        name = folder.name
        if args.tasks and name not in args.tasks:
            continue
        study = json.loads((folder / "study.json").read_text())
        proto = Protocol(**study["protocol"])
        store = RunStore(folder / "runs.json")
        out_path = folder / "candidates.json"
        out = json.loads(out_path.read_text()) if out_path.exists() else {}
        task = None
        for budget, b in study["budgets"].items():
            placements = b.get("placements") or {}
            card_path = folder / f"card_{budget}steps.json"
            if "uniform-k" not in placements or not card_path.exists():
                print(f"{name} @ {budget}: no placements or no card, skipped")
                continue
            card = lp.LayerCard.load(card_path)
            k = len(placements["uniform-k"]["layers"])
            kinds = {m.name: m.kind for m in card.modules}
            row = out.setdefault(budget, {})
            for cand, layers in candidate_layers(card, k, args.candidates).items():
                known = measured_gains(placements, layers)
                if known is not None:
                    gains = known
                else:
                    task = task or TASKS[name]()
                    gains = train_placement(task, card, layers, int(budget), proto, store, kinds)
                row[cand] = {"layers": layers, "gains": gains, "mean": statistics.mean(gains),
                             "std": statistics.stdev(gains) if len(gains) > 1 else 0.0,
                             "trained_here": known is None}
                print(f"{name} @ {budget}: {cand[5:]} {layers} mean gain {row[cand]['mean']:.4f}"
                      f"{'' if known is None else ' (the study measured it)'}", flush=True)
            out_path.write_text(json.dumps(out, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()

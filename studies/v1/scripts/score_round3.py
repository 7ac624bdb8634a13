"""Exploratory (not a rule): the simulated gain with a shrunk drift, against the measured probes of tasks 1–8.

Every task of studies/v1/data/study is profiled again on its own calibration batches (the sweep only); the
simulation runs with the card's κ per layer and the card's budget, once with the drift the card
uses (``drift="half"``: must reproduce the card's sim_gain up to the simulation's noise draw) and
once with ``drift="shrunk"`` (``layerprof.predict.simulate.simulated_gains``). Printed: Spearman of each
with the measured single-layer gains (mean of 3 seeds), beside the card's sim_gain and energy.
Every task here has already been seen, so this can only propose a round-3 candidate; a default
changes only after a rule written beforehand is confirmed on tasks not yet run.

    OMP_NUM_THREADS=1 python studies/v1/scripts/score_round3.py [--tasks bundled code ...]
    python studies/v1/scripts/score_round3.py --mix     # from the cards alone: sim_gain mixed with energy by noise share
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import layerprof as lp
from layerprof.model.batches import frozen_eval
from layerprof.card.budget import TrainingBudget
from layerprof.card.rankcorr import spearman
from layerprof.predict.simulate import simulated_gains
from layerprof.study.tasks import TASKS

ROOT = Path(__file__).resolve().parent.parent / "data" / "study"


def probed_cards(tasks):
    """(task name, steps, card, measured mean gain per layer) for every budget with probes."""
    for name in tasks:
        study = json.loads((ROOT / name / "study.json").read_text())
        for steps, entry in study["budgets"].items():
            probe = entry.get("probe") or {}
            if not probe.get("mean_gain"):
                continue
            card = lp.LayerCard.load(ROOT / name / f"card_{steps}steps.json")
            yield name, steps, card, [probe["mean_gain"][str(l.layer)] for l in card.layers], probe


def variants(task, card) -> dict[str, list[float]]:
    model = task.model()
    names = [m.name for m in card.modules if m.layer is not None]
    prof = lp.Profiler(model, targets=names, rank=card.rank)
    with frozen_eval(model), prof:
        for b in task.calibration:
            model(**b).loss.backward()
    budget = TrainingBudget(**{k: v for k, v in card.meta["budget"].items() if k in TrainingBudget.__dataclass_fields__})
    kappa = {m.name: card.layer(m.layer).kappa for m in card.modules if m.layer is not None}
    halves = {n: (prof.acc.half(0, n), prof.acc.half(1, n)) for n in names}
    rows = prof.rows / max(prof.acc.batches, 1)
    out = {}
    for drift in ("half", "shrunk"):
        gains = simulated_gains(halves, prof.acc.batches_per_half(), kappa, budget, calib_rows_per_batch=rows,
                                drift=drift)
        out[drift] = [sum(gains[m.name] for m in card.modules if m.layer == l.layer) for l in card.layers]
    return out


def mix(tasks) -> None:
    """Rank of sim_gain and rank of energy, weighted by 1 − the card's mean noise share and by ½ each."""
    import statistics

    from layerprof.card.rankcorr import average_ranks

    print("| task | steps | mean noise share | sim_gain | energy | mixed by noise share | mean of ranks |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    cols = []
    for name, steps, card, measured, _ in probed_cards(tasks):
        shares = [l.noise_share for l in card.layers if l.noise_share is not None]
        w = 1.0 - (min(max(statistics.mean(shares), 0.0), 1.0) if shares else 0.5)
        rs, re = average_ranks([l.sim_gain for l in card.layers]), average_ranks([l.energy for l in card.layers])
        row = [spearman(list(rs), measured), spearman(list(re), measured),
               spearman([w * a + (1 - w) * b for a, b in zip(rs, re)], measured),
               spearman([(a + b) / 2 for a, b in zip(rs, re)], measured)]
        cols.append(row)
        print(f"| {name} | {steps} | {1 - w:.2f} | " + " | ".join(f"{c:+.2f}" for c in row) + " |")
    print("| mean | | | " + " | ".join(f"{statistics.mean(c[i] for c in cols):+.3f}" for i in range(4)) + " |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=sorted(p.name for p in ROOT.iterdir() if p.is_dir()))
    ap.add_argument("--mix", action="store_true", help="only the card-based mixtures (no profiling)")
    args = ap.parse_args(argv)
    if args.mix:
        mix(args.tasks)
        return
    torch.set_num_threads(1)
    print("| task | steps | separable | card sim_gain | re-run, drift half | drift shrunk | energy |")
    print("|---|---:|---|---:|---:|---:|---:|")
    tasks = {}
    for name, steps, card, measured, probe in probed_cards(args.tasks):
        task = tasks.setdefault(name, TASKS[name]())
        v = variants(task, card)
        cols = [spearman([l.sim_gain for l in card.layers], measured), spearman(v["half"], measured),
                spearman(v["shrunk"], measured), spearman([l.energy for l in card.layers], measured)]
        print(f"| {name} | {steps} | {probe.get('separable')} | " + " | ".join(
            "–" if c is None else f"{c:+.2f}" for c in cols) + " |", flush=True)


if __name__ == "__main__":
    main()

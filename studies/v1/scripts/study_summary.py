"""Apply the pre-registered rules (studies/v1/notebook.md) to the study's tasks and print the goal tables.

Reads studies/v1/data/study/TASK/study.json (written by `layerprof study`) for every task present:

    python studies/v1/scripts/study_summary.py                      # Markdown to stdout
    python studies/v1/scripts/study_summary.py --json summary.json  # and the numbers as JSON

1. Round 1: over the separable (task, budget) pairs of tasks 1–3, the candidate with the highest
   mean Spearman(score, measured single-layer gain) (ties within 0.05 go to the cheaper one);
   tasks 4–6 reported without retuning.
2. Round 2: the same over tasks 1–6, where the best replaces energy only by a margin of 0.10;
   confirmed if on tasks 7–8 its mean is at least energy's.
3. How far the measured rankings at the two budgets agree, and what that bounds.
4. Placements at k = L/4 with the resulting default: each placement's share of full LoRA, the
   card's placement against the mean of the baselines and the random-k mean ± seed std.
5. What the predicted-gain columns cost.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

EXISTING = ("bundled", "code", "minilm")
NEW = ("deep", "deep-code", "minilm-code")
CONFIRM = ("docstrings", "deep-docstrings")   # round 2's confirmation tasks
MARGIN = 0.10   # round 2: a candidate replaces energy only if its mean Spearman is this much higher
# Card columns that may become the default, cheapest first (the rule's tie-break order).
CANDIDATES = ("resnorm2", "resnorm2_rank", "resnorm2_over_noise", "resnorm2_rank_over_noise", "energy",
              "resnorm2_x", "grad_norm2_x", "sim_gain", "lca_gain")
REFERENCE = ("grad_norm", "act_norm", "nfn", "depth")  # reported, never the default
TIE = 0.05


def load(root: Path) -> dict[str, dict]:
    out = {}
    for task in EXISTING + NEW + CONFIRM:
        path = root / task / "study.json"
        if path.exists():
            out[task] = json.loads(path.read_text(encoding="utf-8"))
    return out


def probe_table(studies: dict, tasks: tuple) -> tuple[dict, list]:
    """{candidate: {(task, budget): rho}} over every probed pair, and the separable pairs."""
    table: dict[str, dict] = {c: {} for c in CANDIDATES + REFERENCE}
    counted = []
    for task in tasks:
        for steps, entry in studies.get(task, {}).get("budgets", {}).items():
            probe = entry.get("probe")
            if not probe:
                continue
            if probe["separable"]:
                counted.append((task, steps))
            for c in table:
                s = probe["spearman"].get(c)
                if s and s["rho"] is not None:
                    table[c][(task, steps)] = (s["rho"], s["lo"], s["hi"])
    return table, counted


def apply_rule(table: dict, counted: list) -> tuple[str | None, dict]:
    means = {c: float(np.mean([table[c][p][0] for p in counted])) for c in CANDIDATES
             if counted and all(p in table[c] for p in counted)}
    if not means:
        return None, means
    best = max(means.values())
    winner = next(c for c in CANDIDATES if c in means and means[c] >= best - TIE)  # cheapest among the tied
    return winner, means


def round2(table: dict, counted: list, cheap: tuple = CANDIDATES) -> tuple[str, dict]:
    """Round 2's decision: the best candidate among ``cheap`` replaces energy only by ≥ MARGIN."""
    winner, means = apply_rule({c: table[c] for c in table if c in cheap or c in REFERENCE}, counted)
    if winner is None or winner == "energy" or means[winner] < means.get("energy", -np.inf) + MARGIN:
        return "energy", means
    return winner, means


def budget_agreement(studies: dict, cards_root: Path) -> list[dict]:
    """Why a budget-blind score cannot rank both budgets: the measured rankings' own agreement.

    Spearman is the Pearson correlation of rank vectors, i.e. the cosine of the angle between the
    centred rank vectors, so a score's best min(ρ_short, ρ_long) is bounded by how far the two
    measured rankings disagree (``layerprof.study.statistics.shared_ranking_bound``). ``reliability`` is the split-seed reliability of a 3-seed mean
    (1 − seed variance / 3 / variance of the layer means): the ceiling any score has from noise.
    """
    from layerprof.card.card import LayerCard
    from layerprof.study.statistics import shared_ranking_bound
    from layerprof.card.rankcorr import spearman

    rows = []
    for task, study in studies.items():
        probes = {int(b): e["probe"] for b, e in study.get("budgets", {}).items() if e.get("probe")}
        if len(probes) != 2:
            continue
        (b1, p1), (b2, p2) = sorted(probes.items())
        layers = sorted(p1["mean_gain"], key=int)
        m1 = [p1["mean_gain"][l] for l in layers]
        m2 = [p2["mean_gain"][l] for l in layers]
        rho = spearman(m1, m2)
        row = {"task": task, "budgets": (b1, b2), "measured_agreement": rho, "budget_blind_bound": shared_ranking_bound(rho),
               "reliability": {}}
        for b, p in probes.items():
            g = np.array([p["gains"][l] for l in layers])
            row["reliability"][b] = float(1 - g.var(axis=1, ddof=1).mean() / g.shape[1] / g.mean(axis=1).var(ddof=1))
        for score in ("sim_gain", "lca_gain"):
            paths = [cards_root / task / f"card_{b}steps.json" for b in (b1, b2)]
            if not all(path.exists() for path in paths):
                continue
            c1, c2 = (LayerCard.load(path) for path in paths)
            v1, v2 = ([getattr(l, score) for l in c.layers] for c in (c1, c2))
            if any(v is None for v in v1 + v2):
                continue
            own = spearman(v1, v2)
            row[f"{score}_agreement"] = own
            row[f"{score}_bound"] = shared_ranking_bound(rho, own)
        rows.append(row)
    return rows


def placement_table(studies: dict, default: str | None) -> list[dict]:
    from layerprof.study.report import baseline_mean

    from layerprof.study.protocol import COST_BUDGET, PLACEMENT_SCORES

    label = {score: name for name, score in PLACEMENT_SCORES.items()}.get(default or "")
    rows = []
    for task, study in studies.items():
        for steps, entry in study.get("budgets", {}).items():
            pl = entry.get("placements") or {}
            if "full" not in pl or not label or f"{label} top-k" not in pl:
                continue
            full = pl["full"]["mean"]
            rand = [r for n, r in pl.items() if n.startswith("random-k")]
            rand_mean = float(np.mean([r["mean"] for r in rand]))
            seed_std = float(np.mean([r["std"] for r in rand]))
            base = baseline_mean(pl)
            card = pl[f"{label} top-k"]
            coupled = pl.get(f"{label} coupled greedy")
            cheap = pl.get(f"{label} cost ≤ {COST_BUDGET}")
            rows.append({"task": task, "steps": steps, "card_layers": card["layers"],
                         "card": card["mean"] / full, "coupled": coupled["mean"] / full if coupled else None,
                         "baselines_mean": base / full, "random_mean": rand_mean / full,
                         "card_minus_random_in_seed_stds": (card["mean"] - rand_mean) / seed_std if seed_std else None,
                         "card_step_time": card["step_seconds"] / pl["full"]["step_seconds"],
                         "cost_aware_layers": cheap["layers"] if cheap else None,
                         "cost_aware": cheap["mean"] / full if cheap else None,
                         "cost_aware_step_time": cheap["step_seconds"] / pl["full"]["step_seconds"] if cheap else None,
                         "per_baseline": {n: r["mean"] / full for n, r in pl.items()
                                          if not n.startswith("card") and n != "full" and not n.startswith("random")}})
    return rows


def cost_table(root: Path) -> list[dict]:
    """Sweep, simulation and warm-up cost of every study card (all timed inside one lp.profile call)."""
    rows = []
    for path in sorted(root.glob("*/card_*steps.json")):
        meta = json.loads(path.read_text(encoding="utf-8"))["meta"]
        if "simulate" not in meta or "warmup" not in meta:
            continue
        rows.append({"task": path.parent.name, "steps": meta["budget"]["steps"], "sweep": meta["sweep"]["seconds"],
                     "simulate": meta["simulate"]["seconds"], "warmup_steps": meta["warmup"]["steps"],
                     "warmup_share": meta["warmup"]["cost_of_full_lora_finetune"]})
    return sorted(rows, key=lambda r: (r["task"], r["steps"]))


def _pct(v) -> str:
    return "–" if v is None else format(v, ".0%")


def _print_probe_table(name: str, table: dict, counted: list, means: dict) -> None:
    pairs = sorted({p for d in table.values() for p in d})
    print(f"## {name}: Spearman(score, measured single-layer gain) [95% bootstrap]\n")
    print("| score | " + " | ".join(f"{t} @ {s}{'' if (t, s) in counted else ' (not separable)'}"
                                   for t, s in pairs) + " | mean over counted |")
    print("|---|" + "---:|" * (len(pairs) + 1))
    for c, d in table.items():
        cells = [f"{d[p][0]:+.2f} [{d[p][1]:+.2f}, {d[p][2]:+.2f}]" if p in d and d[p][1] is not None
                 else (f"{d[p][0]:+.2f}" if p in d else "–") for p in pairs]
        m = means.get(c)
        print(f"| {c} | " + " | ".join(cells) + f" | {'–' if m is None else format(m, '+.2f')} |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent / "data" / "study")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    studies = load(args.root)
    out: dict = {}
    rounds = (("round 1, tasks 1–3 (decides)", EXISTING, apply_rule), ("round 1, tasks 4–6 (reported)", NEW, apply_rule),
              ("round 2, tasks 1–6 (decides)", EXISTING + NEW, round2), ("round 2, tasks 7–8 (confirms)", CONFIRM, apply_rule))
    for name, tasks, rule in rounds:
        table, counted = probe_table(studies, tasks)
        if not counted and not any(table.values()):
            continue
        winner, means = rule(table, counted)
        out[name] = {"counted": counted, "winner": winner, "means": means,
                     "table": {c: {f"{t}@{s}": v for (t, s), v in d.items()} for c, d in table.items()}}
        _print_probe_table(name, table, counted, means)
        print(f"\nBest by the rule on {name}: {winner} (counted pairs: {counted})\n")
    default = out.get("round 2, tasks 1–6 (decides)", {}).get("winner", "energy")
    confirm = out.get("round 2, tasks 7–8 (confirms)")
    if confirm and confirm["counted"]:
        m = confirm["means"]
        kept = m.get(default, -np.inf) >= m.get("energy", np.inf)
        print(f"Round 2 confirmation: {default} {m.get(default, float('nan')):+.2f} vs energy "
              f"{m.get('energy', float('nan')):+.2f} on tasks 7–8 → default {'stands' if kept else 'goes back to energy'}\n")
        out["confirmed"] = bool(kept)
        default = default if kept else "energy"
    out["default"] = default
    agreement = budget_agreement(studies, args.root)
    out["agreement"] = agreement
    if agreement:
        print("## Measured rankings across budgets: the bound on a budget-blind score\n")
        print("| task | budgets | Spearman(measured short, measured long) | best min(ρ_short, ρ_long) of a budget-blind "
              "score | reliability of a 3-seed mean (short, long) | sim_gain: own agreement, bound | "
              "lca_gain: own agreement, bound |")
        print("|---|---|---:|---:|---|---|---|")
        for r in agreement:
            rel = ", ".join(f"{r['reliability'][b]:.2f}" for b in r["budgets"])
            pair = lambda k: (f"{r[k + '_agreement']:+.2f}, ≤ {r[k + '_bound']:+.2f}"  # noqa: E731
                              if k + "_bound" in r else "–")
            print(f"| {r['task']} | {r['budgets'][0]} / {r['budgets'][1]} | {r['measured_agreement']:+.2f} | "
                  f"≤ {r['budget_blind_bound']:+.2f} | {rel} | {pair('sim_gain')} | {pair('lca_gain')} |")
        print()
    rows = placement_table(studies, default)
    out["placements"] = rows
    if rows:
        print(f"## Placements at k = L/4, default score {default} (fractions of full LoRA)\n")
        print("| task | steps | card layers | card | coupled greedy | mean of baselines | random-k mean | "
              "card − random (seed stds) | card step time | cost ≤ 0.6 layers | its gain | its step time |")
        print("|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|")
        for r in rows:
            print(f"| {r['task']} | {r['steps']} | {r['card_layers']} | {r['card']:.0%} | "
                  f"{_pct(r['coupled'])} | {r['baselines_mean']:.0%} | "
                  f"{r['random_mean']:.0%} | {r['card_minus_random_in_seed_stds']:+.1f} | {r['card_step_time']:.0%} | "
                  f"{r['cost_aware_layers']} | {_pct(r['cost_aware'])} | {_pct(r['cost_aware_step_time'])} |")
        print(f"\nMean over rows: card {np.mean([r['card'] for r in rows]):.1%}, mean of baselines "
              f"{np.mean([r['baselines_mean'] for r in rows]):.1%}")
    costs = cost_table(args.root)
    out["costs"] = costs
    if costs:
        print("\n## What the predicted-gain columns cost (measured in the card's own profile call)\n")
        print("| task | budget | sweep s | simulated LoRA s (× sweep) | warm-up steps (share of the fine-tune's steps) |")
        print("|---|---:|---:|---:|---:|")
        for c in costs:
            print(f"| {c['task']} | {c['steps']} | {c['sweep']:.1f} | {c['simulate']:.1f} ({c['simulate'] / c['sweep']:.2f}×) | "
                  f"{c['warmup_steps']} ({c['warmup_share']:.0%}) |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()

"""Apply the pre-registered rule (docs/RESULTS.md) to the study's tasks and print the goal tables.

Reads docs/study/TASK/study.json (written by `layerprof validate`) for every task present:

    python bench/study_summary.py                      # Markdown to stdout
    python bench/study_summary.py --json summary.json  # and the numbers as JSON

1. The rule, on the existing tasks (bundled, code, minilm): over the (task, budget) pairs
   whose single-layer gains are separable, the candidate with the highest mean Spearman is
   the default (ties within 0.05 go to the cheaper candidate).
2. The same table on the new tasks (deep, deep-code, minilm-code), reported without retuning.
3. Placements at k = L/4: each placement's share of full LoRA per task and budget, the card's
   default placement against the mean of the baselines and the random-k mean ± seed std.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

EXISTING = ("bundled", "code", "minilm")
NEW = ("deep", "deep-code", "minilm-code")
# Card columns that may become the default, cheapest first (the rule's tie-break order).
CANDIDATES = ("resnorm2", "resnorm2_rank", "resnorm2_over_noise", "resnorm2_rank_over_noise", "energy",
              "resnorm2_x", "grad_norm2_x", "sim_gain", "lca_gain")
REFERENCE = ("grad_norm", "act_norm", "nfn", "depth")  # reported, never the default
TIE = 0.05


def load(root: Path) -> dict[str, dict]:
    out = {}
    for task in EXISTING + NEW:
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


def placement_table(studies: dict, default: str | None) -> list[dict]:
    from layerprof.protocol_report import baseline_mean

    from layerprof.protocol import COST_BUDGET, PLACEMENT_SCORES

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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "study")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    studies = load(args.root)
    out: dict = {}
    for name, tasks in (("existing", EXISTING), ("new", NEW)):
        table, counted = probe_table(studies, tasks)
        winner, means = apply_rule(table, counted)
        out[name] = {"counted": counted, "winner": winner, "means": means,
                     "table": {c: {f"{t}@{s}": v for (t, s), v in d.items()} for c, d in table.items()}}
        pairs = sorted({p for d in table.values() for p in d})
        print(f"## {name} tasks: Spearman(score, measured single-layer gain) [95% bootstrap]\n")
        print("| score | " + " | ".join(f"{t} @ {s}{'' if (t, s) in counted else ' (not separable)'}"
                                       for t, s in pairs) + " | mean over counted |")
        print("|---|" + "---:|" * (len(pairs) + 1))
        for c, d in table.items():
            cells = [f"{d[p][0]:+.2f} [{d[p][1]:+.2f}, {d[p][2]:+.2f}]" if p in d and d[p][1] is not None
                     else (f"{d[p][0]:+.2f}" if p in d else "–") for p in pairs]
            m = means.get(c)
            print(f"| {c} | " + " | ".join(cells) + f" | {'–' if m is None else format(m, '+.2f')} |")
        print(f"\nRule's winner on the {name} tasks: {winner} (counted pairs: {counted})\n")
    default = out["existing"]["winner"]
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

"""The placement study's report: Markdown tables and JSON from ``layerprof.protocol.summarize``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .finalize import SCORE_LABELS

BASELINES = ("random-k", "first-k", "last-k", "uniform-k", "middle-k", "grad-norm top-k", "act-norm top-k",
             "nfn top-k")


def baseline_mean(rows: dict) -> float | None:
    """Mean gain of the baselines, random-k counted once (the mean of its draws)."""
    vals = []
    rand = [r["mean"] for n, r in rows.items() if n.startswith("random-k")]
    if rand:
        vals.append(float(np.mean(rand)))
    vals += [rows[n]["mean"] for n in BASELINES[1:] if n in rows]
    return float(np.mean(vals)) if vals else None


def markdown(task: str, summary: dict, cards: dict, proto) -> str:
    lines = [f"# Placement study — {task}", "",
             f"LoRA r = {proto.r}, alpha = {proto.lora_alpha:g}, lr = {proto.lr:g}; {proto.seeds} seeds per run "
             f"(adapter init seeded; identical batches); budgets {', '.join(map(str, proto.budgets))} steps. "
             "Gain = eval-loss improvement (nats/token), mean ± seed std.", ""]
    for steps, entry in summary["budgets"].items():
        card = cards[int(steps)]
        lines += [f"## {steps} steps", ""]
        probe = entry.get("probe")
        if probe:
            lines += ["### Single-layer probes", "",
                      "| layer | measured gain | " + " | ".join(SCORE_LABELS.get(n, n) for n in
                                                              ("resnorm2", "resnorm2_x", "sim_gain", "lca_gain")) + " |",
                      "|---:|---:|---:|---:|---:|---:|"]
            for l in card.layers:
                g = probe["gains"][str(l.layer)]
                lines.append(f"| {l.layer} | {np.mean(g):.4f} ± {np.std(g, ddof=1) if len(g) > 1 else 0:.4f} | "
                             f"{l.resnorm ** 2:.4g} | {_f(l.resnorm2_x)} | {_f(l.sim_gain)} | {_f(l.lca_gain)} |")
            lines += ["", f"Layer means span {probe['range']:.4f}; one run's seed std is {probe['seed_std']:.4f} "
                      f"({'separable' if probe['separable'] else 'NOT separable'}: range "
                      f"{'>' if probe['separable'] else '≤'} 3 × seed std).", "",
                      "| score | Spearman with measured | 95% bootstrap interval (seeds) |", "|---|---:|---|"]
            for name, s in sorted(probe["spearman"].items(), key=lambda kv: -(kv[1]["rho"] or -9)):
                lines.append(f"| {SCORE_LABELS.get(name, name)} | {_s(s['rho'])} | {_interval(s)} |")
            lines.append("")
        rows = entry.get("placements") or {}
        if rows:
            base = baseline_mean(rows)
            lines += [f"### Placements at k = {proto.k or card.default_layers()} of {len(card.layers)} layers", "",
                      "| placement | layers | gain | % of full | step s |", "|---|---|---:|---:|---:|"]
            for name, r in rows.items():
                pct = "–" if r["fraction_of_full"] is None else f"{r['fraction_of_full']:.0%}"
                lines.append(f"| {name} | {r['layers']} | {r['mean']:.4f} ± {r['std']:.4f} | {pct} | "
                             f"{r['step_seconds']:.3f} |")
            if base is not None:
                lines += ["", f"Mean of the baselines (random-k once): {base:.4f}."]
            lines.append("")
    return "\n".join(lines) + "\n"


def write_study(task: str, summary: dict, cards: dict, proto, out: Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "study.md", "json": out / "study.json"}
    paths["markdown"].write_text(markdown(task, summary, cards, proto), encoding="utf-8")
    paths["json"].write_text(json.dumps({"task": task, "protocol": proto.__dict__, **summary}, indent=1),
                             encoding="utf-8")
    return paths


def _interval(s: dict) -> str:
    return "–" if s["lo"] is None else f"[{s['lo']:+.2f}, {s['hi']:+.2f}]"


def _f(v) -> str:
    return "–" if v is None else f"{v:.4g}"


def _s(v) -> str:
    return "–" if v is None else f"{v:+.2f}"

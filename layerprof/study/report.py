"""The placement study's report: Markdown tables and JSON from ``layerprof.study.protocol.summarize``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..card.scores import score_label

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
                      "| layer | measured gain | " + " | ".join(score_label(n) for n in
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
                lines.append(f"| {score_label(name)} | {_s(s['rho'])} | {_interval(s)} |")
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
            lines += _additivity(entry, card)
            lines.append("")
    return "\n".join(lines) + "\n"


def _additivity(entry: dict, card) -> list[str]:
    """Measured gain of each multi-layer placement against the sum of its layers' single gains."""
    probe, rows = entry.get("probe"), entry.get("placements") or {}
    if not probe:
        return []
    single = {int(k): v for k, v in probe["mean_gain"].items()}
    coupled = bool(card.meta.get("coupling"))
    out = ["", "Additivity (measured / Σ single-layer gains" + (", and the coupled model's joint/additive ratio"
                                                              if coupled else "") + "):", "",
           "| layers | measured | Σ single | measured / Σ |" + (" coupled / additive |" if coupled else ""),
           "|---|---:|---:|---:|" + ("---:|" if coupled else "")]
    seen = set()
    for r in rows.values():
        key = tuple(r["layers"])
        if len(key) < 2 or key in seen:
            continue
        seen.add(key)
        total = sum(single[l] for l in key)
        line = f"| {list(key)} | {r['mean']:.4f} | {total:.4f} | {r['mean'] / total if total else float('nan'):.2f} |"
        if coupled:
            line += f" {_coupled_ratio(card, list(key)):.2f} |"
        out.append(line)
    return out


def _coupled_ratio(card, layers: list[int]) -> float:
    from ..predict.coupling import joint_gain

    c = card.meta["coupling"]
    idx = [c["layers"].index(l) for l in layers]
    b = [max(card.layer(l).score, 0.0) for l in layers]
    rho = np.asarray(c["rho"])[np.ix_(idx, idx)]
    return joint_gain(b, rho) / (0.5 * sum(b)) if sum(b) else float("nan")


def plots(summary: dict, cards: dict, out: Path) -> dict[str, Path]:
    """Per budget: placements' gain vs step time (fractions of full LoRA); the card's score vs measured gains."""
    from matplotlib.figure import Figure

    from ..output.plots import CHOSEN, OTHER

    paths = {}
    for steps, entry in summary["budgets"].items():
        rows = entry.get("placements") or {}
        full = rows.get("full")
        if rows and full and full["mean"] > 0 and full["step_seconds"] > 0:
            fig = Figure(figsize=(7, 4.5), layout="constrained")
            ax = fig.add_subplot()
            groups: dict[tuple, list[str]] = {}  # one point per layer set, named by every placement that chose it
            for name, r in rows.items():
                groups.setdefault(tuple(r["layers"]), []).append(name)
            for names in groups.values():
                r = rows[names[0]]
                x, y = r["step_seconds"] / full["step_seconds"], r["mean"] / full["mean"]
                colour = CHOSEN if any(n.startswith("card") for n in names) else OTHER
                ax.errorbar(x, y, yerr=r["std"] / full["mean"], fmt="o", color=colour, ms=4, capsize=2)
                ax.annotate(f"{list(r['layers'])}: " + ", ".join(n.removesuffix(" top-k") for n in names), (x, y),
                            fontsize=5, xytext=(3, 2), textcoords="offset points")
            ax.set_xlabel("step time, fraction of full LoRA (measured)")
            ax.set_ylabel("eval gain, fraction of full LoRA")
            ax.set_title(f"{steps} steps: card placements (red) and baselines (blue)", fontsize=9)
            paths[f"placements_{steps}"] = out / f"placements_{steps}steps.png"
            fig.savefig(paths[f"placements_{steps}"], dpi=120)
        probe = entry.get("probe")
        if probe:
            card = cards[int(steps)]
            fig = Figure(figsize=(4 * 3, 3.4), layout="constrained")
            for i, key in enumerate(("resnorm2", "sim_gain", "lca_gain")):
                ax = fig.add_subplot(1, 3, i + 1)
                xs = [SCORES_FOR_PLOT[key](l) for l in card.layers]
                if any(x is None for x in xs):
                    continue
                ys = [np.mean(probe["gains"][str(l.layer)]) for l in card.layers]
                es = [np.std(probe["gains"][str(l.layer)], ddof=1) for l in card.layers]
                ax.errorbar(xs, ys, yerr=es, fmt="o", color=OTHER, capsize=2)
                for l, x, y in zip(card.layers, xs, ys):
                    ax.annotate(str(l.layer), (x, y), fontsize=7)
                rho = probe["spearman"].get(key, {}).get("rho")
                ax.set_title(f"{score_label(key)}: Spearman {_s(rho)}", fontsize=9)
                ax.set_ylabel("measured single-layer gain" if i == 0 else "")
            paths[f"probes_{steps}"] = out / f"probes_{steps}steps.png"
            fig.savefig(paths[f"probes_{steps}"], dpi=120)
    return paths


SCORES_FOR_PLOT = {"resnorm2": lambda l: l.resnorm ** 2, "sim_gain": lambda l: l.sim_gain,
                   "lca_gain": lambda l: l.lca_gain}


def write_study(task: str, summary: dict, cards: dict, proto, out: Path) -> dict[str, Path]:
    from ..utils.fileio import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "study.md", "json": out / "study.json"}
    atomic_write_text(paths["markdown"], markdown(task, summary, cards, proto))
    atomic_write_text(paths["json"], json.dumps({"task": task, "protocol": proto.__dict__, **summary}, indent=1))
    paths.update(plots(summary, cards, out))
    return paths


def _interval(s: dict) -> str:
    return "–" if s["lo"] is None else f"[{s['lo']:+.2f}, {s['hi']:+.2f}]"


def _f(v) -> str:
    return "–" if v is None else f"{v:.4g}"


def _s(v) -> str:
    return "–" if v is None else f"{v:+.2f}"

"""Study v2's figures, from studies/v2/data/runs.json alone (PROTOCOL.md, "Figures").

    python studies/v2/analyze.py                 # Markdown tables
    python studies/v2/analyze.py --json          # every figure, for docs and tests

A row is a task × budget with every seed of full LoRA. For placement X at seed s the gain is g_X,s; the
paired difference of the default (or a candidate) A against a comparator B is
d_s = 100 · (g_A,s − g_B,s) / ḡ_full in points of full-LoRA gain. Intervals: percentile bootstrap over
seeds (10,000 resamples, seed 0 of numpy's generator), stratified by row when pooled. Random-k: the five
draws, each averaged over seeds; their mean, and their std (the protocol's "seed-std of the five
draws' gains"); the default's distance to that mean in those stds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RUNS = HERE / "data" / "runs.json"
REPS = 10_000
SEEDS = 3                     # a row counts once full LoRA and the default have every seed
EXPECTED_ROWS = {"smollm2": 6, "minilm": 4}   # 3 tasks × 2 budgets; 2 tasks × 2 budgets
FULL = "full LoRA r=8"
CANDIDATES = ("default", "budget-aware", "module-level")
RANDOM = "random-k"
# Everything a practitioner could use instead: the best of these per row is the harshest comparator.
BASELINES = ("uniform-k", "depth rule", "bin-first", "first-k", "last-k", "middle-k", "grad-norm top-k",
             "act-norm top-k", "1-CKA top-k", "KappaTune", "all layers", RANDOM)
# The decision rule's order of simplicity (PROTOCOL.md, step 3).
SIMPLEST_FIRST = ("uniform-k", "depth rule", "bin-first", "first-k", "middle-k", "last-k", "all layers",
                  "KappaTune", "1-CKA top-k", "act-norm top-k", "grad-norm top-k", "module-level", "budget-aware",
                  "default")


def family(label: str) -> str:
    """A run label's placement family: random draws pool as random-k, "all layers r=N" as all layers."""
    if label.startswith("random-k draw"):
        return RANDOM
    if label.startswith("all layers"):
        return "all layers"
    return label


def rows_of(runs: list[dict]) -> dict[tuple[str, int], dict[str, dict[int, float]]]:
    """{(task, steps): {placement: {seed: gain}}} for rows with full LoRA at every seed that appears;
    random-k's gain at a seed is the mean of the draws; probes are left out."""
    table: dict[tuple[str, int], dict[str, dict[int, list[float]]]] = {}
    draws: dict[tuple[str, int], dict[str, dict[int, float]]] = {}
    for r in runs:
        for label in r["labels"]:
            if label.startswith("probe"):
                continue
            key = (r["task"], r["steps"])
            table.setdefault(key, {}).setdefault(family(label), {}).setdefault(r["seed"], []).append(r["gain"])
            if family(label) == RANDOM:
                draws.setdefault(key, {}).setdefault(label, {})[r["seed"]] = r["gain"]
    out = {}
    for key, placements in table.items():
        seeds = sorted(placements.get(FULL, {}))
        if not seeds:
            continue
        out[key] = {p: {s: statistics.mean(g[s]) for s in seeds if s in g} for p, g in placements.items()}
        out[key]["_draws"] = draws.get(key, {})
    return out


def _boot(diffs: list[np.ndarray], rng: np.random.Generator) -> tuple[float, float]:
    """95% percentile interval of the mean of row means, resampling seeds within each row."""
    means = np.zeros(REPS)
    for d in diffs:
        idx = rng.integers(0, len(d), size=(REPS, len(d)))
        means += d[idx].mean(1)
    means /= len(diffs)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired(row: dict, a: str, b: str) -> np.ndarray | None:
    """d_s for every seed both placements ran, in points of the row's mean full-LoRA gain."""
    full = statistics.mean(row[FULL].values())
    if a not in row or b not in row or full <= 0:
        return None
    seeds = sorted(set(row[a]) & set(row[b]))
    return np.array([100 * (row[a][s] - row[b][s]) / full for s in seeds]) if seeds else None


def best_baseline(row: dict) -> str | None:
    have = [b for b in BASELINES if b in row and len(row[b]) == len(row[FULL])]
    return max(have, key=lambda b: (statistics.mean(row[b].values()), b)) if have else None


def compare(rows: dict, a: str, b: str, keys: list) -> dict:
    """Per row and pooled: the mean paired difference of ``a`` against ``b`` (or "best baseline")."""
    rng = np.random.default_rng(0)
    per_row, diffs = {}, []
    for key in keys:
        row = rows[key]
        against = best_baseline(row) if b == "best baseline" else b
        d = paired(row, a, against) if against else None
        if d is None or not len(d):
            continue
        lo, hi = _boot([d], rng)
        per_row[f"{key[0]}@{key[1]}"] = {"against": against, "mean": float(d.mean()), "lo": lo, "hi": hi,
                                         "seeds": len(d)}
        diffs.append(d)
    if not diffs:
        return {"rows": per_row}
    lo, hi = _boot(diffs, rng)
    means = [float(d.mean()) for d in diffs]
    return {"rows": per_row, "pooled": {"mean": statistics.mean(means), "median": statistics.median(means),
                                        "lo": lo, "hi": hi, "n_rows": len(diffs)}}


def shares(rows: dict, keys: list) -> dict:
    """Each placement's share of full LoRA: mean and median of per-row ratios, and Σgain / Σfull."""
    out = {}
    names = sorted({p for k in keys for p in rows[k] if not p.startswith("_")})
    for p in names:
        ks = [k for k in keys if p in rows[k]]
        g = [statistics.mean(rows[k][p].values()) for k in ks]
        f = [statistics.mean(rows[k][FULL].values()) for k in ks]
        ratios = [x / y for x, y in zip(g, f) if y > 0]
        if ratios:
            out[p] = {"mean": statistics.mean(ratios), "median": statistics.median(ratios),
                      "sum_ratio": sum(g) / sum(f), "rows": len(ratios)}
    return out


def random_distance(rows: dict, keys: list, a: str = "default") -> dict:
    """Per row: random-k's mean and std over its five seed-averaged draws; ``a``'s distance in those stds."""
    out = {}
    for key in keys:
        row = rows[key]
        draws = [statistics.mean(d.values()) for d in row["_draws"].values() if d]
        if len(draws) < 2 or a not in row:
            continue
        mean, std = statistics.mean(draws), statistics.stdev(draws)
        out[f"{key[0]}@{key[1]}"] = {"random_mean": mean, "random_std": std,
                                     "distance": (statistics.mean(row[a].values()) - mean) / std if std > 0 else None}
    return out


def beats(rows: dict, keys: list, a: str, b: str) -> bool:
    p = compare(rows, a, b, keys).get("pooled")
    return bool(p) and p["lo"] > 0


def passes(rows: dict, keys: list, a: str) -> bool:
    """The decision rule's test: ≥ 2 points over uniform-k and the depth rule pooled, interval above
    zero, and never more than 2 stds below random-k's mean."""
    for b in ("uniform-k", "depth rule"):
        p = compare(rows, a, b, keys).get("pooled")
        if not p or p["mean"] < 2 or p["lo"] <= 0:
            return False
    return all(v["distance"] is None or v["distance"] >= -2 for v in random_distance(rows, keys, a).values())


def decision(rows: dict, keys: list) -> dict:
    """PROTOCOL.md's decision rule on the rows ``keys``."""
    if passes(rows, keys, "default"):
        return {"default": "default", "why": "the default passes"}
    passing = [c for c in CANDIDATES[1:] if passes(rows, keys, c)]
    if passing:
        best = max(passing, key=lambda c: compare(rows, c, "uniform-k", keys)["pooled"]["mean"])
        return {"default": best, "why": f"{best} passes; the default does not"}
    present = [r for r in SIMPLEST_FIRST if all(r in rows[k] for k in keys)]
    for rule in present:
        if not any(beats(rows, keys, other, rule) for other in present if other != rule):
            return {"default": rule, "why": "no candidate passes; the simplest rule nothing beats"}
    return {"default": None, "why": "every rule is beaten by another"}


def probe_spearman(runs: list[dict], study: Path) -> dict:
    """Per task (at the budget the probes ran): Spearman of each card score with the measured single-layer
    gains (each layer's mean over seeds), from the task's card.json beside runs.json."""
    from layerprof.card.card import LayerCard
    from layerprof.card.rankcorr import spearman
    from layerprof.card.scores import SCORES

    by_task: dict[tuple[str, int], dict[int, list[float]]] = {}
    for r in runs:
        for label in r["labels"]:
            if label.startswith("probe layer "):
                by_task.setdefault((r["task"], r["steps"]), {}).setdefault(int(label.split()[-1]), []).append(r["gain"])
    out = {}
    for (task, steps), gains in sorted(by_task.items()):
        path = study / task / "card.json"
        if len(gains) < 3 or not path.exists():
            continue
        card = LayerCard.load(path)
        rows = {l.layer: asdict(l) for l in card.layers}
        layers = sorted(gains)
        measured = [statistics.mean(gains[l]) for l in layers]
        scores = {}
        for name, fn in SCORES.items():
            vals = [fn(rows[l]) for l in layers]
            if all(np.isfinite(vals)):
                scores[name] = spearman(vals, measured)
        for col in ("grad_norm", "act_norm", "nfn"):
            scores[col] = spearman([rows[l][col] for l in layers], measured)
        scores["-depth"] = spearman([-float(l) for l in layers], measured)
        out[f"{task}@{steps}"] = {"layers": layers, "measured": measured,
                                  "spearman": {k: v for k, v in scores.items() if v is not None}}
    return out


def distinct_decisions(runs: list[dict], label: str = "default") -> int:
    return len({(r["task"], tuple(r["layers"]), r["modules"]) for r in runs if label in r["labels"]})


def figures(runs: list[dict], study: Path | None = None) -> dict:
    rows = rows_of(runs)
    complete = [k for k in rows if len(rows[k][FULL]) >= SEEDS and len(rows[k].get("default", {})) >= SEEDS]
    smol = sorted(k for k in complete if k[0].startswith("smol"))
    minilm = sorted(k for k in complete if k[0].startswith("minilm"))
    out = {"rows": [f"{t}@{s}" for t, s in sorted(complete)], "runs": len(runs),
           "distinct_default_decisions": distinct_decisions(runs)}
    for name, keys in (("smollm2", smol), ("minilm", minilm)):
        if not keys:
            continue
        out[name] = {
            "compare": {f"{a} vs {b}": compare(rows, a, b, keys) for a in CANDIDATES
                        for b in ("uniform-k", "depth rule", "best baseline")},
            "shares": shares(rows, keys), "random_k": random_distance(rows, keys),
            "decision": (decision(rows, keys) if len(keys) >= EXPECTED_ROWS[name] else
                         {"default": None, "why": f"pending: {len(keys)} of {EXPECTED_ROWS[name]} rows complete"})}
    if study is not None:
        out["probes"] = probe_spearman(runs, study)
    return out


def markdown(fig: dict) -> str:
    lines = [f"{fig['runs']} runs; rows complete: {', '.join(fig['rows']) or 'none yet'}; "
             f"{fig['distinct_default_decisions']} distinct default placements."]
    for name in ("smollm2", "minilm"):
        if name not in fig:
            continue
        f = fig[name]
        lines += ["", f"## {name}", "", "| comparison | pooled mean | 95% interval | median | rows |", "|---|---|---|---|---|"]
        for label, c in f["compare"].items():
            p = c.get("pooled")
            if p:
                lines.append(f"| {label} | {p['mean']:+.1f} | [{p['lo']:+.1f}, {p['hi']:+.1f}] | {p['median']:+.1f} "
                             f"| {p['n_rows']} |")
        lines += ["", "| placement | mean share of full | median | Σgain/Σfull |", "|---|---|---|---|"]
        for p, s in sorted(f["shares"].items(), key=lambda kv: -kv[1]["sum_ratio"]):
            lines.append(f"| {p} | {s['mean']:.1%} | {s['median']:.1%} | {s['sum_ratio']:.1%} |")
        lines += ["", f"Decision: {f['decision']['default']} ({f['decision']['why']})."]
    for row, p in (fig.get("probes") or {}).items():
        best = sorted(p["spearman"].items(), key=lambda kv: -kv[1])
        lines += ["", f"Probes {row} (layers {p['layers']}): Spearman with the measured single-layer gains: "
                  + ", ".join(f"{k} {v:+.2f}" for k, v in best)]
    return "\n".join(lines)


PAGE = HERE.parent.parent / "docs" / "results.md"


def page(fig: dict) -> str:
    """docs/results.md: the figures of ``figures`` and nothing typed by hand."""
    done = {name: len([r for r in fig["rows"] if r.startswith(prefix)])
            for name, prefix in (("smollm2", "smol"), ("minilm", "minilm"))}
    return "\n".join([
        "# Results: does the card's placement beat what practitioners use?",
        "",
        "Generated by `python studies/v2/analyze.py --page` from `studies/v2/data/runs.json` under the",
        "pre-registered [protocol](../studies/v2/PROTOCOL.md); do not edit by hand (a test regenerates it).",
        "Points are paired differences over seeds in points of full-LoRA gain, with 95% bootstrap intervals.",
        "",
        f"Status: {done['smollm2']} of {EXPECTED_ROWS['smollm2']} SmolLM2 rows and {done['minilm']} of "
        f"{EXPECTED_ROWS['minilm']} MiniLM rows complete; until all are, no decision is drawn.",
        "",
        markdown(fig),
        ""])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, default=RUNS)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--page", action="store_true", help=f"write {PAGE.relative_to(PAGE.parent.parent)}")
    args = ap.parse_args(argv)
    runs = json.loads(args.runs.read_text())["runs"] if args.runs.exists() else []
    fig = figures(runs, args.runs.parent)
    if args.page:
        PAGE.write_text(page(fig), encoding="utf-8")
    else:
        print(json.dumps(fig, indent=1) if args.json else markdown(fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())

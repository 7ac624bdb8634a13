"""Round 3's placement rule (studies/v1/notebook.md): rank every card placement of the study by the goal's criteria.

For each row (task @ budget) with a full-LoRA reference, read ``studies/v1/data/study/TASK/study.json`` and
compare every card placement (score × top-k / coupled greedy / cost-capped) with

* the random-k mean, in seed stds (the larger of the two placements' std across seeds, as a share
  of full LoRA), counting the rows more than 2 stds below it;
* the mean of the baselines (random-k mean, first, last, uniform, middle, grad-norm, act-norm,
  nfn), in points of full LoRA.

Candidates are ranked by (rows > 2 stds below random-k, −mean margin). ``--rows`` restricts the
table to named rows (the confirmation rows, say); rows without a full-LoRA reference (full LoRA
that lost, or gained less than 2 seed-stds) are listed with their random-k comparison only.
Candidates trained after a study (``TASK/candidates.json``, studies/v1/scripts/train_candidates.py) join its
own; ``--baselines`` ranks each baseline as if it were one.

    python studies/v1/scripts/placement_rule.py [--rows comments@60 comments@300 ...] [--show NAME ...] [--root DIR]
    python studies/v1/scripts/placement_rule.py --exclude "cost ≤" simulated warm-up     # round 4's eligible candidates
    python studies/v1/scripts/placement_rule.py --baselines --exclude "cost ≤" simulated warm-up   # round 5's addendum
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics

BASELINES = ("first-k", "last-k", "uniform-k", "middle-k", "grad-norm top-k", "act-norm top-k", "nfn top-k")
ROOT = os.path.join(os.path.dirname(__file__), "..", "data", "study")


def study_rows(root: str = ROOT):
    """(study directory, budget, its study.json, that budget's placements in TASK/candidates.json) per row
    that trained any placement; the task is the directory's name."""
    for path in sorted(glob.glob(os.path.join(root, "*", "study.json"))):
        study_dir = os.path.dirname(path)
        with open(path) as f:
            study = json.load(f)
        extra_path = os.path.join(study_dir, "candidates.json")
        extra = json.load(open(extra_path)) if os.path.exists(extra_path) else {}
        for budget, b in study["budgets"].items():
            if b.get("placements"):
                yield study_dir, budget, study, extra.get(budget, {})


def load_rows(root: str = ROOT, baselines: bool = False) -> dict:
    """row -> {"full": mean gain or None, "random": (mean gain, std), "baselines": [gains], "card": {name: (gain, std)}}.

    ``card`` holds the study's card placements, those of TASK/candidates.json, and with ``baselines``
    each baseline under the name "baseline NAME"."""
    rows = {}
    for study_dir, budget, study, extra in study_rows(root):
        task, pl = os.path.basename(study_dir), study["budgets"][budget]["placements"]
        cands = {n: p for n, p in pl.items() if n.startswith("card ")}
        cands.update(extra)
        if baselines:
            cands.update({f"baseline {n}": pl[n] for n in BASELINES if n in pl})
        draws = [p for n, p in pl.items() if n.startswith("random-k draw")]
        full, full_std = pl.get("full", {}).get("mean"), pl.get("full", {}).get("std", 0.0)
        # Full LoRA that lost, or whose gain is within 2 seed-stds of zero (deep24-docstrings @ 60: 0.003 ±
        # 0.004 nats), is no reference: shares of it are noise.
        full = full if full is not None and full > 2 * full_std else None
        rows[f"{task}@{budget}"] = {
            "full": full,
            "random": (statistics.mean(p["mean"] for p in draws), statistics.mean(p["std"] for p in draws)),
            "baselines": [pl[n]["mean"] for n in BASELINES if n in pl],
            "card": {n: (p["mean"], p["std"]) for n, p in cands.items()},
        }
    return rows


def row_figures(row: dict, name: str) -> dict:
    """One candidate on one row: its share of full LoRA, the baselines' mean share, stds above random-k."""
    gain, std = row["card"][name]
    rmean, rstd = row["random"]
    z = (gain - rmean) / max(std, rstd) if max(std, rstd) > 0 else float("nan")
    full = row["full"]
    if not full:
        return {"share": None, "baselines": None, "z": z}
    base = statistics.mean([rmean] + row["baselines"]) / full
    return {"share": gain / full, "baselines": base, "z": z}


def rank(rows: dict) -> list[dict]:
    names = sorted(set.intersection(*(set(r["card"]) for r in rows.values())))
    out = []
    for name in names:
        figs = [row_figures(r, name) for r in rows.values()]
        full = [f for f in figs if f["share"] is not None]
        out.append({
            "candidate": name,
            "below": sum(f["z"] < -2 for f in figs),
            "worst": min(f["z"] for f in figs),
            "share": statistics.mean(f["share"] for f in full) if full else float("nan"),
            "margin": statistics.mean(f["share"] - f["baselines"] for f in full) if full else float("nan"),
        })
    return sorted(out, key=lambda c: (c["below"], -c["margin"]))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="*", help="task@budget rows to use (default: every row with a full-LoRA run)")
    ap.add_argument("--root", default=ROOT, help="folder of TASK/study.json (default: studies/v1/data/study)")
    ap.add_argument("--show", nargs="*", default=["card energy coupled greedy", "card ρ²× coupled greedy"],
                    help="candidates to print row by row")
    ap.add_argument("--baselines", action="store_true", help="rank each baseline beside the candidates")
    ap.add_argument("--exclude", nargs="*", default=[],
                    help="leave out candidates whose name contains any of these (round 4: "
                         "--exclude 'cost ≤' simulated warm-up)")
    args = ap.parse_args(argv)
    rows = load_rows(args.root, baselines=args.baselines)
    if args.rows:
        missing = [r for r in args.rows if r not in rows]
        if missing:
            raise SystemExit(f"no placements measured for {', '.join(missing)} (have: {', '.join(rows)})")
        rows = {r: rows[r] for r in args.rows}
    else:
        rows = {k: v for k, v in rows.items() if v["full"]}
    print(f"{len(rows)} rows: {', '.join(rows)}\n")
    print("| candidate | rows > 2 stds below random | worst (stds) | mean % of full | − mean of baselines |")
    print("|---|---:|---:|---:|---:|")
    for c in rank(rows):
        if any(x in c["candidate"] for x in args.exclude):
            continue
        print(f"| {c['candidate'].removeprefix('card ')} | {c['below']} | {c['worst']:+.1f} | {100 * c['share']:.1f} | "
              f"{100 * c['margin']:+.1f} |")
    for name in args.show:
        print(f"\n{name}: row, % of full, mean of baselines, stds above random-k")
        for key, row in rows.items():
            if name in row["card"]:
                f = row_figures(row, name)
                pct = lambda v: "–" if v is None else f"{100 * v:.0f}%"  # noqa: E731
                print(f"  {key}: {pct(f['share'])}, {pct(f['baselines'])}, {f['z']:+.1f}")


if __name__ == "__main__":
    main()

"""Add the cross-half rank-r ρ² (``resnorm2_rank_x``) to the study's stored cards, checked first.

The column came after most studies ran, and their cards are cached (``layerprof study`` reuses
``studies/v1/data/study/TASK/card_*steps.json``). Rebuilding a card from scratch would also re-run its coupling
pass, simulation and warm-up; the new column needs only the sweep. So this re-sweeps each task's
calibration batches with the card's own settings (rank, damping, statistics dtype) and
``rank_cross=True``, and **checks that the re-swept sweep columns equal the stored card's** (ρ, ρ(r),
ρ²×, energy, noise amp per layer: the same data hash and rows, and every value within ``--rtol``)
before writing the new module and layer column into each stored card of the task. A task that does
not reproduce is reported and left as it was.

    OMP_NUM_THREADS=1 python studies/v1/scripts/add_rank_cross.py [--tasks deep mid ...] [--folders FOLDER=TASK ...] [--rtol 1e-4]
        [--dry-run]
"""
from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path

import torch

import layerprof as lp

ROOT = Path(__file__).resolve().parent.parent / "data" / "study"
CHECKED = ("resnorm", "resnorm_rank", "resnorm2_x", "energy", "noise_amp")


def mismatch(stored, fresh, rtol: float) -> str | None:
    """Why the re-swept card does not reproduce the stored one's sweep columns (None: it does)."""
    if stored.meta["data"]["hash"] != fresh.meta["data"]["hash"] or stored.meta["data"]["rows"] != fresh.meta["data"]["rows"]:
        return "calibration data differ (hash or rows)"
    if [l.layer for l in stored.layers] != [l.layer for l in fresh.layers]:
        return "layers differ"
    for a, b in zip(stored.layers, fresh.layers):
        for col in CHECKED:
            x, y = getattr(a, col), getattr(b, col)
            if x is None or y is None or not math.isclose(x, y, rel_tol=rtol, abs_tol=rtol * 1e-6):
                return f"layer {a.layer} {col}: stored {x}, re-swept {y}"
    return None


def main(argv=None) -> None:
    from layerprof.study.tasks import TASKS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=None, help="study tasks (default: every studies/v1/data/study/TASK with cards)")
    ap.add_argument("--folders", nargs="+", default=(), metavar="FOLDER=TASK",
                    help="also these studies/v1/data/study folders, named otherwise than their task "
                         "(e.g. deep24-comments-probes=deep24-comments)")
    ap.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance of the reproduction check")
    ap.add_argument("--dry-run", action="store_true", help="check only; write nothing")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    names = args.tasks or ([] if args.folders else  # --folders alone: only those
                           sorted(p.name for p in ROOT.iterdir() if p.name in TASKS and any(p.glob("card_*steps.json"))))
    folders = [(name, name) for name in names] + [tuple(f.split("=", 1)) for f in args.folders]
    for name, task_name in folders:
        paths = sorted((ROOT / name).glob("card_*steps.json"))
        stored = [lp.LayerCard.load(p) for p in paths]
        s = stored[0].meta["settings"]
        task = TASKS[task_name]()
        dtype = getattr(torch, s.get("dtype", "float32"))
        fresh = lp.profile(task.model(), task.calibration, rank=s["rank"], damping=s["damping"], dtype=dtype,
                           rank_cross=True, progress=False)
        problems = {p.name: mismatch(c, fresh, args.rtol) for p, c in zip(paths, stored)}
        bad = {k: v for k, v in problems.items() if v}
        if bad:
            print(f"{name}: not reproduced, left as it was — {bad}")
            continue
        rows = {m.name: m.resnorm2_rank_x for m in fresh.modules}
        per_layer = {l.layer: l.resnorm2_rank_x for l in fresh.layers}
        for path, card in zip(paths, stored):
            added = {**card.meta.get("added_columns", {}), "resnorm2_rank_x":
                     f"studies/v1/scripts/add_rank_cross.py: re-swept, sweep columns reproduced within rtol {args.rtol:g}"}
            card = lp.LayerCard([replace(m, resnorm2_rank_x=rows[m.name]) for m in card.modules],
                                [replace(l, resnorm2_rank_x=per_layer[l.layer]) for l in card.layers],
                                {**card.meta, "added_columns": added})
            if not args.dry_run:
                card.save(path)
        print(f"{name}: reproduced; {'checked' if args.dry_run else 'written'} "
              f"({', '.join(p.name for p in paths)})", flush=True)


if __name__ == "__main__":
    main()

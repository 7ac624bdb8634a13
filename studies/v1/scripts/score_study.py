"""Which per-layer score predicts measured single-layer LoRA gains? (docs/method.md)

Reads the probes of a placement study (study.json from `layerprof study`), re-profiles
the same model on the same calibration batches at several dampings δ, and prints the
Spearman correlation of each candidate score with the measured gains.

    python studies/v1/scripts/score_study.py studies/v1/data/study_bundled/study.json [bundled|minilm]
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict

import layerprof as lp
from layerprof.card.rankcorr import spearman
from layerprof.card.scores import SCORES
from layerprof.study.tasks import TASKS

# Column label -> the card's score formula (layerprof.card.scores.SCORES).
CANDIDATES = {"ρ²": "resnorm2", "ρ(r)²": "resnorm2_rank", "ρ²/noise_amp": "resnorm2_over_noise",
              "ρ(r)²/noise_amp": "resnorm2_rank_over_noise", "energy": "energy"}


def main(path: str, task_key: str = "bundled") -> None:
    study = json.load(open(path))
    measured = study["probe"]["measured_gain"]
    task = TASKS[task_key]()
    print(f"{'δ':>8}  " + "  ".join(f"{n:>13}" for n in CANDIDATES))
    for damping in (1e-3, 1e-2, 1e-1, 1.0, 10.0):
        card = lp.profile(task.model(), task.calibration, rank=study["config"]["r"], damping=damping, progress=False)
        gains = [measured[str(l.layer)] for l in card.layers]
        cols = {label: [SCORES[name](asdict(l)) for l in card.layers] for label, name in CANDIDATES.items()}
        print(f"{damping:>8g}  " + "  ".join(f"{spearman(v, gains):>+13.2f}" for v in cols.values()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "studies/v1/data/study_bundled/study.json",
         sys.argv[2] if len(sys.argv) > 2 else "bundled")

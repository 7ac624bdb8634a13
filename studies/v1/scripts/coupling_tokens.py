"""How many tokens does the coupling matrix need? The default placement's picks against ``coupling_tokens``.

The coupling pass (two forwards per layer) is the default profile's largest extra cost after the
sweep. For each study task, this re-profiles the card's calibration batches once per token cap and
reports the coupled-greedy pick at k = L/4 on the cross-half ρ² (the default placement), the largest
change of any ρ_ab against the uncapped matrix, and the coupling pass's time as a share of the sweep.
The placement study's cards measured the coupling on two whole calibration batches (1,537–1,718
tokens on the decoders), so a cap that keeps every pick is one the study's evidence still covers.

    OMP_NUM_THREADS=1 python studies/v1/scripts/coupling_tokens.py [--tokens 2048 1024 512 256] [--tasks bundled deep ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

import layerprof as lp
from layerprof.study.tasks import TASKS

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
from harness import machine  # noqa: E402  (bench/harness.py: the machine's description)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[2048, 1024, 512, 256])
    ap.add_argument("--tasks", nargs="+", default=["bundled", "code", "docstrings", "comments", "deep", "deep-code",
                                                   "deep-docstrings", "deep-comments"])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{machine()}\ndefault placement (coupled greedy on ρ²×, k = L/4) against the coupling's token cap\n")
    print("| task | cap | tokens used | pick | max |Δρ| vs uncapped | coupling s / sweep s |")
    print("|---|---:|---:|---|---:|---:|")
    for name in args.tasks:
        task = TASKS[name]()
        model = task.model().eval()
        ref = lp.profile(model, task.calibration, progress=False, coupling_tokens=None)
        k = ref.default_layers()
        rho_ref = np.asarray(ref.meta["coupling"]["rho"])
        for cap in [None, *args.tokens]:
            card = ref if cap is None else lp.profile(model, task.calibration, progress=False, coupling_tokens=cap)
            c = card.meta["coupling"]
            delta = float(np.abs(np.asarray(c["rho"]) - rho_ref).max())
            print(f"| {name} | {cap or 'none'} | {c['tokens']:,} | {card.place(layers=k).layers} | {delta:.3f} | "
                  f"{c['seconds'] / card.meta['sweep']['seconds']:.2f} |", flush=True)


if __name__ == "__main__":
    main()

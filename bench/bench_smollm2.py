"""Whole ``lp.profile()`` of SmolLM2-135M-Instruct against a plain frozen forward+backward, side by side.

The real-LLM goal's case: 16 batches × 8 × 64 tokens of Python's documentation prose (the demo's
calibration), one thread, process CPU time, the two passes interleaved after a warm-up round; profile()
without a budget (the sweep's columns), finalize included. ``--budget STEPS`` profiles with a training
budget too (the simulated and warm-up columns), a third pass in the same rounds.

    OMP_NUM_THREADS=1 python bench/bench_smollm2.py [--reps 1] [--batches 16] [--budget 20] [--keep-pages]
"""
from __future__ import annotations

import argparse
import time

import torch

import layerprof as lp
from harness import add_keep_pages, keep_pages_if_asked, print_profile_table, profile_vs_plain
from layerprof.benchmark import machine, plain_backward
from layerprof.loading import calibration_batches, load_model


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--budget", type=int, help="also profile with a training budget of this many steps")
    add_keep_pages(ap)
    args = ap.parse_args(argv)
    keep_pages_if_asked(args)
    torch.set_num_threads(1)
    model, tokenizer, _ = load_model("smollm2", "float32")
    batches = calibration_batches(None, model, tokenizer, batches=args.batches, batch_size=8, seq_len=64)
    r = profile_vs_plain(lambda: plain_backward(model, batches), lambda: lp.profile(model, batches, progress=False),
                         args.reps)
    print(f"{machine()}\nSmolLM2-135M-Instruct, {len(batches)} batches × 8 × 64 tokens, one thread, process CPU "
          f"time, median of {args.reps} after a warm-up round\n")
    print_profile_table(r, digits=1)
    if args.budget:
        budget = lp.TrainingBudget(steps=args.budget)
        t = time.process_time()
        card = lp.profile(model, batches, progress=False, budget=budget)
        seconds = time.process_time() - t
        print(f"| whole lp.profile(budget={args.budget} steps), one run | {seconds:.1f} | "
              f"{seconds / r['plain']:.2f} |")
        print(f"\nbudget card's predictors: {card.meta.get('predict')}")


if __name__ == "__main__":
    main()

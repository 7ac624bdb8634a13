"""Whole ``lp.profile()`` of SmolLM2-135M-Instruct against a plain frozen forward+backward, side by side.

The real-LLM goal's case: 16 batches × 8 × 64 tokens of Python's documentation prose (the demo's
calibration), one thread, process CPU time, the two passes interleaved after a warm-up round; profile()
without a budget (the sweep's columns), finalize included. ``--budget STEPS`` profiles with a training
budget too (the simulated and warm-up columns), a third pass in the same rounds.

    OMP_NUM_THREADS=1 python bench/bench_smollm2.py [--reps 1] [--batches 16] [--budget 20] [--keep-pages]
    OMP_NUM_THREADS=1 python bench/bench_smollm2.py --replay --batches 4 --reps 2

``--replay`` times instead the simulated gain's pass (its curvature forwards, ``meta.simulate.seconds``)
with and without ``replay.Replay``, alternating, and checks that κ is the same bit for bit.
"""
from __future__ import annotations

import argparse
import time

import torch

import layerprof as lp
from harness import add_keep_pages, keep_pages_if_asked, print_profile_table, profile_vs_plain
from layerprof.pipeline.benchmark import machine, plain_backward
from layerprof.model.loading import calibration_batches, load_model


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--budget", type=int, help="also profile with a training budget of this many steps")
    ap.add_argument("--replay", action="store_true", help="time the curvature with and without Replay instead")
    add_keep_pages(ap)
    args = ap.parse_args(argv)
    keep_pages_if_asked(args)
    torch.set_num_threads(1)
    model, tokenizer, _ = load_model("smollm2", "float32")
    batches = calibration_batches(None, model, tokenizer, batches=args.batches, batch_size=8, seq_len=64)
    if args.replay:
        return replay_vs_plain(model, batches, args.reps)
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


def replay_vs_plain(model, batches, reps: int) -> None:
    """The simulate pass (a 1-step budget: its cost is the curvature's forwards) with Replay off and on,
    alternating; Replay is switched off by giving it no memory (predict.COUPLING_MEMORY_FRACTION = 0)."""
    import statistics

    import layerprof.pipeline.predict as predict

    share = predict.COUPLING_MEMORY_FRACTION
    seconds, kappas = {False: [], True: []}, {False: [], True: []}
    try:
        for _ in range(reps):
            for replay in (False, True):
                predict.COUPLING_MEMORY_FRACTION = share if replay else 0.0
                card = lp.profile(model, batches, progress=False, budget=lp.TrainingBudget(steps=1))
                seconds[replay].append(card.meta["simulate"]["seconds"])
                kappas[replay].append([l.kappa for l in card.layers])
    finally:
        predict.COUPLING_MEMORY_FRACTION = share
    print(f"{machine()}\nSmolLM2-135M-Instruct, {len(batches)} batches × 8 × 64 tokens, one thread, simulate pass "
          f"(wall), alternating, {reps} each\n")
    print(f"| curvature | simulate seconds (runs) | median |\n|---|---|---:|")
    for replay in (False, True):
        print(f"| {'with' if replay else 'without'} Replay | {', '.join(f'{s:.1f}' for s in seconds[replay])} | "
              f"{statistics.median(seconds[replay]):.1f} |")
    same = all(k == kappas[False][0] for k in kappas[False] + kappas[True])
    print(f"\nκ the same bit for bit in every run: {same}")


if __name__ == "__main__":
    main()

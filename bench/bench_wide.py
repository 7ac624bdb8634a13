"""Whole ``lp.profile()`` against a plain frozen forward+backward on a wide MLP, side by side.

The case of the speed issue: 4 × Linear(1024, 1024) (tanh between, a small head), 3 batches ×
4,096 rows, one thread, process CPU time (the steadiest measure on a shared machine), the
passes interleaved. Prints plain, the card's sweep (taps + accumulation), finalize, and the
whole profile() — with and without the split-half statistics that finalize also solves.

    python bench/bench_wide.py [--d 1024] [--rows 4096] [--batches 3] [--reps 3] [--backend cpp] [--keep-pages]
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

import layerprof as lp
from harness import add_keep_pages, keep_pages_if_asked, print_profile_table, profile_vs_plain
from layerprof.pipeline.benchmark import machine


class WideMLP(nn.Module):
    def __init__(self, d: int, layers: int = 4, classes: int = 8):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(d, d) for _ in range(layers)])
        self.head = nn.Linear(d, classes)

    def forward(self, x, y=None):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x)


def case_arguments(description: str, reps: int) -> argparse.ArgumentParser:
    """The wide-MLP case's command line (width, rows, batches, repetitions), shared with bench_lapack.py."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--reps", type=int, default=reps)
    return ap


def wide_case(args) -> tuple[WideMLP, list[dict]]:
    """The model (eval mode, seed 0) and its batches, on one thread."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = WideMLP(args.d).eval()
    batches = [{"x": torch.randn(args.rows, args.d), "y": torch.randint(0, 8, (args.rows,))}
               for _ in range(args.batches)]
    return model, batches


def main(argv=None) -> None:
    ap = case_arguments(__doc__.splitlines()[0], reps=3)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--coupling", action=argparse.BooleanOptionalAction, default=False,
                    help="also measure the coupling matrix (opt-in since round 6, as in lp.profile; "
                         "--no-coupling, the default, is kept for the older commands)")
    add_keep_pages(ap)
    args = ap.parse_args(argv)
    keep_pages_if_asked(args)
    model, batches = wide_case(args)
    loss_fn = lambda out, b: nn.functional.cross_entropy(out, b["y"])  # noqa: E731
    targets = [f"layers.{i}" for i in range(len(model.layers))]

    def plain():
        for p in model.parameters():
            p.requires_grad_(False)
        for b in batches:
            x = b["x"].clone().requires_grad_(True)  # input gradients through every layer, as the sweep's backward
            loss_fn(model(x), b).backward()
        for p in model.parameters():
            p.requires_grad_(True)

    def profile():
        return lp.profile(model, batches, loss_fn=loss_fn, targets=targets, progress=False, backend=args.backend,
                          coupling=args.coupling)

    r = profile_vs_plain(plain, profile, args.reps)
    print(f"{machine()}\nwide MLP {len(model.layers)} × Linear({args.d}, {args.d}), {args.batches} batches × "
          f"{args.rows} rows, backend {r['card'].meta['settings']['backend']}, process CPU time, median of {args.reps}"
          f"{', with the coupling matrix' if args.coupling else ''}")
    print_profile_table(r)

if __name__ == "__main__":
    main()

"""How the sweep and finalize scale: with calibration tokens, with layer width, and on GPT-2-small.

One thread, process CPU time for the whole call, the card's own sweep and finalize seconds.
* tokens: the wide MLP (4 × Linear(1024, 1024)) on 4k … 64k rows (finalize does not grow);
* width: 4 × Linear(d, d) on 8,192 rows, d = 128 … 4096 (finalize grows as d³, the sweep as d²);
* GPT-2-small shape (12 × 768, random init, T = 512): sweep ÷ plain frozen fwd+bwd, side by side
  (``layerprof.pipeline.benchmark.sweep_vs_plain``; the FLOP floor of the accumulation is 1.54×).

    OMP_NUM_THREADS=1 python bench/bench_scaling.py [--parts tokens width gpt2] [--max-d 4096]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import layerprof as lp
from bench_wide import WideMLP
from layerprof.pipeline.benchmark import machine


def _profile_mlp(d: int, rows: int, batches: int = 4):
    torch.manual_seed(0)
    model = WideMLP(d).eval()
    data = [{"x": torch.randn(rows // batches, d), "y": torch.randint(0, 8, (rows // batches,))}
            for _ in range(batches)]
    t = time.process_time()
    card = lp.profile(model, data, loss_fn=lambda out, b: nn.functional.cross_entropy(out, b["y"]),
                      targets=[f"layers.{i}" for i in range(4)], progress=False)
    total = time.process_time() - t
    return card.meta["sweep"]["seconds"], card.meta["sweep"]["finalize_seconds"], total


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=["tokens", "width", "gpt2"])
    ap.add_argument("--max-d", type=int, default=4096)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(machine())
    if "tokens" in args.parts:
        print("\n| rows (d = 1024) | sweep s | finalize s | finalize / sweep | whole s |\n|---:|---:|---:|---:|---:|")
        for rows in (4096, 8192, 16384, 32768, 65536):
            s, f, tot = _profile_mlp(1024, rows)
            print(f"| {rows:,} | {s:.2f} | {f:.2f} | {f / s:.2f} | {tot:.2f} |", flush=True)
    if "width" in args.parts:
        print("\n| d (8,192 rows) | sweep s | finalize s | finalize / sweep | whole s |\n|---:|---:|---:|---:|---:|")
        d = 128
        while d <= args.max_d:
            s, f, tot = _profile_mlp(d, 8192)
            print(f"| {d} | {s:.2f} | {f:.2f} | {f / s:.2f} | {tot:.2f} |", flush=True)
            d *= 2
    if "gpt2" in args.parts:
        from transformers import GPT2Config, GPT2LMHeadModel

        from layerprof.pipeline.benchmark import sweep_vs_plain, table

        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=512, vocab_size=8192,
                                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()
        ids = [torch.randint(0, 8192, (2, 512)) for _ in range(2)]
        batches = [{"input_ids": b, "attention_mask": torch.ones_like(b), "labels": b} for b in ids]
        print("\nGPT-2-small shape, 2 batches × 2 × 512 tokens\n")
        print(table(sweep_vs_plain(model, batches, reps=2)))


if __name__ == "__main__":
    main()

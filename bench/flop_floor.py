"""The sweep's FLOP floor on the GPT-2-small shape: what no implementation of the same statistics can beat.

The sweep does the plain frozen forward + backward and, on top, S += XᵀX for every distinct input
and C += XᵀG for every module. Counting a multiply-add as 2 FLOPs throughout: the upper triangle of
XᵀX is n·d(d+1) ≈ n·d² FLOPs, XᵀG is 2·n·d_in·d_out, a linear layer's forward and input-gradient
backward 2·n·d_in·d_out each (``layerprof.profile_cost.model_cost``, which leaves attention out). Plain
also runs attention (QKᵀ and AV: 4·T·d per token and layer forward, twice that backward; a causal
kernel may skip half). The floor is (plain + accumulation) / plain at equal FLOP rates.

    python bench/flop_floor.py [--tokens 2048] [--seq 512]
"""
from __future__ import annotations

import argparse

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from layerprof.profile_cost import model_cost


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--seq", type=int, default=512)
    args = ap.parse_args(argv)
    layers, d = 12, 768
    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config(n_layer=layers, n_embd=d, n_head=12, n_positions=args.seq, vocab_size=8192))
    cost = model_cost(model, tokens=args.tokens, device="cpu")
    per_token = 1e6 * args.tokens
    attention = layers * 3 * 4 * args.seq * d * args.tokens  # forward 4·T·d, backward twice that
    print(f"GPT-2-small shape (12 × 768, vocabulary 8192, T = {args.seq}), MFLOP per token:")
    print(f"  linear layers and head, forward + input-gradient backward: {cost.plain_flops / per_token:.1f}")
    print(f"  attention, dense (causal: half): {attention / per_token:.1f}")
    print(f"  accumulation (S upper triangles, C): {cost.sweep_extra_flops / per_token:.1f}\n")
    print("| plain counts | sweep / plain floor |\n|---|---:|")
    for label, att in (("linear layers only", 0.0), ("with dense attention", attention),
                       ("with causal attention (half)", attention / 2)):
        print(f"| {label} | {1 + cost.sweep_extra_flops / (cost.plain_flops + att):.2f} |")


if __name__ == "__main__":
    main()

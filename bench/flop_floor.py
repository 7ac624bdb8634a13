"""FLOP floors: the GPT-2-small sweep against plain, the wide MLP against the obvious hooks, Qwen3-8B's finalize.

The sweep does the plain frozen forward + backward and, on top, S += XᵀX for every distinct input
and C += XᵀG for every module. Counting a multiply-add as 2 FLOPs throughout: the upper triangle of
XᵀX is n·d(d+1) ≈ n·d² FLOPs, XᵀG is 2·n·d_in·d_out, a linear layer's forward and input-gradient
backward 2·n·d_in·d_out each (``layerprof.pipeline.profile_cost.model_cost``, which leaves attention out). Plain
also runs attention (QKᵀ and AV: 4·T·d per token and layer forward, twice that backward; a causal
kernel may skip half). The floor is (plain + accumulation) / plain at equal FLOP rates.

The peers' case (bench_peers.py, wide MLP 4 × Linear(d, d)): hooks written the obvious way compute
the same S and C with a full XᵀX GEMM (2·n·d²) where the sweep takes the upper triangle (n·d²); both
also run the plain pass. At equal FLOP rates the sweep can be at most (plain + 2d² + 2d²) / (plain +
d² + 2d²) faster per row and layer: the bound on any "× faster than the fastest peer" figure.

Qwen3-8B (``--tokens-8b``, default 131,072; one H200): finalize's float64 FLOPs from ``model_cost``
at the device's full FP64 peak, against the modelled sweep, as the card computes it and with no
eigen-decomposition at all (eigvalsh's row replaced by a triangular inverse, d³/3 per input, for
noise amp; cond and erank would need other, inexact or redefined, estimates): a floor for exact
float64 columns that no kernel gets under.

    python bench/flop_floor.py [--tokens 2048] [--seq 512] [--tokens-8b 131072]
"""
from __future__ import annotations

import argparse

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Qwen3Config, Qwen3ForCausalLM

from layerprof.pipeline.profile_cost import DEVICES, model_cost


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--tokens-8b", type=int, default=131072)
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
    # Wide MLP, per row and layer, in units of d²: plain 4 (forward, input-gradient backward),
    # hooks 2 (XᵀX, full) + 2 (XᵀG), the sweep 1 (upper triangle) + 2.
    plain, hooks, sweep = 4.0, 4.0 + 2.0 + 2.0, 4.0 + 1.0 + 2.0
    print(f"\nWide MLP 4 × Linear(d, d), per row and layer (units of d² FLOPs): plain {plain:.0f}, obvious hooks "
          f"{hooks:.0f}, sweep {sweep:.0f}: at equal FLOP rates the sweep is at most {hooks / sweep:.2f}× faster "
          "than the hooks")
    qwen_finalize_floor(args.tokens_8b)


def qwen_finalize_floor(tokens: int) -> None:
    """Qwen3-8B shapes: finalize at the H200's full FP64 peak as a share of the modelled sweep."""
    cfg = Qwen3Config(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(cfg)
    cost = model_cost(model, tokens=tokens, device="h200")
    flops = cost.finalize_flops
    peak = DEVICES["h200"]["fp64_peak"]
    rows = [("as the card computes it", sum(flops.values())),
            ("no eigen-decomposition (eigvalsh → a triangular inverse)",
             sum(v for k, v in flops.items() if k != "eigvalsh") + flops["Cholesky"]),
            ("the two triangular solves per module alone", flops["solves"])]
    print(f"\nQwen3-8B, {tokens:,} tokens, one H200: modelled sweep {cost.sweep_seconds:.1f} s; "
          f"finalize at the full FP64 peak ({peak / 1e12:.0f} TFLOP/s)\n")
    print("| finalize | TFLOP | s at peak | share of the sweep |\n|---|---:|---:|---:|")
    for label, f in rows:
        print(f"| {label} | {f / 1e12:.1f} | {f / peak:.2f} | {f / peak / cost.sweep_seconds:.1%} |")


if __name__ == "__main__":
    main()

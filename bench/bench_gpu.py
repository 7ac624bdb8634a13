"""GPU figures in one run (for bench/gpu_check.sh): ops at Qwen3-8B shapes vs torch and the
bf16 matmul roofline, and a Qwen3-8B-shaped model's sweep vs its plain forward+backward.

* ops: d_in ∈ {4096, 12288}, 64k rows, bf16 inputs, fp32 accumulators. For each backend
  (cuda, triton, torch) the fused stats_update is timed beside torch's X.T @ X and X.T @ G
  and beside a dense bf16 matmul of the same size (the roofline measured in this run).
  Useful FLOPs count the Gram's upper triangle only: rows·d·(d+1) + 2·rows·d·d_out.
* sweep: random-init Qwen3-8B-shaped bf16 model (hidden 4096, MLP 12288, 32/8 heads,
  head_dim 128, vocab 151936) with --layers blocks, frozen; plain fwd+bwd (input grads)
  vs lp.profile with each GPU backend, dense and with sketch k = 128, on the same
  131,072 tokens; peak memory (statistics included) and finalize time each.
* finalize primitives: float64 eigvalsh, Cholesky, a triangular solve and a GEMM at d ∈ {4096,
  12288}, their TFLOP/s and share of the FP64 peak: the efficiencies `layerprof bench --plan`
  assumes (``layerprof.pipeline.profile_cost.DEVICES``: 60% GEMM, 10% eigen), measured.
* batched finalize: the same primitives on --batch-of equal-shape matrices (d ≤ 4096), one batched
  torch call against a loop of single calls. Finalize loops over modules; this says whether the
  device gains from batching them (torch's CUDA eigvalsh batches only n ≤ 32 through syevjBatched
  and loops syevd above, so a gain can come only from Cholesky and the triangular solves).
Prints one summary table and appends rows to bench/results.csv.
"""
from __future__ import annotations

import argparse
import time
import traceback
from pathlib import Path

import torch

from harness import RESULTS, append, interleaved, machine, plain_backward

QWEN3_8B_SHAPE = dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=128)
SMOKE_SHAPE = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16)


def backends_on(device: str) -> list[str]:
    """The statistics backends that run on ``device`` here (triton on the CPU only under its interpreter)."""
    from layerprof.stats import ops

    table = ops.backends()
    return [b for b in ("cuda", "triton", "cpp", "torch") if table[b].available and device in table[b].devices]


def roofline_ops(args, summary, rows_out):
    from layerprof.stats import ops

    device = args.device
    names = backends_on(device)
    for d in args.dims:
        d_out = d
        x = torch.randn(args.rows, d, device=device, dtype=torch.bfloat16)
        g = torch.randn(args.rows, d_out, device=device, dtype=torch.bfloat16)
        mask = torch.rand(args.rows, device=device) > 0.05
        S = {n: torch.zeros(d, d, device=device) for n in names}
        C = {n: torch.zeros(d, d_out, device=device) for n in names}
        q = {n: torch.zeros((), device=device) for n in names}
        fns = {f"stats:{n}": (lambda n=n: ops.op(n, "stats_update")(S[n], C[n], q[n], x, g, mask)) for n in names}
        fns["torch X.T@X"] = lambda: x.t() @ x
        fns["torch X.T@G"] = lambda: x.t() @ g
        fns["roofline bf16 mm"] = lambda: x.t() @ torch.cat([x, g], 1)
        t = interleaved(fns, args.reps, device)
        kept = int(mask.sum())
        useful = kept * d * (d + 1) + 2.0 * kept * d * d_out
        dense = 2.0 * args.rows * d * (d + d_out)
        roof = dense / t["roofline bf16 mm"]
        for k, v in t.items():
            fl = useful if k.startswith("stats") else (2.0 * args.rows * d * d if "X.T@X" in k else
                                                         2.0 * args.rows * d * d_out if "X.T@G" in k else dense)
            pct = fl / v / roof if k.startswith("stats") else None
            summary.append((f"ops d_in={d} rows={args.rows}", k, f"{v * 1e3:.2f} ms", f"{fl / v / 1e12:.1f} TF/s",
                            f"{pct:.0%} of roofline" if pct is not None else ""))
            rows_out.append({"bench": "gpu_ops", "op": k, "d_in": d, "d_out": d_out, "rows": args.rows,
                             "dtype": "bfloat16", "seconds": round(v, 6), "tflops": round(fl / v / 1e12, 2),
                             "roofline_fraction": round(pct, 3) if pct is not None else None})


def qwen3_sweep(args, summary, rows_out):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    import layerprof as lp

    device = args.device
    shape = SMOKE_SHAPE if args.smoke else QWEN3_8B_SHAPE
    cfg = Qwen3Config(**shape, num_hidden_layers=args.layers, max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(cfg).to(torch.bfloat16).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    ids = [torch.randint(0, cfg.vocab_size, (args.batch, args.seq), device=device) for _ in range(args.batches)]
    batches = [{"input_ids": i, "attention_mask": torch.ones_like(i), "labels": i} for i in ids]
    tokens = args.batches * args.batch * args.seq

    def plain():
        plain_backward(model, batches)

    names = backends_on(device)
    fns = {"plain": plain}
    fin, stats, cards = {}, {}, {}
    for n in names:
        def sweep(n=n, sketch=None):
            card = lp.profile(model, batches, progress=False, backend=n, sketch=sketch)
            key = n if sketch is None else f"{n}+sketch{sketch}"
            fin[key] = card.meta["sweep"]["finalize_seconds"]
            stats[key] = card.meta["sweep"].get("statistics_bytes", 0) / 2 ** 30
            cards[key] = card
        fns[f"sweep:{n}"] = sweep
        fns[f"sweep:{n}+sketch128"] = lambda n=n, sweep=sweep: sweep(n, 128)
    mem = {}
    for k, fn in fns.items():
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        fn()
        mem[k] = (torch.cuda.max_memory_allocated() - base) / 2 ** 30 if device == "cuda" else float("nan")
    t = interleaved(fns, args.reps, device, warmup=0)
    label = f"{'smoke-sized' if args.smoke else 'Qwen3-8B-shaped'}, {args.layers} layers, {tokens:,} tokens"
    for k, v in t.items():
        f = fin.get(k.split(":", 1)[-1], 0.0) if k.startswith("sweep") else 0.0
        summary.append((label, k, f"{(v - f):.3f} s",
                        f"{(v - f) / t['plain']:.2f}x plain",
                        f"peak +{mem[k]:.1f} GiB, statistics {stats.get(k.split(':', 1)[-1], 0):.2f} GiB, "
                        f"finalize {f:.1f} s"))
        rows_out.append({"bench": "gpu_sweep", "pass": k, "layers": args.layers, "rows": tokens,
                         "seconds": round(v - f, 4), "over_plain": round((v - f) / t["plain"], 3),
                         "finalize_s": round(f, 3), "peak_gib": round(mem[k], 2),
                         "statistics_gib": round(stats.get(k.split(":", 1)[-1], 0), 3)})
    # Sketch k = 128 against dense on the same statistics: does the layer ranking hold (goal τ ≥ 0.9)?
    from layerprof.card.rankcorr import kendall_tau

    for n in names:
        dense, sk = cards.get(n), cards.get(f"{n}+sketch128")
        if dense is not None and sk is not None:
            tau = kendall_tau([l.score for l in dense.layers], [l.score for l in sk.layers])
            summary.append((f"sketch k=128 vs dense ({n})", "layer ranking", f"Kendall τ {tau:+.2f}",
                            f"statistics {stats[f'{n}+sketch128'] / max(stats[n], 1e-12):.0%} of dense", ""))


def spd_system(d: int, cols: int, device: str, batch: tuple[int, ...] = ()):
    """Σ = XᵀX / 2d + 10⁻³I (X Gaussian, 2d rows, seed 0), its Cholesky factor L and a d × cols right-hand
    side, float64, with ``batch`` leading dimensions: the finalize primitives' inputs."""
    gen = torch.Generator(device=device).manual_seed(0)
    X = torch.randn(*batch, 2 * d, d, dtype=torch.float64, device=device, generator=gen)
    sigma = X.transpose(-2, -1) @ X / (2 * d) + 1e-3 * torch.eye(d, dtype=torch.float64, device=device)
    del X
    return sigma, torch.linalg.cholesky(sigma), torch.randn(*batch, d, cols, dtype=torch.float64, device=device,
                                                            generator=gen)


def finalize_primitives(args, summary, rows_out):
    """The float64 work of finalize at Qwen3-8B's input widths, against the cost model's assumed rates."""
    from layerprof.pipeline.profile_cost import DEVICES

    peak = DEVICES["h200"]["fp64_peak"]
    device = args.device
    for d in args.dims:
        sigma, L, C = spd_system(d, 4096, device)
        fns = {"eigvalsh": lambda: torch.linalg.eigvalsh(sigma),
               "cholesky": lambda: torch.linalg.cholesky(sigma),
               "solve_triangular (d x 4096)": lambda: torch.linalg.solve_triangular(L, C, upper=False),
               "gemm (4096 x d x d)": lambda: C.t() @ sigma}
        flops = {"eigvalsh": 4.0 / 3.0 * d ** 3, "cholesky": d ** 3 / 3.0,
                 "solve_triangular (d x 4096)": 1.0 * d * d * 4096, "gemm (4096 x d x d)": 2.0 * 4096 * d * d}
        t = interleaved(fns, args.reps, device)
        for k, v in t.items():
            rate = flops[k] / v
            summary.append((f"finalize fp64 d={d}", k, f"{v * 1e3:.1f} ms", f"{rate / 1e9:,.0f} GF/s",
                            f"{rate / peak:.0%} of the H200 FP64 peak" if device == "cuda" else ""))
            rows_out.append({"bench": "finalize_fp64", "op": k, "d_in": d, "device": device, "seconds": round(v, 6),
                             "tflops": round(rate / 1e12, 3)})
        del sigma, L, C


def batched_finalize(args, summary, rows_out):
    """One batched call against a loop over ``--batch-of`` equal-shape matrices: does batching finalize pay?"""
    device = args.device
    B = args.batch_of
    for d in [d for d in args.dims if d <= 4096]:
        sigma, L, C = spd_system(d, 1024, device, (B,))
        prims = {"eigvalsh": (lambda: torch.linalg.eigvalsh(sigma), lambda: [torch.linalg.eigvalsh(s) for s in sigma]),
                 "cholesky": (lambda: torch.linalg.cholesky(sigma), lambda: [torch.linalg.cholesky(s) for s in sigma]),
                 "solve_triangular (d x 1024)": (
                     lambda: torch.linalg.solve_triangular(L, C, upper=False),
                     lambda: [torch.linalg.solve_triangular(l, c, upper=False) for l, c in zip(L, C)])}
        for name, (batched, looped) in prims.items():
            t = interleaved({"batched": batched, "looped": looped}, args.reps, device)
            summary.append((f"finalize fp64 d={d}, {B} matrices", name, f"batched {t['batched'] * 1e3:.1f} ms",
                            f"looped {t['looped'] * 1e3:.1f} ms", f"batched/looped {t['batched'] / t['looped']:.2f}"))
            rows_out.append({"bench": "finalize_batched", "op": name, "d_in": d, "device": device, "matrices": B,
                             "batched_s": round(t["batched"], 6), "looped_s": round(t["looped"], 6)})
        del sigma, L, C


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[4096, 12288])
    ap.add_argument("--rows", type=int, default=65536)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batches", type=int, default=16)  # 16 × 4 × 2048 = 131,072 tokens
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--only-finalize", action="store_true",
                    help="the float64 finalize primitives only (runs on --device cpu too, with small --dims)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: a dry run of every section (with --smoke: tiny shapes), so that the script's first "
                         "GPU run does not spend device time on a Python error")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny shapes everywhere (dims 64, 512 rows, a 2-block model of hidden 64, 64 tokens): "
                         "checks that every section runs, measures nothing")
    ap.add_argument("--csv", type=Path, default=RESULTS, help="where the rows are appended (default bench/results.csv)")
    ap.add_argument("--batch-of", type=int, default=4, help="equal-shape matrices in the batched-finalize rows")
    args = ap.parse_args(argv)
    if args.smoke:
        args.dims, args.rows, args.reps, args.layers = [64], 512, 1, 2
        args.batches, args.batch, args.seq, args.batch_of = 2, 2, 16, 2
    summary, rows_out = [], []
    t0 = time.time()
    sections = (finalize_primitives, batched_finalize) if args.only_finalize else \
        (roofline_ops,) + (() if args.skip_sweep else (qwen3_sweep,)) + (finalize_primitives, batched_finalize)
    for section in sections:
        done, written = len(summary), len(rows_out)
        try:
            section(args, summary, rows_out)
        except Exception:  # report and keep going: one script, one summary
            traceback.print_exc()
            summary.append((section.__name__, "FAILED", "see traceback above", "", ""))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        # Each section's rows as soon as it ends: a run stopped by gpu_check.sh's timeout keeps them.
        for r in summary[done:]:
            print("  ".join(str(c) for c in r), flush=True)
        append(rows_out[written:], args.csv)
    print(f"\n# {machine()}  ({time.time() - t0:.0f} s)")
    widths = [max(len(str(r[i])) for r in summary) for i in range(5)] if summary else [0] * 5
    for r in summary:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()

"""Profiling sweep vs plain forward+backward of the same frozen model on the same batches.

Measured side by side in one run, interleaved (plain, sweep, plain, sweep, ...) so that
machine noise hits both alike; the ratio of medians is the figure. Three passes:

* plain   — frozen model, loss.backward() with input gradients only (what the sweep's
            backward does: the embedding output requires grad, no parameter does);
* train   — the same with every parameter trainable (a full fine-tuning step's backward);
* sweep   — ``layerprof.profile`` over the batches (taps + accumulation, no finalize);
            finalize is timed separately.

Peak memory is measured per pass in a fresh subprocess: the peak resident set size
during the pass above the resident size just before it (sampled every ms); on CUDA,
torch.cuda.max_memory_allocated above the memory allocated before it.
Every available backend's sweep is timed in the same interleaved run. Appends rows to
bench/results.csv with the machine described.

    python bench/bench_sweep.py [--batches 24] [--reps 5] [--device cpu] [--backends torch cpp]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

from harness import append, interleaved, machine, plain_backward

from layerprof.memory import PeakMemory


def setup(args):
    from layerprof.bundled import calibration_batches, load_default_model

    model = load_default_model().to(args.device)
    batches = [{k: v.to(args.device) for k, v in b.items()}
               for b in calibration_batches(batch_size=args.batch_size, seq_len=args.seq_len, n_batches=args.batches)]
    return model, batches


def run_plain(model, batches, device, trainable=False):
    plain_backward(model, batches, trainable)


def run_sweep(model, batches, device, backend="auto"):
    import layerprof as lp

    card = lp.profile(model, batches, progress=False, backend=backend)
    return card.meta["sweep"]["seconds"], card.meta["sweep"]["finalize_seconds"], card


def memory_of(args) -> int:
    model, batches = setup(args)
    run_plain(model, batches[:1], args.device)  # allocator and autograd warm; not counted
    with PeakMemory(args.device) as peak:
        if args.memory_of == "plain":
            run_plain(model, batches, args.device)
        elif args.memory_of == "train":
            run_plain(model, batches, args.device, trainable=True)
        else:
            run_sweep(model, batches, args.device, args.memory_of.split(":", 1)[1])
    return peak.bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backends", nargs="+", default=None, help="sweep backends to compare (default: all here)")
    ap.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_of:
        print(json.dumps({"peak_bytes": memory_of(args)}))
        return

    from layerprof import ops

    table = ops.backends()
    dev = args.device.split(":")[0]
    backends = args.backends or [b for b in ("torch", "cpp", "cuda", "triton")
                                 if table[b].available and dev in table[b].devices
                                 and not (b == "triton" and dev == "cpu")]
    model, batches = setup(args)
    rows = sum(int(b["attention_mask"].sum()) for b in batches)
    fns = {"plain": lambda: run_plain(model, batches, args.device),
           "train": lambda: run_plain(model, batches, args.device, trainable=True)}
    finalize = {}

    def sweep(b):
        def fn():
            finalize[b] = run_sweep(model, batches, args.device, b)[1]
        return fn

    fns.update({f"sweep:{b}": sweep(b) for b in backends})
    med = interleaved(fns, args.reps, args.device)
    # A sweep's time as reported by the card excludes finalize; the interleaved timing above
    # includes it, so take finalize out for the sweep-vs-plain ratio and report it alone.
    mem = {}
    for kind in ["plain", "train"] + [f"sweep:{b}" for b in backends]:
        cmd = [sys.executable, __file__, "--memory-of", kind, "--batches", str(args.batches), "--batch-size",
               str(args.batch_size), "--seq-len", str(args.seq_len), "--device", args.device]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        mem[kind] = json.loads(out)["peak_bytes"]
    rows_out = []
    print(f"# {machine()}\n# bundled shakespeare-gpt2, {args.batches} batches × {args.batch_size} × {args.seq_len}, "
          f"{rows:,} tokens, median of {args.reps} interleaved")
    print(f"{'pass':<14}{'seconds':>9}{'/plain':>8}{'finalize s':>12}{'peak MiB':>10}")
    for kind, t in med.items():
        fin = finalize.get(kind.split(":", 1)[1], 0.0) if kind.startswith("sweep") else 0.0
        sweep_t = t - fin
        print(f"{kind:<14}{sweep_t:>9.3f}{sweep_t / med['plain']:>8.2f}{fin:>12.3f}{mem[kind] / 2 ** 20:>10.1f}")
        rows_out.append({"bench": "sweep_vs_plain", "pass": kind, "device": args.device, "rows": rows,
                         "batches": args.batches, "reps": args.reps, "seconds": round(sweep_t, 4),
                         "over_plain": round(sweep_t / med["plain"], 3), "finalize_s": round(fin, 4),
                         "peak_mib": round(mem[kind] / 2 ** 20, 1),
                         "model": "bundled shakespeare-gpt2 (8x128, 1.65M params)"})
    append(rows_out)


if __name__ == "__main__":
    main()

"""Profiling sweep vs plain forward+backward of the same frozen model on the same batches.

Measured side by side in one run, interleaved (plain, sweep, plain, sweep, ...) so that
machine noise hits both alike; the ratio of medians is the figure. Three passes:

* plain   — frozen model, loss.backward() with input gradients only (what the sweep's
            backward does: the embedding output requires grad, no parameter does);
* train   — the same with every parameter trainable (a full fine-tuning step's backward);
* sweep   — ``layerprof.profile`` over the batches: the card's sweep time (taps +
            accumulation), finalize beside it, and the whole profile() call
            (``layerprof.pipeline.benchmark.sweep_vs_plain``: the one definition `layerprof bench` uses).

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

from harness import append, plain_backward

from layerprof.pipeline.benchmark import sweep_vs_plain, table

from layerprof.utils.memory import PeakMemory


def setup(args):
    from layerprof.model.bundled import calibration_batches, load_default_model

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

    from layerprof.stats import ops

    status = ops.backends()
    dev = args.device.split(":")[0]
    backends = args.backends or [b for b in ("torch", "cpp", "cuda", "triton")
                                 if status[b].available and dev in status[b].devices
                                 and not (b == "triton" and dev == "cpu")]
    model, batches = setup(args)
    # The headline ratio, defined once (layerprof.pipeline.benchmark.sweep_vs_plain): the card's sweep time
    # (finalize excluded) over plain; finalize and the whole profile() beside it; a trainable
    # fwd+bwd ("train") interleaved as a further reference.
    result = sweep_vs_plain(model, batches, reps=args.reps, backends=tuple(backends),
                            extra={"train": lambda: run_plain(model, batches, args.device, trainable=True)})
    mem = {}
    for kind in ["plain", "train"] + [f"sweep:{b}" for b in backends]:
        cmd = [sys.executable, __file__, "--memory-of", kind, "--batches", str(args.batches), "--batch-size",
               str(args.batch_size), "--seq-len", str(args.seq_len), "--device", args.device]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        mem[kind] = json.loads(out)["peak_bytes"]
    print(f"# bundled shakespeare-gpt2, {args.batches} batches × {args.batch_size} × {args.seq_len}")
    print(table(result, mem))
    rows_out = []
    for b, p in result["passes"].items():
        rows_out.append({"bench": "sweep_vs_plain", "pass": f"sweep:{b}", "device": args.device, "rows": result["rows"],
                         "batches": args.batches, "reps": args.reps, "seconds": round(p["sweep_seconds"], 4),
                         "over_plain": round(p["ratio"], 3), "finalize_s": round(p["finalize_seconds"], 4),
                         "profile_over_plain": round(p["profile_ratio"], 3),
                         "peak_mib": round(mem[f"sweep:{b}"] / 2 ** 20, 1),
                         "model": "bundled shakespeare-gpt2 (8x128, 1.65M params)"})
    append(rows_out)


if __name__ == "__main__":
    main()

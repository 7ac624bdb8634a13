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
Appends a row to bench/results.csv with the machine described.

    python bench/bench_sweep.py [--batches 24] [--reps 5] [--device cpu]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}; {os.cpu_count()} cores; torch {torch.__version__} threads {torch.get_num_threads()}; {gpu}"


def setup(args):
    from layerprof.bundled import calibration_batches, load_default_model

    model = load_default_model().to(args.device)
    batches = [{k: v.to(args.device) for k, v in b.items()}
               for b in calibration_batches(batch_size=args.batch_size, seq_len=args.seq_len, n_batches=args.batches)]
    return model, batches


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_plain(model, batches, device, trainable=False):
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(trainable)
    handle = model.get_input_embeddings().register_forward_hook(lambda m, i, o: o.requires_grad_(True))
    try:
        sync(device)
        t = time.perf_counter()
        for b in batches:
            model(**b).loss.backward()
        sync(device)
        return time.perf_counter() - t
    finally:
        handle.remove()
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
            p.grad = None


def run_sweep(model, batches, device):
    import layerprof as lp

    sync(device)
    card = lp.profile(model, batches, progress=False)
    sync(device)
    return card.meta["sweep"]["seconds"], card.meta["sweep"]["finalize_seconds"], card


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


class RssSampler(threading.Thread):
    """Peak resident memory while a pass runs, sampled every millisecond (CPU has no allocator peak)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = _rss()
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(0.001):
            self.peak = max(self.peak, _rss())


def memory_of(args) -> int:
    model, batches = setup(args)
    run_plain(model, batches[:1], args.device)  # allocator and autograd warm; not counted
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss()
        sampler = RssSampler()
        sampler.start()
    if args.memory_of == "plain":
        run_plain(model, batches, args.device)
    elif args.memory_of == "train":
        run_plain(model, batches, args.device, trainable=True)
    else:
        run_sweep(model, batches, args.device)
    if args.device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() - base
    sampler.done.set()
    sampler.join()
    return max(sampler.peak, _rss()) - base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--memory-of", choices=["plain", "train", "sweep"], help=argparse.SUPPRESS)
    ap.add_argument("--csv", default=str(HERE / "results.csv"))
    args = ap.parse_args()
    if args.memory_of:
        print(json.dumps({"peak_bytes": memory_of(args)}))
        return

    model, batches = setup(args)
    rows = sum(int(b["attention_mask"].sum()) for b in batches)
    run_plain(model, batches[:2], args.device)  # warm-up both paths
    run_sweep(model, batches[:2], args.device)
    plain, train, sweep, fin = [], [], [], []
    for _ in range(args.reps):
        plain.append(run_plain(model, batches, args.device))
        s, f, card = run_sweep(model, batches, args.device)
        sweep.append(s)
        fin.append(f)
        train.append(run_plain(model, batches, args.device, trainable=True))
    mem = {}
    for kind in ("plain", "train", "sweep"):
        cmd = [sys.executable, __file__, "--memory-of", kind, "--batches", str(args.batches), "--batch-size",
               str(args.batch_size), "--seq-len", str(args.seq_len), "--device", args.device]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        mem[kind] = json.loads(out)["peak_bytes"]
    med = {k: statistics.median(v) for k, v in (("plain", plain), ("train", train), ("sweep", sweep),
                                               ("finalize", fin))}
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "bench": "sweep_vs_plain", "model": "bundled shakespeare-gpt2 (8×128, 1.65M params)",
        "device": args.device, "rows": rows, "batches": args.batches, "reps": args.reps,
        "plain_s": round(med["plain"], 4), "train_s": round(med["train"], 4), "sweep_s": round(med["sweep"], 4),
        "finalize_s": round(med["finalize"], 4),
        "sweep_over_plain": round(med["sweep"] / med["plain"], 3),
        "sweep_over_train": round(med["sweep"] / med["train"], 3),
        "peak_mib_plain": round(mem["plain"] / 2 ** 20, 1), "peak_mib_train": round(mem["train"] / 2 ** 20, 1),
        "peak_mib_sweep": round(mem["sweep"] / 2 ** 20, 1),
        "machine": machine(), "layerprof_backend": card.meta["settings"]["backend"],
    }
    path = Path(args.csv)
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(result))
        if new:
            w.writeheader()
        w.writerow(result)
    width = max(map(len, result))
    for k, v in result.items():
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()

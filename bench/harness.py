"""Shared benchmark helpers: machine description, interleaved timing, one results CSV."""
from __future__ import annotations

import csv
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.csv"


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


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[], None]], reps: int, device: str = "cpu", warmup: int = 1) -> dict:
    """Median seconds of each callable, run round-robin so that machine noise hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def append(rows: list[dict], path: Path = RESULTS) -> None:
    """Append result rows (any columns) to the one results CSV, with date and machine."""
    stamp = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine()}
    existing = []
    header: list[str] = []
    if path.exists():
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            existing = list(reader)
    for r in rows:
        for k in list(stamp) + list(r):
            if k not in header:
                header.append(k)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        for r in existing:
            w.writerow(r)
        for r in rows:
            w.writerow({**stamp, **r})


def plain_backward(model, batches, trainable: bool = False) -> None:
    """The baseline pass: forward + backward of the same model on the same batches.

    Frozen (default): every parameter frozen and the embedding output made to require grad,
    so backward computes input gradients through every block — what a profiling sweep's
    backward does. ``trainable=True``: every weight gets a gradient (a full fine-tuning step).
    Flags and .grad are restored.
    """
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(trainable)
    handle = model.get_input_embeddings().register_forward_hook(lambda m, i, o: o.requires_grad_(True))
    try:
        for b in batches:
            model(**b).loss.backward()
    finally:
        handle.remove()
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
            p.grad = None

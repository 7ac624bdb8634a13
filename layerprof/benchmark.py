"""Side-by-side timing of a profiling sweep against the pass that feeds it (``layerprof bench``).

The figure that matters is a ratio measured in one run: the sweep's wall time over a
plain forward+backward of the same frozen model on the same batches (input gradients
only, what the sweep's backward computes), the passes interleaved so that machine noise
hits both alike. ``bench/`` builds its fuller benchmarks on these helpers.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch


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


def sweep_vs_plain(model, batches: list, *, reps: int = 3, backend: str = "auto") -> dict:
    """Median seconds of plain frozen fwd+bwd and of ``layerprof.profile`` (sweep only), and their ratio."""
    from .profiler import profile

    device = str(next(model.parameters()).device)
    sweep_s: list[float] = []

    def sweep():
        card = profile(model, batches, progress=False, backend=backend)
        sweep_s.append(card.meta["sweep"]["seconds"])
        sweep.card = card

    med = interleaved({"plain": lambda: plain_backward(model, batches), "sweep": sweep}, reps, device)
    card = sweep.card
    return {"plain_seconds": med["plain"], "sweep_seconds": med["sweep"], "ratio": med["sweep"] / med["plain"],
            "finalize_seconds": card.meta["sweep"]["finalize_seconds"], "backend": card.meta["settings"]["backend"],
            "rows": card.meta["data"]["rows"], "batches": len(batches), "reps": reps, "machine": machine()}

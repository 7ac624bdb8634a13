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


def interleaved(fns: dict[str, Callable[[], None]], reps: int, device: str = "cpu", warmup: int = 1,
                clock: Callable[[], float] | None = None) -> dict:
    """Median seconds of each callable, run round-robin so that machine noise hits all alike. The clock
    is wall time (``time.perf_counter``) unless given (``time.process_time``: process CPU time, the
    steadiest on a shared CPU)."""
    clock = clock or time.perf_counter
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            sync(device)
            t = clock()
            fn()
            sync(device)
            times[k].append(clock() - t)
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


def sweep_vs_plain(model, batches: list, *, reps: int = 3, backend: str = "auto",
                   backends: tuple[str, ...] | None = None, extra: dict[str, Callable[[], None]] | None = None,
                   coupling: bool | None = False) -> dict:
    """The headline ratio, defined once: **sweep ÷ plain**, where sweep is the card's own sweep time
    (taps + accumulation over the batches, finalize excluded) and plain is a frozen forward+backward
    of the same model on the same batches. Finalize is its own figure and a share of the whole
    ``profile()``; the whole ``profile()`` over plain is reported beside it. One ``profile`` per backend
    in ``backends`` (default: ``backend``), interleaved with the plain pass (and any ``extra`` passes);
    every figure is the median over ``reps``. ``coupling`` is passed to ``profile`` (default False, as
    ``profile``'s; None: wherever the statistics are dense); its seconds are their own figure too.
    """
    from .profiler import profile

    device = str(next(model.parameters()).device)
    backends = tuple(backends or (backend,))
    runs: dict[str, dict[str, list[float]]] = {b: {"sweep": [], "finalize": [], "coupling": []} for b in backends}
    cards = {}

    def sweep(b):
        def fn():
            card = profile(model, batches, progress=False, backend=b, coupling=coupling)
            runs[b]["sweep"].append(card.meta["sweep"]["seconds"])
            runs[b]["finalize"].append(card.meta["sweep"]["finalize_seconds"])
            runs[b]["coupling"].append((card.meta.get("coupling") or {}).get("seconds", 0.0))
            cards[b] = card
        return fn

    fns = {"plain": lambda: plain_backward(model, batches), **(extra or {})}
    fns.update({f"profile:{b}": sweep(b) for b in backends})
    med = interleaved(fns, reps, device)
    plain = med["plain"]
    passes = {}
    for b in backends:
        s, f = statistics.median(runs[b]["sweep"][-reps:]), statistics.median(runs[b]["finalize"][-reps:])
        total = med[f"profile:{b}"]
        c = statistics.median(runs[b]["coupling"][-reps:]) if cards[b].meta.get("coupling") else None
        passes[b] = {"backend": cards[b].meta["settings"]["backend"], "sweep_seconds": s, "ratio": s / plain,
                     "finalize_seconds": f, "finalize_share": f / total if total > 0 else None,
                     "coupling_seconds": c,
                     "profile_seconds": total, "profile_ratio": total / plain}
    first = passes[backends[0]]
    return {"plain_seconds": plain, **first, "passes": passes,
            "extra": {k: {"seconds": med[k], "ratio": med[k] / plain} for k in (extra or {})},
            "rows": cards[backends[0]].meta["data"]["rows"], "batches": len(batches), "reps": reps,
            "machine": machine()}


def table(result: dict, memory: dict[str, int] | None = None) -> str:
    """The benchmark table `layerprof bench` and bench/bench_sweep.py both print (Markdown)."""
    mem = memory or {}
    col = " | peak MiB" if mem else ""
    lines = [f"plain frozen forward+backward: {result['plain_seconds']:.3f} s (median of {result['reps']}); "
             f"{result['rows']:,} rows in {result['batches']} batches; {result['machine']}", "",
             "| pass | sweep s | sweep / plain | finalize s | finalize share | coupling s | profile() s "
             "| profile() / plain" + col + " |", "|---|---:|---:|---:|---:|---:|---:|---:" + ("|---:" if mem else "") + "|"]

    def mib(key):
        return f" | {mem[key] / 2 ** 20:.1f}" if key in mem else (" | –" if mem else "")

    lines.append(f"| plain | {result['plain_seconds']:.3f} | 1.00 | – | – | – | – | –{mib('plain')} |")
    for name, x in result.get("extra", {}).items():
        lines.append(f"| {name} | {x['seconds']:.3f} | {x['ratio']:.2f} | – | – | – | – | –{mib(name)} |")
    for b, p in result["passes"].items():
        share = f"{p['finalize_share']:.0%}" if p["finalize_share"] is not None else "–"
        coupling = f"{p['coupling_seconds']:.3f}" if p.get("coupling_seconds") is not None else "–"
        lines.append(f"| sweep ({p['backend']}) | {p['sweep_seconds']:.3f} | {p['ratio']:.2f} | "
                     f"{p['finalize_seconds']:.3f} | {share} | {coupling} | {p['profile_seconds']:.3f} | "
                     f"{p['profile_ratio']:.2f}{mib('sweep:' + b)} |")
    lines += ["", "sweep = taps + accumulation (the card's meta.sweep.seconds); finalize = the solves "
              "(meta.sweep.finalize_seconds); coupling = the default placement's coupling matrix "
              "(meta.coupling.seconds; – when not measured); profile() = the whole call, wall clock."]
    return "\n".join(lines)

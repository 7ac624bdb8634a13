"""The benchmark suite's clock, machine record and the one pattern every ratio uses (``paired``).

Process CPU time with one thread by default: on a shared machine it is the steadiest clock, and the
ratios the docs quote were measured that way. ``LAYERPROF_BENCH_CLOCK=wall`` (GPU runs: the GPU's
work is not the process's CPU time) times wall clock instead, synchronising CUDA; ``LAYERPROF_BENCH_THREADS``
sets torch's threads (default 1). pytest-benchmark's own timer is set to the same clock, so the
two sides of a ratio are measured alike.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

WALL = os.environ.get("LAYERPROF_BENCH_CLOCK", "process") == "wall"
CLOCK = time.perf_counter if WALL else time.process_time
THREADS = int(os.environ.get("LAYERPROF_BENCH_THREADS", "1"))


def pytest_configure(config):
    if hasattr(config.option, "benchmark_timer"):
        config.option.benchmark_timer = "time.perf_counter" if WALL else "time.process_time"
    torch.set_num_threads(THREADS)


def pytest_benchmark_update_machine_info(config, machine_info):
    from layerprof import __version__
    from layerprof.pipeline.benchmark import machine

    machine_info["layerprof"] = {"version": __version__, "machine": machine(), "torch": torch.__version__,
                                 "clock": "wall" if WALL else "process CPU time", "threads": THREADS,
                                 "python": platform.python_version()}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def paired(benchmark, target, baseline, *, rounds: int, warmup: bool = True, info: dict | None = None):
    """Time ``target`` with pytest-benchmark and ``baseline`` by the same clock in each round's setup, so
    the two alternate and the machine's noise hits both alike. Records the baseline's median seconds and
    the ratio target ÷ baseline (medians) in ``extra_info``; returns ``target``'s last result."""
    base: list[float] = []

    def setup():
        sync()
        t = CLOCK()
        baseline()
        sync()
        base.append(CLOCK() - t)

    if warmup:
        baseline()
        target()
    result = benchmark.pedantic(target, setup=setup, rounds=rounds, iterations=1)
    sync()
    if benchmark.disabled:  # --benchmark-disable (the tests' dry run): each side ran once, nothing timed
        return result
    b = statistics.median(base)
    benchmark.extra_info.update({"baseline_seconds": b, "ratio": benchmark.stats.stats.median / b, **(info or {})})
    return result


@pytest.fixture(scope="session")
def bundled():
    """The bundled GPT-2 on the sweep benchmark's batches: 24 × 8 × 128 tokens of Python's documentation."""
    from layerprof.model.bundled import calibration_batches, load_default_model

    model = load_default_model()
    return model, calibration_batches(n_batches=24, batch_size=8, seq_len=128)


def linear_flops_ratio(model) -> float:
    """(The linear layers' FLOPs of a plain forward+backward + the statistics' GEMMs) ÷ the former
    (``layerprof.pipeline.profile_cost``). It is the sweep's FLOP floor where linear layers dominate the
    pass (large models); on a small model the plain pass is mostly other work (attention, embeddings,
    element-wise) and the sweep measures below it."""
    from layerprof.pipeline.profile_cost import model_cost

    cost = model_cost(model, tokens=1, device="cpu")
    return (cost.plain_flops + cost.sweep_extra_flops) / cost.plain_flops

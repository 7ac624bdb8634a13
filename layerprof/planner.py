"""Memory planner: dense or sketched statistics, decided before the sweep (issue: scale out).

Per module m (accumulator dtype of b bytes), the sweep holds
    dense:   3·(d_in² + d_in·d_out)·b      (two halves + the staged batch)
    sketch:  3·(d_in² + d_in·k)·b          (k < d_out; S is kept whole)
plus the taps' saved inputs for one batch, rows·d_in·(input bytes) per module (an upper
bound: modules that share an input save it once). The planner picks dense when it fits
``max_memory`` (default: 80% of the free memory of the statistics' device), else the
sketch, else refuses with the figures and what to do.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .targets import Target

SAFE_FRACTION = 0.8
DEFAULT_SKETCH = 128


@dataclass(frozen=True)
class MemoryPlan:
    mode: str                 # "dense" or "sketch"
    sketch: int | None
    statistics_bytes: int     # for the chosen mode
    dense_bytes: int
    sketch_bytes: int
    activation_bytes: int     # taps' saved inputs for one batch (upper bound)
    max_memory: int
    device: str

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        gib = 2 ** 30
        return (f"layerprof memory plan on {self.device}: {self.mode} statistics "
                f"({self.statistics_bytes / gib:.2f} GiB; dense {self.dense_bytes / gib:.2f} GiB, sketch k="
                f"{self.sketch or DEFAULT_SKETCH} {self.sketch_bytes / gib:.2f} GiB) + tap inputs ≤ "
                f"{self.activation_bytes / gib:.2f} GiB per batch, budget {self.max_memory / gib:.2f} GiB")


def free_memory(device: torch.device) -> int:
    """Free bytes on ``device`` (CUDA: cudaMemGetInfo; CPU: MemAvailable)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2 ** 30  # unknown platform: assume a modest machine


def plan_memory(targets: dict[str, Target], *, acc_bytes: int, input_bytes: int, rows_per_batch: int,
                device: torch.device, sketch: int | None | str = "auto", max_memory: int | None = None) -> MemoryPlan:
    """Choose dense or sketched statistics to fit ``max_memory`` (see module docstring)."""
    budget = int(max_memory) if max_memory is not None else int(SAFE_FRACTION * free_memory(device))
    k = DEFAULT_SKETCH if sketch in ("auto", None) else int(sketch)
    dense = sum(3 * (t.d_in ** 2 + t.d_in * t.d_out) * acc_bytes for t in targets.values())
    sk = sum(3 * (t.d_in ** 2 + t.d_in * min(k, t.d_out)) * acc_bytes for t in targets.values())
    act = sum(rows_per_batch * t.d_in * input_bytes for t in targets.values())
    common = dict(dense_bytes=dense, sketch_bytes=sk, activation_bytes=act, max_memory=budget, device=str(device))
    if sketch is None or (sketch == "auto" and dense + act <= budget):
        mode, chosen, used = "dense", None, dense
    else:
        mode, chosen, used = "sketch", k, sk
    if used + act > budget:
        gib = 2 ** 30
        raise MemoryError(
            f"layerprof statistics do not fit: {mode} needs {used / gib:.2f} GiB + {act / gib:.2f} GiB of tap inputs, "
            f"budget {budget / gib:.2f} GiB (dense would need {dense / gib:.2f} GiB, sketch k={k} {sk / gib:.2f} GiB). "
            "Profile fewer modules per sweep (targets=[...] in several runs), use smaller batches, "
            + ("a smaller sketch=k, " if mode == "sketch" else "sketch='auto', ")
            + "or raise max_memory")
    return MemoryPlan(mode=mode, sketch=chosen, statistics_bytes=used, **common)

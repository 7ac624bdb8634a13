"""Memory planner: dense or sketched statistics, decided before the sweep (issue: scale out).

Per module m (accumulator dtype of b bytes), the sweep holds
    dense:   3·(d_in² + d_in·d_out)·b      (two halves + the staged batch)
    sketch:  3·(d_in² + d_in·k)·b          (k < d_out; S is kept whole)
plus the taps' saved inputs for one batch, rows·d_in·(input bytes) per module. Both are
upper bounds: modules that read one input (q/k/v, gate/up) share one S and one saved
input. The planner picks dense when it fits ``max_memory`` (default: 80% of the free
memory of the statistics' device), else the sketch; when even that does not fit (or
dense was forced with ``sketch=None``), it splits the targets into groups of whole
layers that each fit and the profiler runs one sweep per group over the same batches.
Only a single layer that does not fit on its own is refused, with the figures and what
to do.
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
    groups: list | None = None  # target names per sweep when one sweep does not fit

    @property
    def sweeps(self) -> int:
        return len(self.groups) if self.groups else 1

    def to_dict(self) -> dict:
        out = asdict(self)
        out["sweeps"] = self.sweeps
        return out

    def describe(self) -> str:
        gib = 2 ** 30
        return (f"layerprof memory plan on {self.device}: {self.mode} statistics "
                f"({self.statistics_bytes / gib:.2f} GiB; dense {self.dense_bytes / gib:.2f} GiB, sketch k="
                f"{self.sketch or DEFAULT_SKETCH} {self.sketch_bytes / gib:.2f} GiB) + tap inputs ≤ "
                f"{self.activation_bytes / gib:.2f} GiB per batch, budget {self.max_memory / gib:.2f} GiB"
                + (f"; {self.sweeps} sweeps over the same batches, one group of layers each "
                   f"(largest group {self.statistics_bytes / gib:.2f} GiB)" if self.groups else ""))


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
    if used + act <= budget:
        return MemoryPlan(mode=mode, sketch=chosen, statistics_bytes=used, **common)
    # Several sweeps: consecutive whole layers per group (a layer's modules stay together so
    # every layer row is finalized from one sweep); modules outside any layer go alone.
    width = (lambda t: t.d_out) if mode == "dense" else (lambda t: min(k, t.d_out))
    stats = {n: 3 * (t.d_in ** 2 + t.d_in * width(t)) * acc_bytes for n, t in targets.items()}
    acts = {n: rows_per_batch * t.d_in * input_bytes for n, t in targets.items()}
    units: list[list[str]] = []
    for name, t in targets.items():
        if t.layer is not None and units and targets[units[-1][0]].layer == t.layer:
            units[-1].append(name)
        else:
            units.append([name])
    groups: list[list[str]] = []
    need = lambda names: sum(stats[n] + acts[n] for n in names)  # noqa: E731
    for unit in units:
        if need(unit) > budget:
            gib = 2 ** 30
            t = targets[unit[0]]
            what = f"layer {t.layer}" if t.layer is not None else f"module {unit[0]}"
            raise MemoryError(
                f"layerprof statistics do not fit even one layer per sweep: {what} needs {need(unit) / gib:.2f} GiB "
                f"({mode}{f' k={k}' if mode == 'sketch' else ''}, statistics + tap inputs), budget "
                f"{budget / gib:.2f} GiB. Use smaller batches (fewer rows per batch), "
                + ("a smaller sketch=k, " if mode == "sketch" else "sketch='auto', ")
                + "fewer targets per layer (targets=[...]), or raise max_memory")
        if groups and need(groups[-1] + unit) <= budget:
            groups[-1] += unit
        else:
            groups.append(list(unit))
    largest = max(sum(stats[n] for n in g) for g in groups)
    return MemoryPlan(mode=mode, sketch=chosen, statistics_bytes=largest, groups=groups, **common)

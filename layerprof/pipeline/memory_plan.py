"""Memory plan: dense or sketched statistics, in one sweep or several, decided before the sweep.

Per module m (accumulator dtype of b bytes), the sweep holds
    dense:   3·(d_in² + d_in·d_out)·b      (two halves + the staged batch)
    sketch:  3·(d_in² + d_in·k)·b          (k < d_out; S is kept whole)
plus the taps' saved inputs for one batch, rows·d_in·(input bytes) per module. Modules
that read one input (q/k/v, gate/up) share one S and one saved input: when the first
estimate (every module alone, an upper bound) does not fit, one no-grad forward of the
first batch finds which modules share inputs (``shared_inputs``) and the estimate counts
each shared S and input once. The planner picks dense when it fits ``max_memory`` (default: 80% of the free
memory of the statistics' device), else the sketch; when even that does not fit (or
dense was forced with ``sketch=None``), it splits the targets into groups of whole
layers that each fit and the profiler runs one sweep per group over the same batches.
Only a single layer that does not fit on its own is refused, with the figures and what
to do.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Hashable, Mapping

import torch

from ..utils.memory import human_bytes
from ..model.targets import Target

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
        return (f"layerprof memory plan on {self.device}: {self.mode} statistics "
                f"({human_bytes(self.statistics_bytes)}; dense {human_bytes(self.dense_bytes)}, sketch k="
                f"{self.sketch or DEFAULT_SKETCH} {human_bytes(self.sketch_bytes)}) + tap inputs ≤ "
                f"{human_bytes(self.activation_bytes)} per batch, budget {human_bytes(self.max_memory)}"
                + (f"; {self.sweeps} sweeps over the same batches, one group of layers each "
                   f"(largest group {human_bytes(self.statistics_bytes)})" if self.groups else ""))


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
                device: torch.device, sketch: int | None | str = "auto", max_memory: int | None = None,
                shared: Mapping[str, Hashable] | None = None) -> MemoryPlan:
    """Choose dense or sketched statistics, in one or several sweeps, to fit ``max_memory``.

    ``shared`` maps target names to the input they read (``shared_inputs``): modules with
    one key hold one S and save one input, so they are counted once. Without it every
    module is counted alone (an upper bound).
    """
    budget = int(max_memory) if max_memory is not None else int(SAFE_FRACTION * free_memory(device))
    k = DEFAULT_SKETCH if sketch in ("auto", None) else int(sketch)
    key = (lambda n: shared.get(n, n)) if shared else (lambda n: n)

    def stats_bytes(names, width) -> int:
        grams = {key(n): targets[n].d_in for n in names}
        return 3 * acc_bytes * (sum(d * d for d in grams.values())
                                + sum(targets[n].d_in * width(targets[n]) for n in names))

    def act_bytes(names) -> int:
        return sum(rows_per_batch * d * input_bytes for d in {key(n): targets[n].d_in for n in names}.values())

    dense_w, sketch_w = (lambda t: t.d_out), (lambda t: min(k, t.d_out))
    names = list(targets)
    dense, sk, act = stats_bytes(names, dense_w), stats_bytes(names, sketch_w), act_bytes(names)
    common = dict(dense_bytes=dense, sketch_bytes=sk, activation_bytes=act, max_memory=budget, device=str(device))
    if sketch is None or (sketch == "auto" and dense + act <= budget):
        mode, chosen, used, width = "dense", None, dense, dense_w
    else:
        mode, chosen, used, width = "sketch", k, sk, sketch_w
    if used + act <= budget:
        return MemoryPlan(mode=mode, sketch=chosen, statistics_bytes=used, **common)
    # Several sweeps: consecutive whole layers per group (a layer's modules stay together so
    # every layer row is finalized from one sweep); modules outside any layer go alone.
    units: list[list[str]] = []
    for name, t in targets.items():
        if t.layer is not None and units and targets[units[-1][0]].layer == t.layer:
            units[-1].append(name)
        else:
            units.append([name])
    groups: list[list[str]] = []
    need = lambda names: stats_bytes(names, width) + act_bytes(names)  # noqa: E731
    for unit in units:
        if need(unit) > budget:
            t = targets[unit[0]]
            what = f"layer {t.layer}" if t.layer is not None else f"module {unit[0]}"
            raise MemoryError(
                f"layerprof statistics do not fit even one layer per sweep: {what} needs {human_bytes(need(unit))} "
                f"({mode}{f' k={k}' if mode == 'sketch' else ''}, statistics + tap inputs), budget "
                f"{human_bytes(budget)}. Use smaller batches (fewer rows per batch), "
                + ("a smaller sketch=k, " if mode == "sketch" else "sketch='auto', ")
                + "fewer targets per layer (targets=[...]), or raise max_memory")
        if groups and need(groups[-1] + unit) <= budget:
            groups[-1] += unit
        else:
            groups.append(list(unit))
    largest = max(stats_bytes(g, width) for g in groups)
    return MemoryPlan(mode=mode, sketch=chosen, statistics_bytes=largest, groups=groups, **common)


def shared_inputs(model: torch.nn.Module, targets: Mapping[str, Target], batch: Mapping) -> dict[str, tuple]:
    """Which targets read the same input tensor: one no-grad forward of ``batch`` with pre-hooks.

    Returns ``{name: key}``; equal keys mean the modules read the same tensors in every call
    of this forward (q/k/v, gate/up), so they will share one S and one saved input.
    """
    from ..stats.capture import InputKeys

    keys = InputKeys()  # object identity + version, as the sweep's own sharing uses
    seen: dict[str, list] = {n: [] for n in targets}
    by_module = {m: n for n, m in model.named_modules() if n in targets}

    def pre_hook(module, args, kwargs):
        x = args[0] if args else next(iter(kwargs.values()), None)
        if isinstance(x, torch.Tensor):
            seen[by_module[module]].append(keys(x))
        return None

    handles = [m.register_forward_pre_hook(pre_hook, with_kwargs=True) for m in by_module]
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    return {n: tuple(v) if v else ("unfired", n) for n, v in seen.items()}

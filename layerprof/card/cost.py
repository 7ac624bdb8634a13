"""Cost model of a LoRA placement for training on frozen base weights (docs/method.md).

Counted per calibration row (token), in FLOPs of the linear maps, which dominate a
transformer step:

* forward: every target module, 2·d_in·d_out, plus the output head; always paid.
* backward input-gradient work: 2·d_in·d_out for every module in layers at or above
  the lowest adapted layer ℓ_min, plus the head. Below ℓ_min nothing needs a gradient,
  so the backward pass stops there and those layers keep no saved activations.
* adapter work per adapted module with rank r: forward 2·r·(d_in + d_out), backward
  twice that (gradients of A, B and of the adapter's input), plus the adapter's
  memory-bound overhead γ·(d_in + d_out): reading its input again, adding its output,
  the extra small kernels and their backward. γ (``ADAPTER_OVERHEAD``, FLOP-equivalents
  per element) is fitted to measured LoRA step times (``studies/v1/scripts/fit_cost.py``); without
  it the model overestimated partial placements' cost by up to 20 points on the small
  GPT-2, because full LoRA pays this overhead on every module. It matters for small d
  (d = 128: γ·2d is ~50% of a module's 2·d² FLOPs) and vanishes for large d (d = 4096:
  ~3%). Fitted on a CPU; a GPU's balance differs (measure with studies/v1/scripts/fit_cost.py).

* attention, when the card records the model's attention width w (heads × head dim) and the
  calibration's sequence length T: the scores QKᵀ and their weighted sum PV cost 4·T·w FLOPs per
  row and layer forward, and twice that backward (dQ, dK, dV, dP) in layers from ℓ_min up. It is
  a FLOP count, not fitted: on the 16-block study decoder (d = 64, T = 128) it is a third of the
  linear maps' work, and leaving it out put mid and bottom placements 5–11 points below their
  measured step time (studies/v1/bench-notebook.md). Cards without the record (older cards, models
  without a transformers config) are costed without it.

Memory: trainable parameters P = Σ r·(d_in + d_out), with fp32 weight, gradient and
two Adam moments = 16·P bytes; saved activations scale with the layers from ℓ_min up
(reported as a fraction of all layers). Inference: the number of adapted modules.
Norms and element-wise work are left out (documented in the card). Figures are modelled, not measured,
unless the card carries a measured step cost (``layerprof.pipeline.step_cost``: the forward, backward and adapter
terms weighed by fitting LoRA steps timed on the user's machine).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping

from ..utils.errors import PlacementError

# FLOP-equivalents per element of an adapter's input + output (see the module docstring), fitted to
# measured step times on a CPU: docs/decisions/adapter-overhead.md.
ADAPTER_OVERHEAD = 127.0


@dataclass(frozen=True)
class ModuleShape:
    name: str
    layer: int
    d_in: int
    d_out: int


@dataclass(frozen=True)
class Cost:
    """Modelled cost of one placement; ``fraction`` is relative to full-layer LoRA."""

    fraction: float
    train_flops_per_row: float
    full_lora_flops_per_row: float
    adapter_params: int
    trainable_state_bytes: int
    activation_fraction: float
    adapted_modules: int
    lowest_layer: int | None

    def to_dict(self) -> dict:
        return asdict(self)


class CostModel:
    """Step cost of adapting a set of layers, from module shapes and the head's shape."""

    def __init__(self, modules: Iterable[ModuleShape], head_flops_per_row: float = 0.0,
                 overhead: float = ADAPTER_OVERHEAD, attention_flops_per_row: float = 0.0,
                 forward_scale: float = 1.0, backward_scale: float = 1.0, adapter_scale: float = 1.0):
        # The three scales: a measured step cost (layerprof.pipeline.step_cost) weighs the forward, the backward
        # and the adapters' terms by what they took on the user's machine; 1.0 each is the FLOP model.
        for name, v in (("forward_scale", forward_scale), ("backward_scale", backward_scale),
                        ("adapter_scale", adapter_scale)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} is a finite weight >= 0, got {v!r}")
        self.forward_scale = float(forward_scale)
        self.backward_scale = float(backward_scale)
        self.adapter_scale = float(adapter_scale)
        if not overhead >= 0:
            raise ValueError(f"overhead is FLOP-equivalents per element (>= 0), got {overhead!r}")
        if not attention_flops_per_row >= 0:
            raise ValueError(f"attention_flops_per_row is a FLOP count (>= 0), got {attention_flops_per_row!r}")
        self.overhead = float(overhead)
        self.attention = float(attention_flops_per_row)  # forward, per row and layer (backward: twice)
        self.modules = [m for m in modules if m.layer is not None]
        self.layers = sorted({m.layer for m in self.modules})
        self.head = float(head_flops_per_row)
        self.layer_flops = {l: 0.0 for l in self.layers}
        self.layer_dims = {l: [] for l in self.layers}
        for m in self.modules:
            self.layer_flops[m.layer] += 2.0 * m.d_in * m.d_out
            self.layer_dims[m.layer].append(m)
        self.forward = self.forward_scale * (sum(self.layer_flops.values()) + self.attention * len(self.layers)
                                             + self.head)
        # Backward work of a layer: its linear maps' input gradients and the attention's two matmuls' four.
        self.layer_backward = {l: self.backward_scale * (f + 2.0 * self.attention) for l, f in self.layer_flops.items()}
        self.head_backward = self.backward_scale * self.head
        self._full = None

    def adapter_flops(self, layer: int, ranks: Mapping[str, int] | int) -> float:
        return self.adapter_scale * sum((3 * 2.0 * _rank(ranks, m.name) + self.overhead) * (m.d_in + m.d_out)
                                        for m in self.layer_dims[layer])

    def adapter_params(self, layer: int, ranks: Mapping[str, int] | int) -> int:
        return sum(_rank(ranks, m.name) * (m.d_in + m.d_out) for m in self.layer_dims[layer])

    def backward_flops(self, lowest: int | None) -> float:
        if lowest is None:
            return 0.0
        return self.head_backward + sum(f for l, f in self.layer_backward.items() if l >= lowest)

    def backward_flops_each(self, lowest_layers: Iterable[int]) -> list[float]:
        """``backward_flops(l)`` for many l at once: suffix sums, O(L) instead of O(L) per layer."""
        suffix, acc = {}, 0.0
        for l in reversed(self.layers):
            acc += self.layer_backward[l]
            suffix[l] = self.head_backward + acc
        return [suffix[l] for l in lowest_layers]

    def step_flops(self, layers: Iterable[int], ranks: Mapping[str, int] | int) -> float:
        layers = list(layers)
        lowest = min(layers) if layers else None
        return self.forward + self.backward_flops(lowest) + sum(self.adapter_flops(l, ranks) for l in layers)

    def full_flops(self, ranks: Mapping[str, int] | int) -> float:
        return self.step_flops(self.layers, ranks)

    def cost(self, layers: Iterable[int], ranks: Mapping[str, int] | int) -> Cost:
        layers = sorted(set(layers))
        unknown = set(layers) - set(self.layers)
        if unknown:
            raise PlacementError(f"layers {sorted(unknown)} are not on the card (layers: {self.layers})")
        step = self.step_flops(layers, ranks)
        full = self.full_flops(ranks)
        params = sum(self.adapter_params(l, ranks) for l in layers)
        lowest = layers[0] if layers else None
        above = [l for l in self.layers if lowest is not None and l >= lowest]
        return Cost(
            fraction=step / full if full else 0.0,
            train_flops_per_row=step,
            full_lora_flops_per_row=full,
            adapter_params=int(params),
            trainable_state_bytes=int(16 * params),
            activation_fraction=len(above) / len(self.layers) if self.layers else 0.0,
            adapted_modules=sum(len(self.layer_dims[l]) for l in layers),
            lowest_layer=lowest,
        )


def cost_model(modules: Iterable, heads: Iterable[Mapping] = (), attention: Mapping | None = None,
               step_cost: Mapping | None = None) -> CostModel:
    """The cost model of a card's modules (rows or dicts with name, layer, d_in, d_out), output heads
    (dicts with d_in, d_out), attention (``{"width": w, "seq_len": T}`` or None) and measured step cost
    (``meta.step_cost`` of ``layerprof.pipeline.step_cost``, or None for the FLOP model): the one place a card's
    cost model is built (finalize, placement, merge)."""
    def field(m, key):
        return m[key] if isinstance(m, Mapping) else getattr(m, key)

    shapes = [ModuleShape(field(m, "name"), field(m, "layer"), field(m, "d_in"), field(m, "d_out")) for m in modules
              if field(m, "layer") is not None]
    attn = 4.0 * attention["width"] * attention["seq_len"] if attention else 0.0
    scales = {k: float(step_cost[k]) for k in ("forward_scale", "backward_scale", "adapter_scale")} if step_cost else {}
    return CostModel(shapes, sum(2.0 * h["d_in"] * h["d_out"] for h in heads), attention_flops_per_row=attn, **scales)


def mean_seq_len(shapes: Iterable[tuple[int, int]]) -> float | None:
    """The sequence length of n × T batches averaged over their positions, Σ n·T² / Σ n·T (attention's
    work per row grows with T); None without any."""
    shapes = list(shapes)
    positions = sum(n * t for n, t in shapes)
    return sum(n * t * t for n, t in shapes) / positions if positions else None


def attention_shape(model, seq_len: float | None) -> dict | None:
    """``{"width": heads × head dim, "seq_len": T}`` from the model's transformers config (the model's own
    or, for a wrapper, its first submodule's), or None where there is none or no sequence length."""
    if not seq_len:
        return None
    configs = [getattr(m, "config", None) for m in model.modules()]
    for config in configs:
        heads = getattr(config, "num_attention_heads", None)
        hidden = getattr(config, "hidden_size", None)
        if isinstance(heads, int) and heads > 0 and isinstance(hidden, int) and hidden > 0:
            head_dim = getattr(config, "head_dim", None)
            width = heads * head_dim if isinstance(head_dim, int) and head_dim > 0 else hidden
            return {"width": int(width), "seq_len": float(seq_len)}
    return None


def _rank(ranks: Mapping[str, int] | int, name: str) -> int:
    return ranks if isinstance(ranks, int) else ranks[name]

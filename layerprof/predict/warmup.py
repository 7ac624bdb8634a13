"""The warm-up score: a short full-LoRA warm-up whose held-out loss change is allocated to layers.

LoRA is attached to every target module by forward hooks (y ← y + (α/r)·B A x, A as PEFT
initialises it, B = 0), never by editing the model, and trained with the budget's AdamW
for T₀ = ⌈warmup_fraction · steps⌉ steps over the calibration batches while the base
weights stay frozen. The loss change of every step is attributed to the modules by the
path integral of loss-change allocation (LCA; Lan et al. 2019), first order:

    LCA_m(t) = −⟨∇_{θ_m} L_{t+1}(θ_{t+1}), θ_m(t+1) − θ_m(t)⟩

where L_{t+1} is the loss of the *next* batch, one the step did not train on, at the
parameters after the step — the gradient the next training step computes anyway. So the
allocation is held out (prequential) and costs nothing beyond the warm-up's own T₀ + 1
forward/backward passes: (T₀ + 1) / steps of a full-LoRA fine-tune. A module's gain is
Σ_t LCA_m(t) (nats per token of the mean batch loss; positive = it lowered the loss);
a layer's is the sum over its modules. The model is left bitwise as it was.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..card.budget import TrainingBudget
from ..utils.errors import ProfileError


class _Adapter:
    """LoRA factors for one module, applied by a forward hook (removed by ``remove``)."""

    def __init__(self, module: nn.Module, d_in: int, d_out: int, budget: TrainingBudget, gen: torch.Generator,
                 device: torch.device):
        bound = 1.0 / math.sqrt(d_in)  # kaiming_uniform_(a=√5), PEFT's lora_A init
        self.A = ((torch.rand(budget.r, d_in, generator=gen) * 2 - 1) * bound).to(device).requires_grad_()
        self.B = torch.zeros(d_out, budget.r, device=device, requires_grad=True)
        self.scale = budget.scale
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        x = args[0]
        delta = (x.to(self.A.dtype) @ self.A.t()) @ self.B.t()
        return output + (self.scale * delta).to(output.dtype)

    def params(self) -> list[torch.Tensor]:
        return [self.A, self.B]

    def remove(self) -> None:
        self.handle.remove()


def warmup_lca(model: nn.Module, batches: list, modules: Mapping[str, nn.Module], dims: Mapping[str, tuple[int, int]],
               budget: TrainingBudget, loss_of: Callable[[nn.Module, Any], torch.Tensor], *, seed: int = 0) -> dict:
    """Per-module LCA gain of a T₀-step full-LoRA warm-up (the model must be frozen by the caller).

    ``loss_of(model, batch)`` returns the scalar training loss of one batch. Uses
    ``min(budget.warmup_steps, len(batches) - 1)`` steps so that every allocation is measured
    on a batch the warm-up has not trained on. Returns ``{"gains": {name: gain}, "steps": T₀,
    "passes": T₀ + 1, "loss_first": ..., "loss_last": ...}``.
    """
    if len(batches) < 2:
        raise ProfileError("the warm-up score needs at least 2 batches (one to train on, the next to measure)")
    steps = min(budget.warmup_steps, len(batches) - 1)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    adapters = {}
    try:
        for name, module in modules.items():
            adapters[name] = _Adapter(module, *dims[name], budget, gen, device)
        params = [p for a in adapters.values() for p in a.params()]
        opt = torch.optim.AdamW(params, lr=budget.lr, betas=budget.betas, eps=budget.eps,
                                weight_decay=budget.weight_decay)
        gains = {name: 0.0 for name in adapters}
        previous: dict[str, list[torch.Tensor]] | None = None
        losses = []
        for t in range(steps + 1):
            opt.zero_grad(set_to_none=False)
            loss = loss_of(model, batches[t])
            loss.backward()
            losses.append(float(loss.detach()))
            if previous is not None:
                # The step t-1 → t did not see batch t: its first-order loss change on batch t.
                for name, a in adapters.items():
                    gains[name] -= sum(float((p.grad * (p.detach() - old)).sum())
                                       for p, old in zip(a.params(), previous[name]))
            if t == steps:
                break
            previous = {name: [p.detach().clone() for p in a.params()] for name, a in adapters.items()}
            opt.step()
    finally:
        for a in adapters.values():
            a.remove()
    return {"gains": gains, "steps": steps, "passes": steps + 1, "loss_first": losses[0], "loss_last": losses[-1]}

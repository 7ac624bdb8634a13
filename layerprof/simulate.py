"""Candidate A: the user's LoRA fine-tune simulated on each module's local quadratic model.

Per module m, from the two split halves h ∈ {a, b} of the sweep (N_h, S_h, C_h; nb_h
batches each):

    G_h = C_h / nb_h                    gradient of the mean batch loss (transposed, d_in × d_out)
    ℓ_h(ΔW) = ⟨G_hᵀ, ΔW⟩ + ½ κ tr(ΔW Σ_h ΔWᵀ),   Σ_h = S_h / N_h

κ is the loss curvature measured along the layer's own correction direction (``curvature``:
a central second difference of the calibration loss, two forwards per layer). On ℓ_a the
user's optimizer runs on LoRA factors exactly as PEFT sets them up: A₀ Kaiming-uniform
(a = √5, i.e. U(±1/√d_in)), B₀ = 0, ΔW = (α/r) B A, ``torch.optim.AdamW`` with the
budget's lr, betas, eps and weight decay, for ``budget.steps`` steps, with

    ∇_ΔW = G_aᵀ + ξ_t + κ ΔW Σ_a,   ∇_B = (α/r) ∇_ΔW Aᵀ,   ∇_A = (α/r) Bᵀ ∇_ΔW

ξ_t is fresh per-step gradient noise, as a real run sees a new batch every step: Gaussian,
shaped like the inputs (ξ = c Σ^{1/2} Z), with the per-batch noise energy measured from
the halves' disagreement, E‖G_a − G_b‖² = v (1/nb_a + 1/nb_b), rescaled from calibration
batches to the budget's batch size. The predicted held-out gain is −ℓ_b(ΔW_T), averaged
with the b → a run; a layer's gain is the sum over its modules. Every product goes through
the rank-r factors: O(steps · r · d_in · (d_in + d_out)) per module and no data pass
(the noise is drawn through the factors too, see ``_run_adam``).
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

import torch
from torch import nn

from .accumulate import ModuleStats
from .budget import TrainingBudget
from .ops import symmetric


def _sqrt_psd(sigma: torch.Tensor) -> torch.Tensor:
    mu, V = torch.linalg.eigh(sigma)
    return (V * mu.clamp_min(0).sqrt()[None, :]) @ V.t()


def simulate_module(a: ModuleStats, b: ModuleStats, nb: tuple[int, int], kappa: float, budget: TrainingBudget, *,
                    calib_rows_per_batch: float, seed: int = 0) -> float:
    """Held-out gain of the simulated LoRA run on one module, averaged over both directions."""
    halves = []
    for st, n in ((a, nb[0]), (b, nb[1])):
        sigma = symmetric(st.S.double().cpu()) / st.N
        halves.append((st.C.double().cpu() / n, sigma))
    (Ga, Sa), (Gb, Sb) = halves
    # Per-batch gradient noise energy from the halves' disagreement, at the budget's batch size
    # (the noise of a mean over rows falls as 1/rows).
    v = float(((Ga - Gb) ** 2).sum()) / (1.0 / nb[0] + 1.0 / nb[1])
    if budget.batch_rows is not None:
        v *= calib_rows_per_batch / budget.batch_rows
    gains = []
    for i, ((G_fit, S_fit), (G_eval, S_eval)) in enumerate((((Ga, Sa), (Gb, Sb)), ((Gb, Sb), (Ga, Sa)))):
        delta = _run_adam(G_fit, S_fit, kappa, v, budget, seed=seed + i)
        gains.append(-_local_loss(delta, G_eval, S_eval, kappa, budget.scale))
    return 0.5 * (gains[0] + gains[1])


def _local_loss(AB: tuple[torch.Tensor, torch.Tensor], G: torch.Tensor, sigma: torch.Tensor, kappa: float,
                scale: float) -> float:
    """ℓ(ΔW) = ⟨Gᵀ, ΔW⟩ + ½ κ tr(ΔW Σ ΔWᵀ) with ΔW = s B A, through the factors."""
    A, B = AB
    linear = scale * float(((G.t() @ A.t()) * B).sum())           # tr(G s B A) = s ⟨Gᵀ Aᵀ, B⟩
    quad = scale ** 2 * float(((B.t() @ B) * (A @ sigma @ A.t())).sum())
    return linear + 0.5 * kappa * quad


def _run_adam(G: torch.Tensor, sigma: torch.Tensor, kappa: float, noise: float, budget: TrainingBudget, *,
              seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    d_in, d_out = G.shape
    r, s = budget.r, budget.scale
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(d_in)  # kaiming_uniform_(a=√5) on an r × d_in weight, as PEFT initialises lora_A
    A = ((torch.rand(r, d_in, generator=gen, dtype=torch.float64) * 2 - 1) * bound).requires_grad_(False)
    B = torch.zeros(d_out, r, dtype=torch.float64)
    A.grad, B.grad = torch.zeros_like(A), torch.zeros_like(B)
    opt = torch.optim.AdamW([A, B], lr=budget.lr, betas=budget.betas, eps=budget.eps,
                            weight_decay=budget.weight_decay)
    Gt = G.t().contiguous()  # d_out × d_in
    noise_root = _sqrt_psd(sigma) * math.sqrt(noise / max(float(torch.trace(sigma)) * d_out, 1e-300)) \
        if noise > 0 else None
    for _ in range(budget.steps):
        A_sigma = A @ sigma                     # r × d_in
        # ∇_ΔW Aᵀ and Bᵀ ∇_ΔW without forming ΔW (d_out × d_in) times Σ.
        grad_At = Gt @ A.t() + kappa * s * B @ (A_sigma @ A.t())          # d_out × r
        Bt_grad = B.t() @ Gt + kappa * s * (B.t() @ B) @ A_sigma          # r × d_in
        if noise_root is not None:
            # ξ = Z Σ^{1/2}·c (Z Gaussian d_out × d_in) enters only as ξ Aᵀ and Bᵀ ξ. Each is sampled
            # from its exact marginal (rows of Z M ~ N(0, MᵀM), columns of Bᵀ Z ~ N(0, BᵀB)) in
            # O(r (d_in + d_out)), never forming Z; their cross-correlation is dropped.
            M = noise_root @ A.t()                                          # d_in × r
            grad_At = grad_At + torch.randn(d_out, r, generator=gen, dtype=torch.float64) @ _sqrt_psd(M.t() @ M)
            Bt_grad = Bt_grad + (_sqrt_psd(B.t() @ B) @ torch.randn(r, d_in, generator=gen,
                                                                    dtype=torch.float64)) @ noise_root
        B.grad.copy_(s * grad_At)
        A.grad.copy_(s * Bt_grad)
        opt.step()
    return A.detach(), B.detach()


def simulated_gains(halves: Mapping[str, tuple[ModuleStats, ModuleStats]], nb: tuple[int, int],
                    kappa: Mapping[str, float], budget: TrainingBudget, *, calib_rows_per_batch: float) -> dict:
    """``simulate_module`` for every module with both halves; name -> predicted held-out gain."""
    out = {}
    for i, (name, (a, b)) in enumerate(halves.items()):
        out[name] = simulate_module(a, b, nb, kappa[name], budget, calib_rows_per_batch=calib_rows_per_batch,
                                    seed=1000 * i)
    return out


def curvature(model: nn.Module, batches: list[dict], layer_modules: Mapping[int, list[str]],
              directions: Mapping[str, torch.Tensor], sigmas: Mapping[str, torch.Tensor],
              loss_of: Callable[[nn.Module, list[dict]], float], weight_of) -> dict[int, float]:
    """κ_ℓ = [L(εD) − 2L(0) + L(−εD)] / (ε² Σ_m tr(D_m Σ_m D_mᵀ)) per layer; weights restored bitwise.

    D_m (d_out × d_in) is module m's correction direction; L is the mean loss over ``batches``.
    ε is set so that the largest weight change is 1% of the layer's largest weight: large
    enough that the second difference stands above float32 rounding, small enough to be local.
    A negative or non-finite estimate (the loss is not convex along D at this scale) gives κ = 0.
    """
    modules = dict(model.named_modules())
    base = loss_of(model, batches)
    out = {}
    for layer, names in layer_modules.items():
        ws = {n: weight_of(modules[n]) for n in names}
        saved = {n: modules[n].weight.detach().clone() for n in names}
        w_max = max(float(ws[n].detach().abs().max()) for n in names)
        d_max = max(float(directions[n].abs().max()) for n in names)
        quad = sum(float(((directions[n] @ sigmas[n]) * directions[n]).sum()) for n in names)
        if d_max == 0 or quad <= 0:
            out[layer] = 0.0
            continue
        eps = 1e-2 * w_max / d_max
        losses = []
        try:
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    for n in names:
                        ws[n].add_((sign * eps * directions[n]).to(ws[n].dtype).to(ws[n].device))
                losses.append(loss_of(model, batches))
                with torch.no_grad():
                    for n in names:
                        modules[n].weight.copy_(saved[n])
        finally:
            with torch.no_grad():
                for n in names:
                    modules[n].weight.copy_(saved[n])
        k = (losses[0] - 2 * base + losses[1]) / (eps ** 2 * quad)
        out[layer] = k if math.isfinite(k) and k > 0 else 0.0
    return out

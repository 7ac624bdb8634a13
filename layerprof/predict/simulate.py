"""The simulated gain: the user's LoRA fine-tune simulated on each module's local quadratic model.

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
import statistics
from typing import Callable, Mapping, NamedTuple

import torch
from torch import nn

from ..stats.accumulate import ModuleStats
from ..card.budget import TrainingBudget
from ..stats.ops import symmetric


CURVATURE_SCALES = (1.0, 10.0, 100.0)  # ε multipliers tried in turn by ``curvature``


class Curvature(NamedTuple):
    """What ``curvature`` measured: κ per layer, the layers given the median κ, loss evaluations."""

    kappa: dict[int, float]
    median_layers: list[int]
    evaluations: int


def _sqrt_psd(sigma: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of (a batch of) PSD matrices."""
    mu, V = torch.linalg.eigh(sigma)
    return (V * mu.clamp_min(0).sqrt().unsqueeze(-2)) @ V.transpose(-1, -2)


def _chol_psd(m: torch.Tensor) -> torch.Tensor:
    """L with L Lᵀ ≈ m for small PSD m (r × r, batched): Cholesky after a relative jitter of 1e-6."""
    eye = torch.eye(m.shape[-1], dtype=m.dtype)
    jitter = 1e-6 * m.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-30)
    return torch.linalg.cholesky_ex(m + jitter[..., None, None] * eye)[0]


def _halves(a: ModuleStats, b: ModuleStats, nb: tuple[int, int]) -> tuple[tuple, tuple, float]:
    """(G_a, Σ_a), (G_b, Σ_b) in float64 and the per-batch gradient noise energy v."""
    out = []
    for st, n in ((a, nb[0]), (b, nb[1])):
        out.append((st.C.double().cpu() / n, symmetric(st.S.double().cpu()) / st.N))
    (Ga, _), (Gb, _) = out
    # E‖G_a − G_b‖² = v (1/nb_a + 1/nb_b) for independent halves of nb_a and nb_b batches.
    v = float(((Ga - Gb) ** 2).sum()) / (1.0 / nb[0] + 1.0 / nb[1])
    return out[0], out[1], v


def simulate_module(a: ModuleStats, b: ModuleStats, nb: tuple[int, int], kappa: float, budget: TrainingBudget, *,
                    calib_rows_per_batch: float, seed: int = 0) -> float:
    """Held-out gain of the simulated LoRA run on one module, averaged over both directions."""
    return simulated_gains({"m": (a, b)}, nb, {"m": kappa}, budget, calib_rows_per_batch=calib_rows_per_batch,
                           seed=seed)["m"]


DRIFTS = ("half", "shrunk")


def simulated_gains(halves: Mapping[str, tuple[ModuleStats, ModuleStats]], nb: tuple[int, int],
                    kappa: Mapping[str, float], budget: TrainingBudget, *, calib_rows_per_batch: float,
                    seed: int = 0, drift: str = "half") -> dict:
    """Name -> predicted held-out gain, for every module with both halves.

    Modules of one shape run as one batch (both directions of each: fit a score b, fit b
    score a), so the cost is a few batched products per step, not a Python loop per module.

    ``drift`` is the persistent gradient the simulated run follows: ``"half"`` (the card's
    sim_gain) the fitted half's G_a, calibration noise included; ``"shrunk"`` (exploratory) s·G_a with s = clamp(⟨G_a, G_b⟩ / ‖G_a‖², 0, 1), the
    least-squares scalar estimate of the signal in G_a (⟨G_a, G_b⟩ is unbiased for ‖signal‖²):
    a real run sees fresh batches, so the calibration's own noise should not drive it.
    """
    if drift not in DRIFTS:
        raise ValueError(f"drift must be one of {DRIFTS}, got {drift!r}")
    groups: dict[tuple[int, int], list[str]] = {}
    for name, (a, _) in halves.items():
        groups.setdefault(tuple(a.C.shape), []).append(name)
    out = {}
    for gi, names in enumerate(groups.values()):
        fit_G, fit_S, eval_G, eval_S, kap, noise = [], [], [], [], [], []
        for name in names:
            (Ga, Sa), (Gb, Sb), v = _halves(*halves[name], nb)
            if budget.batch_rows is not None:
                v *= calib_rows_per_batch / budget.batch_rows  # the noise of a mean over rows falls as 1/rows
            if drift == "shrunk":
                shared = float((Ga * Gb).sum())
                fit_G += [Ga * _shrink(shared, Ga), Gb * _shrink(shared, Gb)]
            else:
                fit_G += [Ga, Gb]
            fit_S += [Sa, Sb]
            eval_G += [Gb, Ga]
            eval_S += [Sb, Sa]
            kap += [kappa[name]] * 2
            noise += [v, v]
        # The simulated run in float32, as the user's LoRA trains; held-out scoring in float64.
        kap_t = torch.tensor(kap, dtype=torch.float64)
        A, B = _run_adam(torch.stack(fit_G).float(), torch.stack(fit_S).float(), kap_t.float(),
                         torch.tensor(noise, dtype=torch.float32), budget, seed=seed + gi)
        loss = _local_loss((A.double(), B.double()), torch.stack(eval_G), torch.stack(eval_S), kap_t, budget.scale)
        for i, name in enumerate(names):
            out[name] = float(-0.5 * (loss[2 * i] + loss[2 * i + 1]))
    return out


def _shrink(shared: float, G: torch.Tensor) -> float:
    energy = float((G * G).sum())
    return min(max(shared / energy, 0.0), 1.0) if energy > 0 else 0.0


def _local_loss(AB: tuple[torch.Tensor, torch.Tensor], G: torch.Tensor, sigma: torch.Tensor, kappa,
                scale: float):
    """ℓ(ΔW) = ⟨Gᵀ, ΔW⟩ + ½ κ tr(ΔW Σ ΔWᵀ) with ΔW = s B A, through the factors (batched or not)."""
    A, B = AB
    GtAt = G.transpose(-1, -2) @ A.transpose(-1, -2)                    # d_out × r
    linear = scale * (GtAt * B).sum(dim=(-1, -2))                        # tr(G s B A)
    quad = scale ** 2 * ((B.transpose(-1, -2) @ B) * (A @ sigma @ A.transpose(-1, -2))).sum(dim=(-1, -2))
    return linear + 0.5 * kappa * quad


def _run_adam(G: torch.Tensor, sigma: torch.Tensor, kappa, noise, budget: TrainingBudget, *,
              seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """AdamW on the LoRA factors of a batch of local models (G: n × d_in × d_out; or one, unbatched).

    The update is torch.optim.AdamW's, written out so that a batch of modules steps at once:
    p ← p(1 − lr·wd); m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²; p ← p − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε).
    """
    single = G.dim() == 2
    if single:
        G, sigma = G.unsqueeze(0), sigma.unsqueeze(0)
    n, d_in, d_out = G.shape
    dtype = G.dtype
    kappa = torch.as_tensor(kappa, dtype=dtype).reshape(-1, 1, 1).expand(n, 1, 1)
    noise = torch.as_tensor(noise, dtype=dtype).reshape(-1).expand(n)
    r, s = budget.r, budget.scale
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(d_in)  # kaiming_uniform_(a=√5) on an r × d_in weight, as PEFT initialises lora_A
    A = (torch.rand(n, r, d_in, generator=gen, dtype=dtype) * 2 - 1) * bound
    B = torch.zeros(n, d_out, r, dtype=dtype)
    Gt = G.transpose(1, 2)  # n × d_out × d_in
    trace = sigma.diagonal(dim1=1, dim2=2).sum(-1)
    scale = torch.sqrt(noise / (trace * d_out).clamp_min(1e-300))
    noise_root = _sqrt_psd(sigma) * scale.reshape(-1, 1, 1) if bool((noise > 0).any()) else None
    (b1, b2), lr, eps, wd = budget.betas, budget.lr, budget.eps, budget.weight_decay
    mA, vA, mB, vB = (torch.zeros_like(A), torch.zeros_like(A), torch.zeros_like(B), torch.zeros_like(B))
    for t in range(1, budget.steps + 1):
        A_sigma = A @ sigma                                                        # n × r × d_in
        At = A.transpose(1, 2)
        # ∇_ΔW Aᵀ and Bᵀ ∇_ΔW without forming ΔW (d_out × d_in) times Σ.
        grad_At = Gt @ At + kappa * s * B @ (A_sigma @ At)                         # n × d_out × r
        Bt_grad = B.transpose(1, 2) @ Gt + kappa * s * (B.transpose(1, 2) @ B) @ A_sigma   # n × r × d_in
        if noise_root is not None:
            # ξ = Z Σ^{1/2}·c (Z Gaussian d_out × d_in) enters only as ξ Aᵀ and Bᵀ ξ. Each is sampled
            # from its exact marginal (rows of Z M ~ N(0, MᵀM), columns of Bᵀ Z ~ N(0, BᵀB)) in
            # O(r (d_in + d_out)), never forming Z; their cross-correlation is dropped.
            M = noise_root @ At                                                    # n × d_in × r
            grad_At = grad_At + torch.randn(n, d_out, r, generator=gen, dtype=dtype) @ _chol_psd(
                M.transpose(1, 2) @ M).transpose(1, 2)
            Bt_grad = Bt_grad + (_chol_psd(B.transpose(1, 2) @ B) @ torch.randn(
                n, r, d_in, generator=gen, dtype=dtype)) @ noise_root
        gB, gA = s * grad_At, s * Bt_grad
        bc1, bc2 = 1 - b1 ** t, math.sqrt(1 - b2 ** t)
        for p, g, m, v in ((A, gA, mA, vA), (B, gB, mB, vB)):
            p.mul_(1 - lr * wd)
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            p.addcdiv_(m, (v.sqrt() / bc2).add_(eps), value=-lr / bc1)
    return (A[0], B[0]) if single else (A, B)


def curvature(model: nn.Module, batches: list[dict], layer_modules: Mapping[int, list[str]],
              directions: Mapping[str, torch.Tensor], sigmas: Mapping[str, torch.Tensor],
              loss_of: Callable[[nn.Module, list[dict]], float], weight_of, *, replay: bool = True) -> Curvature:
    """κ_ℓ = [L(εD) − 2L(0) + L(−εD)] / (ε² Σ_m tr(D_m Σ_m D_mᵀ)) per layer; weights restored bitwise.

    D_m (d_out × d_in) is module m's correction direction; L is the mean loss over ``batches``.
    ε starts where the largest weight change is 1% of the layer's largest weight: large enough
    that the second difference stands above float32 rounding, small enough to be local. Where
    that estimate is not positive (rounding, or the loss is not convex along D at this scale),
    ε grows 10× and 100× — the local model must hold at the scale training reaches, not only
    infinitesimally. A layer still without a positive estimate gets the median κ of the layers
    that have one: with κ = 0 the local model is linear, and its simulated gain would grow
    without bound with the steps (one layer of the code study predicted 4,552 nats).

    Each loss evaluation is one forward over ``batches``; ``Curvature.evaluations`` counts them. With
    ``replay`` (``replay.Replay``) the unperturbed forward keeps every target module's input and output,
    and in each perturbed forward the modules upstream of the perturbed layer return them instead of
    computing: bitwise the same losses for about half the linear work, at the price of holding one
    forward's module activations (the caller checks that they fit).
    """
    from .coupling import central_difference
    from .replay import Replay

    modules = dict(model.named_modules())
    out: dict[int, float] = {}
    missing: list[int] = []
    evaluations = 1
    with Replay(model, [n for names in layer_modules.values() for n in names] if replay else []) as rep:
        base = rep.record(lambda: loss_of(model, batches))  # the unperturbed forward, kept module by module
        for layer, names in layer_modules.items():
            w_max = max(float(weight_of(modules[n]).detach().abs().max()) for n in names)
            d_max = max(float(directions[n].abs().max()) for n in names)
            quad = sum(float(((directions[n] @ sigmas[n]) * directions[n]).sum()) for n in names)
            out[layer] = 0.0
            if d_max == 0 or quad <= 0:
                missing.append(layer)
                continue
            for grow in CURVATURE_SCALES:
                eps = grow * 1e-2 * w_max / d_max
                with rep.skipping(exclude=names):
                    plus, minus = central_difference(model, names, directions, eps, weight_of,
                                                     rep.evaluating(lambda: loss_of(model, batches)))
                evaluations += 2
                k = (plus - 2 * base + minus) / (eps ** 2 * quad)
                if math.isfinite(k) and k > 0:
                    out[layer] = k
                    break
            else:
                missing.append(layer)
    measured = [v for v in out.values() if v > 0]
    if measured:
        median = statistics.median(measured)
        for layer in missing:
            out[layer] = median
    return Curvature(out, missing, evaluations)

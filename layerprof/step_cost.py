"""Measured step cost: the cost model's terms fitted to LoRA training steps timed on this machine.

The cost model (``layerprof.cost``) writes the training step of a placement P as

    step(P) = F + B(P) + A(P)

F the forward every step pays (and the head), B(P) the backward from P's lowest layer up, A(P)
the adapters' own work. Its constants are FLOP counts (and one overhead γ fitted on one CPU), so
where a machine's per-operation overhead or kernel efficiencies differ from what FLOPs say, the
fraction it predicts is off by a few points: on the 16-block study decoder (d = 64) suffix placements
came out 1–5 points below their measured step time, enough for a plan capped at 60% of full LoRA to
take 62–63% (docs/RESULTS.md). ``measure_step_cost`` times a few real training steps of five
placement shapes on the user's model and batches and fits

    t(P) ≈ a·F + b·B(P) + c·A(P)        (a, b, c ≥ 0)

by non-negative least squares on relative errors. The shapes make the three terms vary apart:
every layer (full LoRA), the top quarter and the top half (suffixes), the bottom layer alone (the
whole backward, one layer's adapters) and the top layer alone (almost no backward). The card then
records ``forward_scale = a/b`` and ``adapter_scale = c/b`` (``meta.step_cost``), and every
placement made from it costs ``forward_scale·F + B + adapter_scale·A``: the FLOP model's shape with
this machine's constants.

Timing: LoRA factors attached by forward hooks (``layerprof.warmup.HookAdapter``), base weights
frozen, forward + backward + AdamW step per timed step; the placements alternate step by step on
the same batch so that machine noise falls on all of them alike; the median of ``steps`` timed steps
after ``warmup`` untimed ones. The model is left bitwise as it was (weights, requires_grad, modes).
"""
from __future__ import annotations

import itertools
import statistics
import time
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .batches import LossFn, as_kwargs, check_loss, default_loss, forward_kwargs, frozen_eval
from .errors import ProfileError

if TYPE_CHECKING:
    from .card import LayerCard


def calibration_shapes(layers: Sequence[int]) -> list[list[int]]:
    """The placements timed: all layers, the top quarter, the top half, the bottom one, the top one
    (distinct sets, in that order; full LoRA first because every fraction is relative to it)."""
    layers = sorted(layers)
    L = len(layers)
    shapes = [layers, layers[L - max(1, L // 4):], layers[L - max(1, L // 2):], layers[:1], layers[-1:]]
    out: list[list[int]] = []
    for s in shapes:
        if s not in out:
            out.append(s)
    return out


def fit_terms(terms: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Non-negative (a, b, c) minimising Σ ((terms_i · (a, b, c)) / t_i − 1)²: every active set of the
    three columns solved by least squares, the best whose coefficients are all ≥ 0 kept (exact NNLS
    for three unknowns)."""
    rows = terms / seconds[:, None]
    ones = np.ones(len(seconds))
    best, best_err = None, np.inf
    for size in (3, 2, 1):
        for cols in itertools.combinations(range(3), size):
            sol, *_ = np.linalg.lstsq(rows[:, cols], ones, rcond=None)
            if np.any(sol < 0):
                continue
            coef = np.zeros(3)
            coef[list(cols)] = sol
            err = float(np.sum((rows @ coef - 1) ** 2))
            if err < best_err - 1e-15:
                best, best_err = coef, err
    return best if best is not None else np.zeros(3)


def measure_step_cost(model: nn.Module, batches: Sequence, card: "LayerCard", loss_fn: LossFn | None = None, *,
                      steps: int = 10, warmup: int = 1, rank: int | None = None,
                      clock: Callable[[], float] | None = None, seed: int = 0) -> "LayerCard":
    """Time LoRA training steps of ``calibration_shapes`` on ``model`` and return ``card`` with the fitted
    step cost (``meta.step_cost``); its placements, its per-layer cost column and ``layerprof place`` then
    use it. ``batches`` as for ``profile`` (the calibration batches are right: the fine-tune's sequence
    length is what matters); ``steps`` timed steps per placement after ``warmup`` untimed ones; ``rank``
    the LoRA rank (default: the card's); ``clock`` the timer (default wall time, synchronising CUDA).
    """
    from .cost import cost_model
    from .targets import modules_by_name

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ProfileError(f"steps must be a positive int (timed steps per placement), got {steps!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ProfileError(f"warmup must be an int >= 0 (untimed steps per placement), got {warmup!r}")
    batches = list(batches)
    if not batches:
        raise ProfileError("measure_step_cost needs at least one batch")
    if not card.layers:
        raise ProfileError("the card has no per-layer rows; there is no placement to time")
    r = card.rank if rank is None else rank
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ProfileError(f"rank must be a positive int, got {r!r}")
    rows = [m for m in card.modules if m.layer is not None]
    found = modules_by_name(model, [m.name for m in rows])
    missing = [m.name for m in rows if m.name not in found]
    if missing:
        raise ProfileError(f"the card's modules {missing[:3]}{' …' if len(missing) > 3 else ''} are not in this "
                           "model; measure on the model the card was profiled on (before renaming its modules)")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    clock = clock or _wall_clock(device)
    loss_fn = loss_fn or default_loss

    from .warmup import HookAdapter

    shapes = calibration_shapes([l.layer for l in card.layers])
    gen = torch.Generator().manual_seed(seed)
    by_layer: dict[int, list] = {}
    for m in rows:
        by_layer.setdefault(m.layer, []).append(m)
    trials = []
    try:
        for layers in shapes:
            adapters = [HookAdapter(found[m.name], m.d_in, m.d_out, r, 2.0, gen, device, attach=False)
                        for l in layers for m in by_layer[l]]
            opt = torch.optim.AdamW([p for a in adapters for p in a.params()], lr=1e-4)
            trials.append((layers, adapters, opt, []))
        with frozen_eval(model):
            for step in range(warmup + steps):
                batch = batches[step % len(batches)]
                for _, adapters, opt, times in trials:
                    for a in adapters:
                        a.attach()
                    try:
                        t0 = clock()
                        outputs = model(**forward_kwargs(model, as_kwargs(batch, device)))
                        loss = check_loss(loss_fn(outputs, batch))
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        seconds = clock() - t0
                    finally:
                        for a in adapters:
                            a.remove()
                    if step >= warmup:
                        times.append(seconds)
    finally:
        for _, adapters, _, _ in trials:
            for a in adapters:
                a.remove()

    flops = cost_model(card.modules, card.meta.get("heads", []), card.meta.get("attention"))
    terms = np.array([[flops.forward, flops.backward_flops(min(layers)),
                       sum(flops.adapter_flops(l, r) for l in layers)] for layers, *_ in trials])
    seconds = np.array([statistics.median(times) for *_, times in trials])
    a, b, c = fit_terms(terms, seconds)
    if not b > 0:
        raise ProfileError("the measured steps do not grow with the depth of the backward (timing noise or a "
                           "model whose layers are not where the card says); measure again with more steps=")
    record = {"forward_scale": float(a / b), "adapter_scale": float(c / b), "rank": r, "steps": steps,
              "warmup": warmup, "device": str(device),
              "placements": [{"layers": list(layers), "seconds": float(t)} for (layers, *_), t in zip(trials, seconds)]}
    from .placement import card_cost_model

    model_fit = card_cost_model(card.with_step_cost(record))
    for p in record["placements"]:
        p["measured_fraction"] = p["seconds"] / float(seconds[0])
        p["fitted_fraction"] = model_fit.cost(p["layers"], r).fraction
    record["max_error"] = max(abs(p["measured_fraction"] - p["fitted_fraction"]) for p in record["placements"])
    return card.with_step_cost(record)


def _wall_clock(device: torch.device) -> Callable[[], float]:
    if device.type == "cuda":
        def clock() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()
        return clock
    return time.perf_counter

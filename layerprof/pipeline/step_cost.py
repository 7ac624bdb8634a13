"""Measured step cost: the cost model's terms fitted to LoRA training steps timed on this machine.

The cost model (``layerprof.card.cost``) writes the training step of a placement P as

    step(P) = F + B(P) + A(P)

F the forward every step pays (and the head), B(P) the backward from P's lowest layer up, A(P)
the adapters' own work. Its constants are FLOP counts (and one overhead γ fitted on one CPU), so
where a machine's per-operation overhead or kernel efficiencies differ from what FLOPs say, the
fraction it predicts is off by a few points: on the 16-block study decoder (d = 64) suffix placements
came out 1–5 points below their measured step time, enough for a plan capped at 60% of full LoRA to
take 62–63% (studies/v1/notebook.md). ``measure_step_cost`` times a few real training steps of five
placement shapes on the user's model and batches and fits

    t(P) ≈ a·F + b·B(P) + c·A(P)        (a, b, c ≥ 0)

by non-negative least squares on relative errors. The shapes make the three terms vary apart:
every layer (full LoRA), the top quarter and the top half (suffixes), the bottom layer alone (the
whole backward, one layer's adapters) and the top layer alone (almost no backward). The card then
records the three weights (``meta.step_cost``: forward_scale, backward_scale, adapter_scale, in units
where the fitted full-LoRA step equals the FLOP model's), and every placement made from it costs
``forward_scale·F + backward_scale·B + adapter_scale·A``: the FLOP model's shape with this machine's
constants. A machine where depth costs nothing measurable (a tiny model) gets backward_scale = 0.

Timing: PEFT's own LoRA layers (r = the card's rank, α = 2r), built by PEFT and swapped in for each
timed step (the model gets its modules back after every step), base weights frozen, the model in
train mode as a fine-tune runs it (dropout costs time in every layer), forward + backward + AdamW
step per timed step; the placements alternate step by step on the same batch so
that machine noise falls on all of them alike; the median of ``steps`` timed steps after ``warmup``
untimed ones. The model is left bitwise as it was (weights, requires_grad, modes), and so is the RNG.
"""
from __future__ import annotations

import itertools
import statistics
import time
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..model.batches import LossFn, as_kwargs, check_loss, default_loss, forward_kwargs, frozen_eval
from ..card.cost import cost_model
from ..utils.errors import ProfileError
from ..model.peft_models import is_peft_model
from ..place.placement import card_cost_model
from ..model.targets import modules_by_name

if TYPE_CHECKING:
    from ..card.card import LayerCard


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
    batches = list(batches)
    r, rows, found = _checked(model, batches, card, steps, warmup, rank)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    conv1d = bool(rows) and all(m.kind == "conv1d" for m in rows)
    trials = _timed_steps(model, batches, rows, found, calibration_shapes([l.layer for l in card.layers]), r=r,
                          conv1d=conv1d, loss_fn=loss_fn or default_loss, clock=clock or _wall_clock(device),
                          steps=steps, warmup=warmup, seed=seed, device=device)
    return _fitted(card, trials, r, {"rank": r, "steps": steps, "warmup": warmup, "device": str(device)})


def _checked(model: nn.Module, batches: list, card: "LayerCard", steps, warmup, rank) -> tuple[int, list, dict]:
    """The arguments checked before any step: the rank, the card's layered modules and those modules in ``model``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ProfileError(f"steps must be a positive int (timed steps per placement), got {steps!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ProfileError(f"warmup must be an int >= 0 (untimed steps per placement), got {warmup!r}")
    if not batches:
        raise ProfileError("measure_step_cost needs at least one batch")
    if not card.layers:
        raise ProfileError("the card has no per-layer rows; there is no placement to time")
    r = card.rank if rank is None else rank
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ProfileError(f"rank must be a positive int, got {r!r}")
    if is_peft_model(model):
        raise ProfileError("measure the step cost on the base model (before get_peft_model): it times PEFT LoRA "
                           "layers of its own on each placement")
    rows = [m for m in card.modules if m.layer is not None]
    found = modules_by_name(model, [m.name for m in rows])
    missing = [m.name for m in rows if m.name not in found]
    if missing:
        raise ProfileError(f"the card's modules {missing[:3]}{' …' if len(missing) > 3 else ''} are not in this "
                           "model; measure on the model the card was profiled on (before renaming its modules)")
    return r, rows, found


def _timed_steps(model, batches, rows, found, shapes, *, r, conv1d, loss_fn, clock, steps, warmup, seed, device) -> list:
    """(layers, wrappers, optimizer, seconds per timed step) for each shape, the shapes' steps interleaved."""
    trials = []
    # Train mode, as the fine-tune runs (dropout costs time in every layer); the RNG is forked so that
    # the adapters' init and dropout's draws leave the caller's stream where it was.
    with frozen_eval(model, training=True), torch.random.fork_rng(devices=_cuda_devices(device)):
        torch.manual_seed(seed)
        for layers in shapes:
            names = [m.name for m in rows if m.layer in set(layers)]
            wrappers = _lora_layers(model, names, r, conv1d)
            opt = torch.optim.AdamW([p for w in wrappers.values() for p in w.parameters() if p.requires_grad],
                                    lr=1e-4)
            trials.append((layers, wrappers, opt, []))
        for step in range(warmup + steps):
            batch = batches[step % len(batches)]
            for _, wrappers, opt, times in trials:
                try:
                    for name, w in wrappers.items():
                        _set_submodule(model, name, w)
                    t0 = clock()
                    outputs = model(**forward_kwargs(model, as_kwargs(batch, device)))
                    loss = check_loss(loss_fn(outputs, batch))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    seconds = clock() - t0
                finally:
                    for name in wrappers:
                        _set_submodule(model, name, found[name])
                if step >= warmup:
                    times.append(seconds)
    return trials


def _fitted(card: "LayerCard", trials: list, r: int, settings: dict) -> "LayerCard":
    """The card with the step cost fitted to the timed steps, and how far the fit misses each of them."""
    flops = cost_model(card.modules, card.meta.get("heads", []), card.meta.get("attention"))
    terms = np.array([[flops.forward, flops.backward_flops(min(layers)),
                       sum(flops.adapter_flops(l, r) for l in layers)] for layers, *_ in trials])
    seconds = np.array([statistics.median(times) for *_, times in trials])
    coef = fit_terms(terms, seconds)
    # Scales in FLOP-model units: the fitted full-LoRA step equals the FLOP model's, so 1.0 for a term
    # means "as heavy as its FLOPs say" and a FLOP-exact machine gets (1, 1, 1).
    fitted_full = float(terms[0] @ coef)
    if not fitted_full > 0:
        raise ProfileError("the timed steps fit no positive cost (the timer returned no time); measure again with "
                           "more steps= or a finer clock")
    forward, backward, adapter = coef * float(terms[0].sum()) / fitted_full
    record = {"forward_scale": float(forward), "backward_scale": float(backward), "adapter_scale": float(adapter),
              **settings,
              "placements": [{"layers": list(layers), "seconds": float(t)} for (layers, *_), t in zip(trials, seconds)]}
    fitted = card.with_step_cost(record)  # holds ``record`` itself: the misfit added below is on it too
    model_fit = card_cost_model(fitted)
    for p in record["placements"]:
        p["measured_fraction"] = p["seconds"] / float(seconds[0])
        p["fitted_fraction"] = model_fit.cost(p["layers"], r).fraction
    record["max_error"] = max(abs(p["measured_fraction"] - p["fitted_fraction"]) for p in record["placements"])
    return fitted


def _lora_layers(model: nn.Module, names: list[str], r: int, conv1d: bool) -> dict[str, nn.Module]:
    """PEFT's own LoRA layers around the named modules (what the fine-tune will run), built by PEFT and then
    taken out again: the model gets its modules back and no ``peft_config``; the layers are swapped in for
    each timed step."""
    from peft import LoraConfig, inject_adapter_in_model

    originals = {n: model.get_submodule(n) for n in names}
    had_config = "peft_config" in vars(model)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(names), lora_dropout=0.0, fan_in_fan_out=conv1d)
    try:
        inject_adapter_in_model(config, model)
        return {n: model.get_submodule(n) for n in names}
    finally:
        for n, m in originals.items():
            _set_submodule(model, n, m)
        if not had_config:
            vars(model).pop("peft_config", None)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _cuda_devices(device: torch.device) -> list:
    return [device] if device.type == "cuda" else []


def _wall_clock(device: torch.device) -> Callable[[], float]:
    if device.type == "cuda":
        def clock() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()
        return clock
    return time.perf_counter

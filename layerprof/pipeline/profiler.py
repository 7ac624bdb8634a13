"""The orchestrator: ``profile`` runs the whole pipeline in one call.

plan memory (``memory_plan``) → sweep(s) in a ``Profiler`` session (``session``: capture →
accumulate) → card (``build``: finalize) → merge grouped sweeps (``merge``) → coupling and
the budget-aware predictions (``predict``). Settings come from one ``ProfileConfig``.
"""
from __future__ import annotations

import contextlib
import itertools
import sys
import time
import warnings
from dataclasses import replace
from typing import Any, Iterable

import torch
from torch import nn

from ..model.batches import (LossFn, as_kwargs, check_batch, check_loss, default_loss, forward_kwargs, frozen_eval,
                             user_code)
from .config import ProfileConfig
from ..utils.errors import ProfileError
from .progress import SweepProgress
from ..card.scores import BUDGET_SCORES
from .session import Profiler
from ..model.targets import find_targets

__all__ = ["profile", "Profiler", "ProfileConfig", "ProfileError"]


def profile(model: nn.Module, batches: Iterable, loss_fn: LossFn | None = None, config: ProfileConfig | None = None,
            **overrides):
    """Profile ``model`` over ``batches`` in one forward/backward sweep and return a ``LayerCard``.

    The settings are a ``ProfileConfig`` (``config=``; every field has its help text there), and
    any of its fields may be given as a keyword instead or on top (the keyword wins).

    Each batch is a dict of model keyword arguments (or a tensor of input_ids); the loss
    is ``loss_fn(outputs, batch)`` or ``outputs.loss`` — the mean over the batch, exactly
    as training computes it. During the sweep the model is in eval mode with every
    parameter frozen (only input gradients flow; no ``.grad`` is written); both are
    restored afterwards, and the parameters are bitwise unchanged.
    A batch with a non-finite loss or gradients is skipped and counted on the card.
    ``sketch=k`` keeps CΩ (d_in × k, a fixed Gaussian Ω) instead of C: memory O(d_in·k) per
    module, unbiased ρ² and ‖C‖², randomized-SVD ρ(r). The default ``sketch="auto"`` keeps
    dense statistics unless they would not fit ``max_memory`` (default: 80% of the free
    memory of the model's device; ``layerprof.pipeline.memory_plan``); ``sketch=None`` forces dense. When
    even that does not fit, the targets are profiled in several sweeps over the same batches,
    one group of whole layers each (``batches`` must then be re-iterable, e.g. a list), and
    merged into one card. ``coupling`` measures the layer coupling matrix on the first
    ``coupling_batches`` batches (two extra forwards per layer; ``layerprof.predict.coupling``) when asked
    (``coupling=True``, or ``None``: whenever the statistics are dense in one sweep); the default
    placement does not need it, ``card.place(layers=k, coupled=True)`` does.
    ``score`` names the per-layer score placement maximizes (``layerprof.card.scores.SCORES``;
    default ``scores.DEFAULT_SCORE``, ρ(r)²×/noise amp (docs/decisions/default-score.md), placed
    stratified-k by ``card.place``; with fewer than two split halves it falls back to its naive
    counterpart and says so): ``"resnorm2"`` (ρ²), ``"resnorm2_rank"``, ``"resnorm2_over_noise"``,
    ``"resnorm2_rank_over_noise"``, ``"resnorm2_rank_x_over_noise"``, ``"energy"``, the cross-half
    ``"resnorm2_x"``, ``"grad_norm2_x"``,
    and the budget-aware ``"sim_gain"``, ``"lca_gain"`` (studies/v1/notebook.md compares them).
    ``budget`` (a ``TrainingBudget`` or a dict of its fields: steps, lr, r, lora_alpha, ...) is the
    fine-tune the placement is for; with it the card gets the predicted-gain columns named in
    ``predict`` (default both): ``"simulate"`` (simulated LoRA on each module's local model,
    ``layerprof.predict.simulate``; two extra forwards per layer) and ``"warmup"`` (a short full-LoRA
    warm-up with loss-change allocation, ``layerprof.predict.warmup``; ⌈warmup_fraction·steps⌉ + 1
    forward/backward passes over the first batches). The card records the budget.
    """
    from ..model.claim import claimed
    from ..model.peft_models import base_layer_targets, is_peft_model, strip_base_layer

    if not isinstance(model, nn.Module):
        raise ProfileError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    cfg = ProfileConfig.build(config, overrides)
    owner = object()
    peft = is_peft_model(model)
    # Claimed before anything touches the model: a second sweep on it is refused, model untouched.
    with claimed(model, owner), (model.disable_adapter() if peft else contextlib.nullcontext()):
        targets = base_layer_targets(cfg.targets) if peft else cfg.targets
        card = _profile(model, batches, loss_fn or default_loss, cfg, targets, owner)
    return strip_base_layer(card) if peft else card


def _profile(model: nn.Module, batches: Iterable, loss_fn: LossFn, cfg: ProfileConfig, targets, owner: object):
    """The body of ``profile`` (the model is claimed by ``owner``; ``targets``: the modules to find)."""
    from .merge import merge_group_cards
    from .predict import KAPPA_BATCHES, measure_coupling, simulate, with_predictions

    iterator = iter(batches) if batches is not None else iter(())
    first = next(iterator, None)
    if first is None:
        raise ProfileError("no batches: pass a non-empty iterable of batches (dicts of model inputs, "
                           "e.g. {'input_ids': ..., 'attention_mask': ..., 'labels': ...})")
    total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
    plan = _memory_plan(model, first, cfg, targets)
    auto_coupling = cfg.coupling is None
    if auto_coupling:  # wherever it can run: dense statistics in one sweep
        dense_one_sweep = plan.sketch is None and not plan.groups
        if not dense_one_sweep:
            _no_coupling(f"the statistics are not dense in one sweep ({plan.describe()})")
        cfg = replace(cfg, coupling=dense_one_sweep)
    if plan.groups and iter(batches) is batches:
        raise ProfileError(f"the statistics fit only in {plan.sweeps} sweeps over the same batches, but batches "
                           "is a one-shot iterator; pass a list (or any re-iterable) of batches, or raise "
                           "max_memory")
    groups = plan.groups or [None]
    predict, budget = cfg.predict, cfg.budget
    # Batches kept for what runs after the sweep: coupling, the curvature κ, the warm-up.
    keep = max(cfg.coupling_batches if cfg.coupling else 0, KAPPA_BATCHES if "simulate" in predict else 0,
               budget.warmup_steps + 1 if "warmup" in predict else 0)
    # The sweep's own settings: the planned sketch, and ρ² until the predictions exist to re-score by.
    sweep_cfg = replace(cfg, sketch=plan.sketch, budget=None, predict=None,
                        score="resnorm2" if cfg.score in BUDGET_SCORES else cfg.score)
    parts = []
    sim = {"module_gain": {}, "kappa": {}, "kappa_median_layers": [], "forwards": 0.0, "seconds": 0.0}
    kept: list = []
    # Created after the plan is printed, so the two never share a line.
    with SweepProgress(cfg.progress, batches=total, max_tokens=cfg.max_tokens) as bar:
        for gi, group in enumerate(groups):
            bar.next_sweep(gi, len(groups))
            prof = Profiler(model, sweep_cfg, _owner=owner, _targets=group if group is not None else targets)
            source = itertools.chain([first], iterator) if gi == 0 else iter(batches)
            t0 = time.perf_counter()
            coupling_record = None
            with frozen_eval(model):
                with prof:
                    for index, batch in enumerate(source):
                        if gi == 0 and len(kept) < keep:
                            kept.append(batch)
                        _sweep_one(prof, model, batch, index, loss_fn)
                        bar.batch_done(index, prof.rows)
                        if cfg.max_tokens is not None and prof.rows >= cfg.max_tokens:
                            break
                sweep_seconds = time.perf_counter() - t0
                prof.reduce()  # under torch.distributed: the global sums, before anything reads them
                if cfg.coupling:
                    try:
                        coupling_record = measure_coupling(prof, kept[:cfg.coupling_batches], cfg.coupling_tokens)
                    except ProfileError as e:
                        if not auto_coupling:
                            raise
                        _no_coupling(str(e))
                parts.append(prof.card(sweep_seconds=sweep_seconds, coupling=coupling_record))
                if "simulate" in predict:
                    # After card(): under torch.distributed the statistics are then the global sums.
                    part = simulate(prof, kept[:KAPPA_BATCHES], budget, loss_fn)
                    for key in ("module_gain", "kappa"):
                        sim[key].update(part[key])
                    for key in ("kappa_median_layers", "forwards", "seconds"):
                        sim[key] += part[key]
            del prof  # free this group's statistics before the next sweep
    card = parts[0] if len(parts) == 1 else merge_group_cards(parts)
    card.meta["memory_plan"] = plan.to_dict()
    if budget is not None:
        card = with_predictions(card, model, kept, loss_fn, budget, predict, sim,
                                cfg.score or card.meta["settings"]["score"])
    return card


def _no_coupling(why: str) -> None:
    warnings.warn(f"layerprof: no coupling matrix ({why}); coupled=True placements and the coupling diagnostics "
                  "are unavailable (the default placement does not need them)", stacklevel=4)


def _memory_plan(model: nn.Module, first: Any, cfg: ProfileConfig, targets):
    """Dense or sketched statistics, in one sweep or several, to fit ``cfg.max_memory`` (refused when
    the settings need what does not fit: coupling or the simulation need dense, coupling one sweep)."""
    from .memory_plan import plan_memory, shared_inputs

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    first_kw = forward_kwargs(model, as_kwargs(first, device))
    ids = first_kw.get("input_ids")
    found = find_targets(model, targets)
    plan_kw = dict(acc_bytes=torch.tensor([], dtype=cfg.dtype).element_size(),
                   input_bytes=next((p.element_size() for p in model.parameters()), 4),
                   rows_per_batch=ids.numel() if isinstance(ids, torch.Tensor) else 4096, device=device,
                   sketch=None if cfg.coupling and cfg.sketch == "auto" else cfg.sketch, max_memory=cfg.max_memory)

    def refined():
        # The first estimate counts every module alone; refine it with the input sharing seen in
        # one no-grad eval-mode forward (q/k/v, gate/up hold one S) before settling for less.
        with frozen_eval(model):
            return plan_memory(found, shared=shared_inputs(model, found, first_kw), **plan_kw)

    try:
        try:
            plan = plan_memory(found, **plan_kw)
        except MemoryError:
            plan = refined()
        else:
            if plan.groups or (plan.mode == "sketch" and plan_kw["sketch"] == "auto"):
                plan = refined()
    except MemoryError as e:
        raise ProfileError(str(e)) from None
    if cfg.progress and (plan.mode == "sketch" or plan.groups):
        print(plan.describe(), file=sys.stderr)  # the user should know before a long sweep starts
    if cfg.coupling and plan.sketch is not None:
        raise ProfileError("coupling needs the dense C (the optimal corrections); use sketch=None with coupling=True")
    if plan.groups and cfg.coupling:
        raise ProfileError(f"coupling needs every layer's statistics in one sweep, but they fit only in "
                           f"{plan.sweeps} sweeps ({plan.describe()}); raise max_memory or profile without coupling")
    if "simulate" in cfg.predict and plan.sketch is not None:
        raise ProfileError("the simulated-LoRA score needs dense statistics, but they fit only sketched "
                           f"({plan.describe()}); raise max_memory or pass predict=('warmup',)")
    return plan


def _sweep_one(prof: Profiler, model: nn.Module, batch: Any, index: int, loss_fn: LossFn) -> None:
    """Forward, loss checks and backward of one batch (skipped and counted when padding-only or non-finite)."""
    kwargs = as_kwargs(batch, prof.device)
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.numel() and not bool(mask.any()):
        prof.skip_unseen("padding-only batch (attention_mask is all zero)")
        return
    check_batch(model, kwargs, index)
    # The user's model, loss_fn and backward: their errors come back as one BatchError naming the
    # batch (the original chained), our own as themselves.
    with user_code(index, "the model's forward", kwargs):
        outputs = model(**forward_kwargs(model, kwargs))
    with user_code(index, "loss_fn", kwargs):
        loss = check_loss(loss_fn(outputs, batch))
    if not torch.isfinite(loss.detach()):
        prof.skip_current(f"non-finite loss ({loss.item()})")
        return
    with user_code(index, "the backward pass", kwargs):
        loss.backward()
    prof.end_batch()

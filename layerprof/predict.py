"""What runs after the sweep, on its statistics and a few kept batches: coupling and the predicted gains.

* ``measure_coupling``: the layer coupling matrix (``layerprof.coupling``), two extra forwards per layer.
* ``simulate``: the simulated LoRA gain of each module for the user's budget (``layerprof.simulate``);
  its curvature κ costs two extra forwards per layer on ``KAPPA_BATCHES`` batches.
* ``with_predictions``: the card with the budget-aware columns filled (``sim_gain``, and the warm-up's
  ``lca_gain``, ``layerprof.warmup``) and re-scored.

Every pass here leaves the model's weights bitwise as they were.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from . import ops
from .batches import LossFn, as_kwargs, check_loss, default_loss, forward_kwargs, frozen_eval
from .errors import ProfileError
from .targets import linear_kind, modules_by_name

if TYPE_CHECKING:
    from .session import Profiler

KAPPA_BATCHES = 1  # batches the simulation's curvature κ is measured on (2 forwards per layer each)


def measure_coupling(prof: "Profiler", batches: list[dict]) -> dict | None:
    """Layer coupling on ``batches`` (see ``layerprof.coupling``); the model is left bitwise as it was."""
    from .coupling import corrections, coupling_matrix, output_directions

    if prof.sketch is not None:
        raise ProfileError("coupling needs the dense C (the optimal corrections); profile without sketch=")
    fired = [n for n in prof.targets if prof.acc.total(n) is not None and prof.targets[n].layer is not None]
    if not fired or not batches:
        return None
    deltas = corrections({n: prof.acc.total(n) for n in fired}, prof.damping)
    layer_modules: dict[int, list[str]] = {}
    for n in fired:
        layer_modules.setdefault(prof.targets[n].layer, []).append(n)
    t0 = time.perf_counter()
    dirs = output_directions(prof.model, [forward_kwargs(prof.model, as_kwargs(b, prof.device)) for b in batches],
                             layer_modules, deltas,
                             lambda m: linear_kind(m).weight(m))
    layers, K, rho = coupling_matrix(dirs)
    prof.mark_weights_restored()  # the differences moved and restored the weights (bitwise)
    return {"layers": layers, "rho": rho.tolist(), "K": K.tolist(), "batches": len(batches),
            "outputs": int(next(iter(dirs.values())).numel()), "seconds": time.perf_counter() - t0,
            "method": "central finite difference of logits, ε = 1e-3 of the weight scale"}


def simulate(prof: "Profiler", batches: list, budget, loss_fn: "LossFn | None" = None) -> dict:
    """Candidate A (``layerprof.simulate``): each module's simulated LoRA gain for ``budget``.

    κ per layer comes from two extra forwards per layer over ``batches`` (more where the first
    estimate is not positive; weights restored bitwise). Returns ``{"module_gain": {name: gain},
    "kappa": {layer: κ}, "kappa_median_layers": [...], "forwards": ..., "seconds": ...}``.
    """
    from .coupling import corrections
    from .simulate import curvature, simulated_gains

    if prof.sketch is not None:
        raise ProfileError("the simulated-LoRA score needs the dense C; profile with sketch=None "
                           "or leave budget= out")
    fired = [n for n in prof.targets if prof.targets[n].layer is not None
             and prof.acc.half(0, n) is not None and prof.acc.half(1, n) is not None]
    if not fired or not batches:
        return {"module_gain": {}, "kappa": {}, "kappa_median_layers": [], "forwards": 0.0, "seconds": 0.0}
    t0 = time.perf_counter()
    nb = prof.acc.batches_per_half()
    totals = {n: prof.acc.total(n) for n in fired}
    # The correction direction of the mean batch loss: −Gᵀ(Σ+λI)⁻¹ with G = C / batches.
    directions = {n: d / prof.acc.batches for n, d in corrections(totals, prof.damping).items()}
    sigmas = {n: ops.symmetric(st.S.double().cpu()) / st.N for n, st in totals.items()}
    layer_modules: dict[int, list[str]] = {}
    for n in fired:
        layer_modules.setdefault(prof.targets[n].layer, []).append(n)
    loss_fn = loss_fn or default_loss
    kw = [forward_kwargs(prof.model, as_kwargs(b, prof.device)) for b in batches]

    def mean_loss(model, _batches) -> float:
        with torch.no_grad():
            return sum(float(loss_fn(model(**k), b)) for k, b in zip(kw, batches)) / len(kw)

    measured = curvature(prof.model, batches, layer_modules, directions, sigmas, mean_loss,
                         lambda m: linear_kind(m).weight(m))
    from .reduce import all_reduce_mean

    # Each rank measured κ on its own batch: the mean over ranks, so that every rank's card agrees.
    kappa = {int(k): v for k, v in all_reduce_mean({str(k): v for k, v in measured.kappa.items()}).items()}
    flagged = all_reduce_mean({str(l): float(l in measured.median_layers) for l in layer_modules})
    fallback = sorted(int(l) for l, f in flagged.items() if f > 0)
    gains = simulated_gains({n: (prof.acc.half(0, n), prof.acc.half(1, n)) for n in fired}, nb,
                            {n: kappa[prof.targets[n].layer] for n in fired}, budget,
                            calib_rows_per_batch=prof.rows / max(prof.acc.batches, 1))
    forwards = all_reduce_mean({"n": float(measured.evaluations)})["n"]
    return {"module_gain": gains, "kappa": kappa, "kappa_median_layers": fallback,
            "forwards": forwards * len(batches), "seconds": time.perf_counter() - t0}


def with_predictions(card, model, kept: list, loss_fn, budget, predict, sim: dict, score: str):
    """The card with its budget-aware columns (sim_gain, lca_gain, κ) filled and re-scored."""
    from .finalize import attach_predictions
    from .warmup import warmup_lca

    module_cols: dict[str, dict[str, float]] = {}
    meta: dict = {"budget": budget.to_dict()}
    if "simulate" in predict:
        module_cols["sim_gain"] = sim["module_gain"]
        nk = min(len(kept), KAPPA_BATCHES)
        meta["simulate"] = {"seconds": sim["seconds"], "kappa_batches": nk, "extra_forwards": int(sim["forwards"]),
                            "kappa_median_layers": sorted(sim["kappa_median_layers"])}
    if "warmup" in predict:
        if len(kept) < 2:
            raise ProfileError("the warm-up score needs at least 2 batches (train on one, measure on the next)")
        names = [m.name for m in card.modules if m.layer is not None]
        mods = modules_by_name(model, names)
        dims = {m.name: (m.d_in, m.d_out) for m in card.modules}
        device = next((p.device for p in model.parameters()), torch.device("cpu"))

        def loss_of(m, batch):
            return check_loss(loss_fn(m(**forward_kwargs(m, as_kwargs(batch, device))), batch))

        t0 = time.perf_counter()
        with frozen_eval(model):
            lca = warmup_lca(model, kept, mods, dims, budget, loss_of)
        from .reduce import all_reduce_mean

        module_cols["lca_gain"] = all_reduce_mean(lca.pop("gains"))  # every rank warms up on its own batches
        meta["warmup"] = {**lca, "seconds": time.perf_counter() - t0,
                          "cost_of_full_lora_finetune": lca["passes"] / budget.steps}
    return attach_predictions(card, module_cols, {"kappa": sim["kappa"]} if "simulate" in predict else {},
                              score, meta)

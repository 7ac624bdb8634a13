"""What runs after the sweep, on its statistics and a few kept batches: coupling and the predicted gains.

* ``measure_coupling``: the layer coupling matrix (``layerprof.predict.coupling``), two extra forwards per layer.
* ``simulate``: the simulated LoRA gain of each module for the user's budget (``layerprof.predict.simulate``);
  its curvature κ costs two extra forwards per layer on ``KAPPA_BATCHES`` batches.
* ``with_predictions``: the card with the budget-aware columns filled (``sim_gain``, and the warm-up's
  ``lca_gain``, ``layerprof.predict.warmup``) and re-scored.

Every pass here leaves the model's weights bitwise as they were.
"""
from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Mapping

import torch

from ..card.card import LayerCard
from ..card.scores import apply_score
from ..stats import ops
from ..model.batches import (LossFn, as_kwargs, check_loss, default_loss, first_line, forward_kwargs, frozen_eval,
                             leading_tokens, split_rows)
from ..utils.errors import ProfileError
from ..model.targets import linear_kind, modules_by_name

if TYPE_CHECKING:
    from .session import Profiler

KAPPA_BATCHES = 1  # batches the simulation's curvature κ is measured on (2 forwards per layer each)


COUPLING_MEMORY_FRACTION = 0.25  # of the free memory after the sweep: one chunk's output directions


def low_precision_weights(model, targets) -> list[str]:
    """The dtypes of the target weights too coarse for the coupling's finite differences (16-bit floats)."""
    return sorted({str(linear_kind(m).weight(m).dtype).replace("torch.", "")
                   for m in modules_by_name(model, list(targets)).values()
                   if linear_kind(m).weight(m).dtype not in (torch.float32, torch.float64)})


def measure_coupling(prof: "Profiler", batches: list[dict], max_tokens: int | None = None,
                     max_bytes: int | None = None) -> dict | None:
    """Layer coupling on the first ``max_tokens`` tokens of ``batches`` (whole sequences; see
    ``layerprof.predict.coupling``); the model is left bitwise as it was.

    The output directions of every layer are held for one chunk of sequences at a time, the chunk
    sized so that they fit ``max_bytes`` (default: a quarter of the free memory); K, a sum over
    rows, is accumulated across chunks. Raises ``ProfileError`` when not even one sequence fits.
    """
    from ..predict.coupling import corrections, coupling_gram, output_logits
    from ..predict.replay import Replay
    from .memory_plan import free_memory
    from ..stats.reduce import all_reduce_sum

    if prof.sketch is not None:
        raise ProfileError("coupling needs the dense C (the optimal corrections); profile without sketch=")
    fired = [n for n in prof.targets if prof.acc.total(n) is not None and prof.targets[n].layer is not None]
    if not fired or not batches:
        return None
    layer_modules: dict[int, list[str]] = {}
    for n in fired:
        layer_modules.setdefault(prof.targets[n].layer, []).append(n)
    t0 = time.perf_counter()
    used, tokens = leading_tokens([as_kwargs(b, prof.device) for b in batches], max_tokens)
    used = [forward_kwargs(prof.model, kw) for kw in used]
    # One sequence's outputs with every position counted (an upper bound for any sequence) size the chunks.
    probe = dict(leading_tokens(used[:1], 1)[0][0])
    if isinstance(probe.get("attention_mask"), torch.Tensor):
        probe["attention_mask"] = torch.ones_like(probe["attention_mask"])
    # The finite differences also keep the unperturbed forward's module inputs and outputs (replay.Replay).
    exact = bool(low_precision_weights(prof.model, fired))
    probe_replay = Replay(prof.model, [] if exact else fired)
    with frozen_eval(prof.model):
        per_sequence = int(probe_replay.record(lambda: output_logits(prof.model, [probe])).numel())
    need = 8 * 3 * len(layer_modules) * per_sequence + probe_replay.bytes  # directions, ± outputs, replay
    del probe_replay
    limit = max_bytes if max_bytes is not None else int(COUPLING_MEMORY_FRACTION * free_memory(prof.device))
    per_chunk = limit // max(1, need)
    if per_chunk < 1:
        from ..utils.memory import human_bytes

        raise ProfileError(f"the coupling matrix needs {len(layer_modules)} layers × {per_sequence:,} outputs of one "
                           f"sequence in float64 and the forward's module outputs ({human_bytes(need)}), more than "
                           f"{human_bytes(limit)}; profile with coupling=False, or shorter sequences")
    chunks = [chunk for kw in used for chunk in split_rows(kw, per_chunk)]
    deltas = corrections({n: prof.acc.total(n) for n in fired}, prof.damping)
    # Under torch.distributed every rank holds its own rows of the directions: K is their sum over ranks.
    # 16-bit weights cannot hold the finite differences' 1e-3 steps: forward-mode AD instead (the study's
    # cards, float32, used the differences; the two agree to ~1e-7 there).
    try:
        layers, K, rho, outputs = coupling_gram(prof.model, chunks, layer_modules, deltas,
                                                lambda m: linear_kind(m).weight(m), reduce=all_reduce_sum,
                                                exact=exact)
    except (NotImplementedError, RuntimeError) as e:
        if not exact:
            raise
        raise ProfileError(f"the coupling matrix by forward-mode AD failed on this model ({first_line(e)}); "
                           "profile with coupling=False, or a float32 copy of the model") from e
    if not exact:
        prof.mark_weights_restored()  # the differences moved and restored the weights (bitwise)
    method = ("forward-mode AD (torch.func.jvp) of logits, in the weights' dtype" if exact
              else "central finite difference of logits, ε = 1e-3 of the weight scale")
    return {"layers": layers, "rho": rho.tolist(), "K": K.tolist(), "batches": len(used), "tokens": tokens,
            "chunks": len(chunks), "sequence_bytes": need, "outputs": outputs, "seconds": time.perf_counter() - t0,
            "method": method}


def simulate(prof: "Profiler", batches: list, budget, loss_fn: "LossFn | None" = None) -> dict:
    """The simulated LoRA gain (``layerprof.predict.simulate``): each module's simulated LoRA gain for ``budget``.

    κ per layer comes from two extra forwards per layer over ``batches`` (more where the first
    estimate is not positive; weights restored bitwise). Returns ``{"module_gain": {name: gain},
    "kappa": {layer: κ}, "kappa_median_layers": [...], "forwards": ..., "seconds": ...}``.
    """
    from ..predict.coupling import corrections
    from ..predict.simulate import curvature, simulated_gains

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

    # The curvature's forwards replay the unperturbed module outputs upstream of each perturbed layer
    # (replay.Replay: the same κ for about half the work) where one forward's module inputs and outputs
    # fit the share of free memory the coupling pass may take (counted per module: an upper bound).
    from .memory_plan import free_memory

    rows = prof.rows / max(prof.acc.batches, 1) * len(batches)
    itemsize = next(prof.model.parameters()).element_size()
    held = rows * sum(prof.targets[n].d_in + prof.targets[n].d_out for n in fired) * itemsize
    replay = held <= COUPLING_MEMORY_FRACTION * free_memory(prof.device)
    measured = curvature(prof.model, batches, layer_modules, directions, sigmas, mean_loss,
                         lambda m: linear_kind(m).weight(m), replay=replay)
    from ..stats.reduce import all_reduce_mean

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
    from ..predict.warmup import warmup_lca

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
        from ..stats.reduce import all_reduce_mean

        module_cols["lca_gain"] = all_reduce_mean(lca.pop("gains"))  # every rank warms up on its own batches
        meta["warmup"] = {**lca, "seconds": time.perf_counter() - t0,
                          "cost_of_full_lora_finetune": lca["passes"] / budget.steps}
    return attach_predictions(card, module_cols, {"kappa": sim["kappa"]} if "simulate" in predict else {},
                              score, meta)


def attach_predictions(card, module_cols: Mapping[str, Mapping[str, float]],
                       layer_cols: Mapping[str, Mapping[int, float]], score: str, meta: dict):
    """A copy of ``card`` with predicted-gain module columns (summed per layer) and layer columns
    filled, scored by ``score`` and with ``meta`` merged into its metadata."""
    modules = [dataclasses.replace(m, **{c: float(v[m.name]) for c, v in module_cols.items() if m.name in v})
               for m in card.modules]
    layers = []
    for l in card.layers:
        row = dataclasses.asdict(l)
        for c, values in module_cols.items():
            ms = [m for m in modules if m.layer == l.layer and getattr(m, c) is not None]
            row[c] = sum(getattr(m, c) for m in ms) if ms else None
        for c, values in layer_cols.items():
            row[c] = values.get(l.layer)
        layers.append(row)
    apply_score(layers, score)
    settings = {**card.meta["settings"], "score": score}
    return LayerCard(modules, layers, {**card.meta, **meta, "settings": settings})

"""Placement: which layers to adapt, under a budget, with the Pareto front (docs/method.md).

The gain of a layer set A is additive in the layer scores (Σ_{ℓ∈A} score_ℓ; the default
score is ρ_ℓ², so the predicted loss decrease is half of it). The cost is not: the
backward pass stops at the lowest adapted layer (see ``layerprof.cost``). Candidates
are therefore enumerated exactly when the model has few layers (every subset), and
otherwise greedily: for each lowest layer ℓ_min, ℓ_min plus the best-ratio layers above
it. Every objective then picks from the same candidate set, and the non-dominated
candidates form the gain-vs-cost Pareto front.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .cost import Cost, CostModel, cost_model
from .errors import PlacementError  # noqa: F401  (also importable from here)
from .placement_search import FRONT_LEVELS, Family, Front, row_search

if TYPE_CHECKING:
    from .card import LayerCard

EXACT_MAX_LAYERS = 16  # 2^16 subsets enumerate in well under a second


@dataclass
class Plan:
    """A chosen placement: layers, their modules and ranks, predicted gain and modelled cost."""

    layers: list[int]
    modules: list[str]
    ranks: dict[str, int]
    predicted_gain: float
    predicted_gain_fraction: float
    cost: float
    cost_detail: Cost
    objective: str
    constraint: dict
    by: str
    kinds: dict[str, str] = field(repr=False, default_factory=dict)
    dims: dict[str, tuple[int, int]] = field(repr=False, default_factory=dict)  # (d_in, d_out) per module
    front: list[dict] = field(repr=False, default_factory=list)
    model: dict = field(repr=False, default_factory=dict)  # the card's meta.model: class, name_or_path, ...

    def lora_config(self, r: int | None = None, lora_alpha: float | None = None, **kwargs):
        """A ``peft.LoraConfig`` adapting exactly ``self.modules`` (see ``layerprof.export``)."""
        from .export import lora_config

        return lora_config(self, r=r, lora_alpha=lora_alpha, **kwargs)

    def to_dict(self) -> dict:
        return {"layers": self.layers, "modules": self.modules, "ranks": self.ranks,
                "predicted_gain": self.predicted_gain, "predicted_gain_fraction": self.predicted_gain_fraction,
                "cost": self.cost, "cost_detail": self.cost_detail.to_dict(), "objective": self.objective,
                "constraint": self.constraint, "by": self.by, "front": self.front}


def card_cost_model(card: "LayerCard") -> CostModel:
    """The cost model of a card's modules and output head(s)."""
    return cost_model(card.modules, card.meta.get("heads", []), card.meta.get("attention"), card.meta.get("step_cost"))


def module_ranks(card: "LayerCard", rank: int | None = None, rank_target: float | None = None) -> dict[str, int]:
    """Rank per module: ``rank`` (default: the card's), or the smallest r whose rank capture
    ρ_m(r)²/ρ_m² reaches ``rank_target`` (from the singular spectrum of M_m kept on the card)."""
    base = rank if rank is not None else card.rank
    if not isinstance(base, int) or base < 1:
        raise PlacementError(f"rank must be a positive int, got {base!r}")
    if rank_target is None:
        return {m.name: base for m in card.modules}
    if not 0 < rank_target <= 1:
        raise PlacementError(f"rank_target is a fraction of ρ² in (0, 1], got {rank_target!r}")
    ranks = {}
    for m in card.modules:
        total = m.resnorm ** 2
        cum = np.cumsum(m.sv2) / total if total > 0 else np.ones(1)
        hit = np.nonzero(cum >= rank_target - 1e-12)[0]
        r = int(hit[0]) + 1 if hit.size else len(m.sv2)
        ranks[m.name] = max(1, min(r, m.d_in, m.d_out))
    return ranks


def place(card: "LayerCard", *, layers: int | None = None, budget: float | None = None, params: int | None = None,
          objective: str = "gain", target_gain: float | None = None, by: str = "score", rank: int | None = None,
          rank_target: float | None = None, exact_max_layers: int = EXACT_MAX_LAYERS,
          coupled: bool = False, spread: bool | None = None) -> Plan:
    """Choose the layers to adapt.

    ``objective="gain"`` maximizes Σ score_ℓ under exactly one budget: ``layers`` (count),
    ``budget`` (training cost as a fraction of full-layer LoRA) or ``params`` (adapter
    parameters). ``objective="cost"`` minimizes the modelled cost subject to reaching
    ``target_gain`` (a fraction of the all-layer score). ``by`` names the layer column to
    maximize (default the card's score; baselines such as ``grad_norm`` for comparison).
    With ``layers=k`` on the card's score the default (``spread=None``) is stratified-k, the placement
    study's round-6 choice (studies/v1/notebook.md): uniform-k's k equal depth bins, and in each the layer with
    the highest score (``stratified_k``). ``spread=False`` takes the plain top-k; ``coupled=True``
    (on a card with the coupling matrix) picks the k layers greedily by the coupled joint gain of
    ``layerprof.coupling`` instead (rounds 3–4's default, not confirmed on later rows).
    """
    if not card.layers:
        raise PlacementError("the card has no per-layer rows (no module name carried a block index such as "
                             "'layers.3.'); nothing to place")
    if by not in {f for f in card.layers[0].__dataclass_fields__}:
        raise PlacementError(f"by={by!r} is not a layer column; use one of: score, resnorm, resnorm_rank, "
                             "grad_norm, act_norm, nfn, energy")
    ranks = module_ranks(card, rank, rank_target)
    layer_ids = [l.layer for l in card.layers]
    L = len(layer_ids)
    model = card_cost_model(card)
    col = np.array([float("nan") if getattr(l, by) is None else float(getattr(l, by)) for l in card.layers])
    if by in ("grad_norm", "act_norm", "resnorm", "resnorm_rank"):
        col = col ** 2  # norms add in squares across a layer's modules
    if not np.all(np.isfinite(col)):
        raise PlacementError(f"layer column {by!r} has non-finite values; cannot place by it (a budget-aware "
                             "score needs a card profiled with budget=)")
    # Cross-half and predicted-gain scores can be negative (a layer whose adapter is predicted to
    # hurt): it adds nothing to a plan's gain, and top-k still ranks by the signed value.
    ranked = col
    col = np.clip(col, 0.0, None)
    total = float(col.sum())
    adapter = np.array([model.adapter_flops(l, ranks) for l in layer_ids])
    params_l = np.array([model.adapter_params(l, ranks) for l in layer_ids], dtype=np.int64)
    backward = np.array(model.backward_flops_each(layer_ids))
    full = model.full_flops(ranks)

    exact = L <= exact_max_layers
    family = Family(col, adapter, params_l, backward, model.forward, full, total, exact)

    constraint: dict
    if spread and (objective != "gain" or layers is None or coupled):
        raise PlacementError("spread=True (stratified-k) supports objective='gain' with layers=k only, "
                             "and not with coupled=True")
    if spread is None:  # the default: stratified-k wherever it applies
        spread = objective == "gain" and layers is not None and by == "score" and not coupled
    if coupled and (objective != "gain" or layers is None):
        raise PlacementError("coupled=True supports objective='gain' with layers=k only")
    extra = None  # the top-k set of a count budget, which the candidate family need not contain
    if objective == "gain":
        given = {k: v for k, v in (("layers", layers), ("budget", budget), ("params", params)) if v is not None}
        if len(given) != 1:
            raise PlacementError("objective='gain' needs exactly one of layers=k, budget=fraction of full-LoRA "
                                 f"cost, params=count; got {sorted(given) or 'none'}")
        if target_gain is not None:
            raise PlacementError("target_gain goes with objective='cost'")
        constraint = given
        if layers is not None:
            if isinstance(layers, bool) or not isinstance(layers, (int, np.integer)) or not 1 <= layers <= L:
                raise PlacementError(f"layers must be an int in 1..{L} (the card has {L} layers), got {layers!r}")
            ok = np.zeros(L, dtype=bool)
            if coupled:
                ok[[layer_ids.index(l) for l in _coupled_pick(card, col, layer_ids, layers)]] = True
            elif spread:
                picked = stratified_k(dict(zip(layer_ids, ranked.tolist())), layer_ids, layers)
                ok[[layer_ids.index(l) for l in picked]] = True
            else:
                # Additive gain under a count budget: the top-k scores are exactly optimal.
                ok[np.argsort(-ranked, kind="stable")[:layers]] = True
            extra = family.with_extra(ok)
            feasible = lambda c: np.zeros(c.cost.shape, dtype=bool)  # noqa: E731  (only the top-k set)
            row_best = None
        elif budget is not None:
            if isinstance(budget, bool) or not (isinstance(budget, (int, float)) and math.isfinite(budget)
                                                and budget > 0):
                raise PlacementError(f"budget is a fraction of full-layer LoRA training cost (> 0), got {budget!r}")
            feasible = lambda c: c.cost <= budget + 1e-12  # noqa: E731
            row_best = lambda c: row_search(c.cost, budget + 1e-12, last_le=True)  # noqa: E731
        else:
            if isinstance(params, bool) or not (isinstance(params, (int, np.integer)) and params > 0):
                raise PlacementError(f"params must be a positive int (adapter parameters), got {params!r}")
            feasible = lambda c: c.nparams <= params  # noqa: E731
            row_best = lambda c: row_search(c.nparams, params, last_le=True)  # noqa: E731
        # Highest gain; among equal gains the cheapest.
        better = lambda g, c, best: g > best[0] + 1e-12 or (g >= best[0] - 1e-12 and c < best[1])  # noqa: E731
        key = lambda c: c.gain  # noqa: E731
    elif objective == "cost":
        if isinstance(target_gain, bool) or not isinstance(target_gain, (int, float)) or not 0 < target_gain <= 1:
            raise PlacementError(f"objective='cost' needs target_gain in (0, 1] (a fraction of the all-layer "
                                 f"predicted gain), got {target_gain!r}")
        if any(v is not None for v in (layers, budget, params)):
            raise PlacementError("objective='cost' takes target_gain only (not layers, budget or params)")
        constraint = {"target_gain": target_gain}
        feasible = lambda c: c.gain >= target_gain - 1e-12  # noqa: E731
        row_best = lambda c: row_search(c.gain, target_gain - 1e-12, last_le=False)  # noqa: E731
        # Lowest cost; among equal costs the highest gain.
        better = lambda g, c, best: c < best[1] - 1e-12 or (c <= best[1] + 1e-12 and g > best[0])  # noqa: E731
        key = lambda c: -c.cost  # noqa: E731
    else:
        raise PlacementError(f"objective must be 'gain' or 'cost', got {objective!r}")

    cheapest = float((model.forward + backward + adapter).min() / full)  # the cheapest single layer
    front = Front(None if exact else np.linspace(cheapest, 1.0, FRONT_LEVELS))
    best: tuple = (-np.inf, np.inf, None, -1)  # (gain, cost, chunk, flat index)
    for chunk in itertools.chain([extra] if extra is not None else [], family.chunks()):
        front.add(chunk)
        if chunk.monotone:
            flat = row_best(chunk) if row_best is not None else np.empty(0, dtype=np.int64)
        else:
            ok = chunk.valid if chunk is extra else chunk.valid & feasible(chunk)
            flat = np.nonzero(ok.ravel())[0]
        if not flat.size:
            continue
        k_of = key(chunk).ravel()[flat]
        top = flat[k_of >= k_of.max() - 1e-12]
        # Ties on the key: the cheaper set (gain objective) or the better one (cost objective).
        k = int(top[np.argmin(chunk.cost.flat[top])] if objective == "gain" else top[np.argmax(chunk.gain.flat[top])])
        if best[2] is None or better(chunk.gain.flat[k], chunk.cost.flat[k], best):
            best = (float(chunk.gain.flat[k]), float(chunk.cost.flat[k]), chunk, k)
    if best[2] is None:
        if objective == "cost":
            if total <= 0:
                raise PlacementError(f"no layer has a positive {by} (every one is ≤ 0), so no placement reaches a "
                                     f"share of the gain; place by count (layers=k) or by another score")
            raise PlacementError(f"no placement reaches target_gain={target_gain}")
        if budget is not None:
            raise PlacementError(f"no placement fits budget={budget}: the cheapest single layer costs "
                                 f"{cheapest:.3f} of full-layer LoRA; raise the budget to at least that")
        raise PlacementError(f"no placement fits params={params:,}: the smallest layer's adapters have "
                             f"{int(params_l.min()):,} parameters at these ranks; raise params or lower rank")
    _, _, pick_chunk, pick = best

    chosen = [layer_ids[i] for i in family.members(pick_chunk.key(pick))]
    chosen_set = set(chosen)
    modules = [m.name for m in card.modules if m.layer in chosen_set]
    detail = model.cost(chosen, ranks)
    return Plan(
        layers=chosen,
        modules=modules,
        ranks={n: ranks[n] for n in modules},
        predicted_gain=float(sum(l.predicted_gain for l in card.layers if l.layer in chosen_set)),
        predicted_gain_fraction=float(pick_chunk.gain.flat[pick]),
        cost=detail.fraction,
        cost_detail=detail,
        objective=objective,
        constraint=constraint,
        by=by,
        kinds={m.name: m.kind for m in card.modules if m.layer in chosen_set},
        dims={m.name: (m.d_in, m.d_out) for m in card.modules if m.layer in chosen_set},
        front=front.to_list(family, layer_ids),
        model=dict(card.meta.get("model") or {}),
    )


def _coupled_pick(card: "LayerCard", col: np.ndarray, layer_ids: list[int], k: int) -> list[int]:
    from .coupling import coupled_greedy

    coupling = card.meta.get("coupling")
    if not coupling:
        raise PlacementError("coupled=True needs a card profiled with coupling=True (lp.profile(..., coupling=True))")
    rho = np.asarray(coupling["rho"])
    order = [coupling["layers"].index(l) for l in layer_ids]
    return coupled_greedy(dict(zip(layer_ids, col)), layer_ids, rho[np.ix_(order, order)], k)


def depth_bins(layers: list[int], k: int) -> list[list[int]]:
    """k contiguous bins of the stack, equal where k divides it (the rest spread one layer each)."""
    L = len(layers)
    return [layers[i * L // k:(i + 1) * L // k] for i in range(k)]


def uniform_k(layers: list[int], k: int) -> list[int]:
    """k layers evenly spread over depth: the centre of each of k equal bins (``depth_bins``)."""
    return [b[len(b) // 2] for b in depth_bins(layers, k) if b]


def stratified_k(scores: dict[int, float], layers: list[int], k: int) -> list[int]:
    """In each of uniform-k's k depth bins, the layer with the highest score (ties: the shallower)."""
    return sorted(max(b, key=lambda l: (scores[l], -l)) for b in depth_bins(layers, k) if b)


def middle_k(layers: list[int], k: int) -> list[int]:
    """The k layers around the middle of the stack."""
    start = (len(layers) - k) // 2
    return layers[start:start + k]

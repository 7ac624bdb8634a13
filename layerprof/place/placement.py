"""Placement: which layers to adapt, under a budget, with the Pareto front (docs/method.md).

The gain of a layer set A is additive in the layer scores (Σ_{ℓ∈A} score_ℓ; the default
score is ρ_ℓ², so the predicted loss decrease is half of it). The cost is not: the
backward pass stops at the lowest adapted layer (see ``layerprof.card.cost``). Candidates
are therefore enumerated exactly when the model has few layers (every subset), and
otherwise greedily: for each lowest layer ℓ_min, ℓ_min plus the best-ratio layers above
it. Every objective then picks from the same candidate set, and the non-dominated
candidates form the gain-vs-cost Pareto front.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..card.cost import Cost, CostModel, cost_model
from ..utils.errors import PlacementError  # noqa: F401  (also importable from here)
from .search import FRONT_LEVELS, TIE, Chunk, Family, Front, row_search
from .selectors import stratified_k

if TYPE_CHECKING:
    from ..card.card import LayerCard

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
        """A ``peft.LoraConfig`` adapting exactly ``self.modules`` (see ``layerprof.output.export``)."""
        from ..output.export import lora_config

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
        hit = np.nonzero(cum >= rank_target - TIE)[0]
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
    With ``layers=k`` on the card's score the default (``spread=None``) is stratified-k: uniform-k's k
    equal depth bins, and in each the layer with the highest score (``stratified_k``; why:
    docs/decisions/stratified-bins.md). ``spread=False`` takes the plain top-k; ``coupled=True``
    (on a card with the coupling matrix) picks the k layers greedily by the coupled joint gain of
    ``layerprof.predict.coupling`` instead.
    """
    if not card.layers:
        raise PlacementError("the card has no per-layer rows (no module name carried a block index such as "
                             "'layers.3.'); nothing to place")
    if by not in card.layers[0].__dataclass_fields__:
        from ..card.card import PLACE_BY

        raise PlacementError(f"by={by!r} is not a layer column; use one of: {', '.join(PLACE_BY)}")
    ranks = module_ranks(card, rank, rank_target)
    ranked = _layer_column(card, by)
    layer_ids = [l.layer for l in card.layers]
    model = card_cost_model(card)
    # Cross-half and predicted-gain scores can be negative (a layer whose adapter is predicted to
    # hurt): it adds nothing to a plan's gain, and top-k still ranks by the signed value.
    col = np.clip(ranked, 0.0, None)
    adapter = np.array([model.adapter_flops(l, ranks) for l in layer_ids])
    params_l = np.array([model.adapter_params(l, ranks) for l in layer_ids], dtype=np.int64)
    backward = np.array(model.backward_flops_each(layer_ids))
    full = model.full_flops(ranks)
    exact = len(layer_ids) <= exact_max_layers
    family = Family(col, adapter, params_l, backward, forward=model.forward, full=full, total=float(col.sum()),
                    exact=exact)

    spread = _check_modes(objective, layers, by, coupled, spread)
    if objective == "gain":
        goal = _gain_goal(layers, budget, params, target_gain, len(layer_ids))
        if layers is not None:
            goal.extra = family.with_extra(_count_pick(card, ranked, col, layer_ids, layers, coupled, spread))
    elif objective == "cost":
        goal = _cost_goal(target_gain, layers, budget, params)
    else:
        raise PlacementError(f"objective must be 'gain' or 'cost', got {objective!r}")

    cheapest = float((model.forward + backward + adapter).min() / full)  # the cheapest single layer
    front = Front(None if exact else np.linspace(cheapest, 1.0, FRONT_LEVELS))
    best = _search(goal, family, front)
    if best is None:
        raise _nothing_fits(goal, by, float(col.sum()), cheapest, params_l)
    chunk, pick = best
    chosen = [layer_ids[i] for i in family.members(chunk.key(pick))]
    return _plan(card, chosen, ranks, model, goal, by, float(chunk.gain.flat[pick]), front.to_list(family, layer_ids))


@dataclass
class Goal:
    """One budget kind: which candidate sets qualify, and which of two qualifying sets is better.

    ``objective="gain"``: the highest gain, among equal gains the cheapest; ``"cost"``: the lowest cost,
    among equal costs the highest gain. Values closer than ``TIE`` are equal. ``row_best`` answers
    ``feasible`` on a monotone row by binary search; ``extra`` is a count budget's one set (top-k,
    stratified-k or coupled), which the candidate family need not contain.
    """

    objective: str
    constraint: dict                  # as the plan records it
    feasible: Callable                # chunk -> bool array
    row_best: Callable | None         # monotone chunk -> flat indices
    extra: Chunk | None = None

    def key(self, chunk: Chunk) -> np.ndarray:
        return chunk.gain if self.objective == "gain" else -chunk.cost

    def better(self, gain: float, cost: float, best: tuple) -> bool:
        if self.objective == "gain":
            return gain > best[0] + TIE or (gain >= best[0] - TIE and cost < best[1])
        return cost < best[1] - TIE or (cost <= best[1] + TIE and gain > best[0])

    def tie_break(self, chunk: Chunk, top: np.ndarray) -> int:
        """Among sets tied on the key: the cheaper (gain objective) or the better (cost objective)."""
        return int(top[np.argmin(chunk.cost.flat[top])] if self.objective == "gain" else top[np.argmax(chunk.gain.flat[top])])


def _layer_column(card: "LayerCard", by: str) -> np.ndarray:
    """The layer column placement maximizes, signed (norms squared: they add in squares across modules)."""
    col = np.array([float("nan") if getattr(l, by) is None else float(getattr(l, by)) for l in card.layers])
    if by in ("grad_norm", "act_norm", "resnorm", "resnorm_rank"):
        col = col ** 2
    if not np.all(np.isfinite(col)):
        raise PlacementError(f"layer column {by!r} has non-finite values; cannot place by it (a budget-aware "
                             "score needs a card profiled with budget=)")
    return col


def _check_modes(objective: str, layers, by: str, coupled: bool, spread: bool | None) -> bool:
    """Whether to place stratified-k: the default wherever it applies; refused where it does not."""
    if spread and (objective != "gain" or layers is None or coupled):
        raise PlacementError("spread=True (stratified-k) supports objective='gain' with layers=k only, "
                             "and not with coupled=True")
    if coupled and (objective != "gain" or layers is None):
        raise PlacementError("coupled=True supports objective='gain' with layers=k only")
    return bool(spread) if spread is not None else (objective == "gain" and layers is not None and by == "score"
                                                    and not coupled)


def _gain_goal(layers, budget, params, target_gain, L: int) -> Goal:
    given = {k: v for k, v in (("layers", layers), ("budget", budget), ("params", params)) if v is not None}
    if len(given) != 1:
        raise PlacementError("objective='gain' needs exactly one of layers=k, budget=fraction of full-LoRA "
                             f"cost, params=count; got {sorted(given) or 'none'}")
    if target_gain is not None:
        raise PlacementError("target_gain goes with objective='cost'")
    if layers is not None:
        if isinstance(layers, bool) or not isinstance(layers, (int, np.integer)) or not 1 <= layers <= L:
            raise PlacementError(f"layers must be an int in 1..{L} (the card has {L} layers), got {layers!r}")
        return Goal("gain", given, lambda c: np.zeros(c.cost.shape, dtype=bool), None)  # only the extra set
    if budget is not None:
        if isinstance(budget, bool) or not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
            raise PlacementError(f"budget is a fraction of full-layer LoRA training cost (> 0), got {budget!r}")
        return Goal("gain", given, lambda c: c.cost <= budget + TIE,
                    lambda c: row_search(c.cost, budget + TIE, last_le=True))
    if isinstance(params, bool) or not (isinstance(params, (int, np.integer)) and params > 0):
        raise PlacementError(f"params must be a positive int (adapter parameters), got {params!r}")
    return Goal("gain", given, lambda c: c.nparams <= params, lambda c: row_search(c.nparams, params, last_le=True))


def _cost_goal(target_gain, layers, budget, params) -> Goal:
    if isinstance(target_gain, bool) or not isinstance(target_gain, (int, float)) or not 0 < target_gain <= 1:
        raise PlacementError(f"objective='cost' needs target_gain in (0, 1] (a fraction of the all-layer "
                             f"predicted gain), got {target_gain!r}")
    if any(v is not None for v in (layers, budget, params)):
        raise PlacementError("objective='cost' takes target_gain only (not layers, budget or params)")
    return Goal("cost", {"target_gain": target_gain}, lambda c: c.gain >= target_gain - TIE,
                lambda c: row_search(c.gain, target_gain - TIE, last_le=False))


def _count_pick(card, ranked: np.ndarray, col: np.ndarray, layer_ids: list[int], k: int, coupled: bool,
                spread: bool) -> np.ndarray:
    """The k layers of a count budget, as a mask: coupled greedy, stratified-k or the plain top-k."""
    ok = np.zeros(len(layer_ids), dtype=bool)
    if coupled:
        ok[[layer_ids.index(l) for l in _coupled_pick(card, col, layer_ids, k)]] = True
    elif spread:
        ok[[layer_ids.index(l) for l in stratified_k(dict(zip(layer_ids, ranked.tolist())), layer_ids, k)]] = True
    else:
        ok[np.argsort(-ranked, kind="stable")[:k]] = True  # additive gain under a count: top-k is exactly optimal
    return ok


def _search(goal: Goal, family: Family, front: Front) -> tuple | None:
    """The best qualifying set over every chunk of candidates, (chunk, flat index), adding each to the front."""
    best: tuple = (-np.inf, np.inf, None, -1)  # (gain, cost, chunk, flat index)
    for chunk in itertools.chain([goal.extra] if goal.extra is not None else [], family.chunks()):
        front.add(chunk)
        if chunk.monotone:
            flat = goal.row_best(chunk) if goal.row_best is not None else np.empty(0, dtype=np.int64)
        else:
            ok = chunk.valid if chunk is goal.extra else chunk.valid & goal.feasible(chunk)
            flat = np.nonzero(ok.ravel())[0]
        if not flat.size:
            continue
        k_of = goal.key(chunk).ravel()[flat]
        k = goal.tie_break(chunk, flat[k_of >= k_of.max() - TIE])
        if best[2] is None or goal.better(chunk.gain.flat[k], chunk.cost.flat[k], best):
            best = (float(chunk.gain.flat[k]), float(chunk.cost.flat[k]), chunk, k)
    return None if best[2] is None else (best[2], best[3])


def _nothing_fits(goal: Goal, by: str, total: float, cheapest: float, params_l: np.ndarray) -> PlacementError:
    c = goal.constraint
    if goal.objective == "cost":
        if total <= 0:
            return PlacementError(f"no layer has a positive {by} (every one is ≤ 0), so no placement reaches a "
                                  f"share of the gain; place by count (layers=k) or by another score")
        return PlacementError(f"no placement reaches target_gain={c['target_gain']}")
    if "budget" in c:
        return PlacementError(f"no placement fits budget={c['budget']}: the cheapest single layer costs "
                              f"{cheapest:.3f} of full-layer LoRA; raise the budget to at least that")
    return PlacementError(f"no placement fits params={c['params']:,}: the smallest layer's adapters have "
                          f"{int(params_l.min()):,} parameters at these ranks; raise params or lower rank")


def _plan(card, chosen: list[int], ranks: dict, model: CostModel, goal: Goal, by: str, fraction: float,
          front: list[dict]) -> Plan:
    chosen_set = set(chosen)
    mods = [m for m in card.modules if m.layer in chosen_set]
    detail = model.cost(chosen, ranks)
    return Plan(layers=chosen, modules=[m.name for m in mods], ranks={m.name: ranks[m.name] for m in mods},
                predicted_gain=float(sum(l.predicted_gain for l in card.layers if l.layer in chosen_set)),
                predicted_gain_fraction=fraction, cost=detail.fraction, cost_detail=detail,
                objective=goal.objective, constraint=goal.constraint, by=by,
                kinds={m.name: m.kind for m in mods}, dims={m.name: (m.d_in, m.d_out) for m in mods},
                front=front, model=dict(card.meta.get("model") or {}))


def _coupled_pick(card: "LayerCard", col: np.ndarray, layer_ids: list[int], k: int) -> list[int]:
    from ..predict.coupling import coupled_greedy

    coupling = card.meta.get("coupling")
    if not coupling:
        raise PlacementError("coupled=True needs a card profiled with coupling=True (lp.profile(..., coupling=True))")
    rho = np.asarray(coupling["rho"])
    order = [coupling["layers"].index(l) for l in layer_ids]
    return coupled_greedy(dict(zip(layer_ids, col)), layer_ids, rho[np.ix_(order, order)], k)


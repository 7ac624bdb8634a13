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
    return cost_model(card.modules, card.meta.get("heads", []))


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


FRONT_LEVELS = 256  # the greedy family's front: the best set at this many budgets spread over cost


class _Chunk:
    """Candidate layer sets as same-shaped arrays: cost, gain fraction, adapter parameters, validity.

    ``key(i)`` names set i (flat index) for ``_Family.members``: (bitmask, −1) in the exact
    enumeration; (ℓ_min, n) in the greedy family, the lowest layer plus the n best-ratio layers
    above it; (−1, 0) for the one extra set a count budget adds (its top-k).
    """

    def __init__(self, cost, gain, nparams, valid, key, monotone: bool = False):
        self.cost, self.gain, self.nparams, self.valid, self.key = cost, gain, nparams, valid, key
        # Greedy blocks: along each row (one lowest layer) cost and gain never decrease, and an
        # invalid entry repeats the set before it, so "the best set of a row under a budget" is a
        # binary search.
        self.monotone = monotone


class _Family:
    """Every candidate layer set, a block at a time, never materialized as one set matrix.

    The greedy family has L(L+1)/2 sets (for each lowest layer, prefixes of the layers above it
    in order of score per adapter FLOP); a block of lowest layers is evaluated at once by
    cumulative sums over a (block × L) matrix, and a set is rebuilt from its key only when it is
    reported.
    """

    BLOCK = 128

    def __init__(self, col, adapter, params_l, backward, forward, full, total, exact: bool):
        self.col, self.adapter, self.params_l, self.backward = col, adapter, params_l, backward
        self.forward, self.full, self.total, self.exact = forward, full, total, exact
        self.by_ratio = np.argsort(-(col / np.maximum(adapter, 1e-30)), kind="stable")
        self.extra: np.ndarray | None = None

    def _gain(self, g):
        return g / self.total if self.total > 0 else np.zeros_like(g, dtype=float)

    def with_extra(self, ok: np.ndarray) -> _Chunk:
        self.extra = np.nonzero(ok)[0]
        lo = int(self.extra[0])
        return _Chunk(np.array([(self.forward + self.backward[lo] + ok @ self.adapter) / self.full]),
                      self._gain(np.array([float(ok @ self.col)])), np.array([int(ok @ self.params_l)]),
                      np.ones(1, dtype=bool), lambda i: (-1, 0))

    def chunks(self):
        L = self.col.size
        if self.exact:
            codes = np.arange(1, 2 ** L, dtype=np.int64)
            cand = ((codes[:, None] >> np.arange(L)) & 1).astype(bool)
            lowest = cand.argmax(axis=1)  # layers are sorted, so the first True is ℓ_min
            yield _Chunk((self.forward + self.backward[lowest] + cand @ self.adapter) / self.full,
                         self._gain(cand @ self.col), cand @ self.params_l, np.ones(codes.size, dtype=bool),
                         lambda i: (int(codes[i]), -1))
            return
        order = self.by_ratio
        a_o, c_o, p_o = self.adapter[order], self.col[order], self.params_l[order]
        for start in range(0, L, self.BLOCK):
            lows = np.arange(start, min(L, start + self.BLOCK))
            above = order[None, :] > lows[:, None]                      # B × L: which ordered layers count
            # Column 0 is {ℓ_min} alone; column j + 1 adds the ordered layers up to position j.
            valid = np.concatenate([np.ones((lows.size, 1), dtype=bool), above], axis=1)
            cum = lambda v, own: np.concatenate(  # noqa: E731
                [own[:, None], own[:, None] + np.cumsum(np.where(above, v[None, :], 0), axis=1)], axis=1)
            cost = (self.forward + self.backward[lows][:, None] + cum(a_o, self.adapter[lows])) / self.full
            counts = np.concatenate([np.zeros((lows.size, 1), dtype=np.int64), np.cumsum(above, axis=1)], axis=1)
            width = L + 1
            yield _Chunk(cost, self._gain(cum(c_o, self.col[lows])), cum(p_o, self.params_l[lows]), valid,
                         lambda i, lows=lows, counts=counts, width=width: (int(lows[i // width]),
                                                                           int(counts.flat[i])),
                         monotone=True)

    def members(self, key) -> list[int]:
        first, second = key
        if first == -1:
            return [int(i) for i in self.extra]
        if second == -1:
            return [i for i in range(self.col.size) if first >> i & 1]
        above = self.by_ratio[self.by_ratio > first][:second]
        return sorted([first, *map(int, above)])


def _row_search(values: np.ndarray, threshold: float, *, last_le: bool) -> np.ndarray:
    """Per row of a monotone block: the last entry ≤ threshold, or the first ≥ it (flat indices; rows
    without one are left out). One binary search over the rows laid end to end."""
    B, W = values.shape
    v = values.astype(np.float64)
    span = float(v.max() - min(float(v.min()), threshold)) + 1.0
    offsets = (np.arange(B) * span)[:, None]
    shifted = (v - min(float(v.min()), threshold) + offsets).ravel()
    target = threshold - min(float(v.min()), threshold) + offsets[:, 0]
    rows = np.arange(B)
    if last_le:
        idx = np.searchsorted(shifted, target, side="right") - 1
        return idx[idx >= rows * W]
    idx = np.searchsorted(shifted, target, side="left")
    return idx[idx < (rows + 1) * W]


class _Front:
    """The gain-vs-cost Pareto front over chunks (non-dominated: nothing cheaper is as good).

    Exact (every non-dominated set) for the exact enumeration. For the greedy family, whose
    front can hold thousands of sets of thousands of layers, it is the best set at each of
    ``FRONT_LEVELS`` budgets evenly spread between the cheapest set and full LoRA: exact at
    those budgets, and bounded in size.
    """

    def __init__(self, levels: np.ndarray | None):
        self.levels = levels
        if levels is None:
            self.cost = np.empty(0)
            self.gain = np.empty(0)
            self.nparams = np.empty(0, dtype=np.int64)
            self.keys: list = []
        else:
            n = levels.size
            self.cost, self.gain = np.full(n, np.inf), np.full(n, -np.inf)
            self.nparams = np.zeros(n, dtype=np.int64)
            self.keys = [None] * n

    def add(self, chunk: _Chunk) -> None:
        if self.levels is not None and chunk.monotone:
            self._add_rows(chunk)
            return
        valid = np.nonzero(chunk.valid.ravel())[0]
        cost, gain = chunk.cost.ravel()[valid], chunk.gain.ravel()[valid]
        if self.levels is not None:
            # The top-k set a count budget adds: file it under the first level it fits.
            for i in valid:
                self._offer(int(np.searchsorted(self.levels, chunk.cost.flat[i] - 1e-12)), chunk, int(i))
            return
        costs = np.concatenate([self.cost, cost])
        gains = np.concatenate([self.gain, gain])
        nparams = np.concatenate([self.nparams, chunk.nparams.ravel()[valid]])
        keys = self.keys + [chunk.key(int(i)) for i in valid]
        order = np.lexsort((-gains, costs))  # cheapest first; at equal cost the best first
        g = gains[order]
        running = np.concatenate(([-np.inf], np.maximum.accumulate(g)[:-1]))
        front = order[g > running + 1e-12]
        self.cost, self.gain, self.nparams = costs[front], gains[front], nparams[front]
        self.keys = [keys[i] for i in front]

    def _add_rows(self, chunk: _Chunk) -> None:
        """Best set per level from monotone rows: one binary search per (row, level), no sort."""
        B, W = chunk.cost.shape
        span = float(chunk.cost.max()) + 1.0
        offsets = np.arange(B)[:, None] * span
        flat = np.searchsorted((chunk.cost + offsets).ravel(), (self.levels[None, :] + 1e-12 + offsets).ravel(),
                               side="right").reshape(B, -1) - 1                # last set with cost ≤ level
        rows = np.arange(B)[:, None]
        fits = flat >= rows * W                                               # the row has one under it
        flat = np.where(fits, flat, rows * W)
        gain = np.where(fits, chunk.gain.ravel()[flat], -np.inf)
        cost = np.where(fits, chunk.cost.ravel()[flat], np.inf)
        best_row = np.lexsort((cost, -gain), axis=0)[0] if B > 1 else np.zeros(self.levels.size, dtype=np.int64)
        for level, r in enumerate(best_row):
            if np.isfinite(cost[r, level]):
                self._offer(level, chunk, int(flat[r, level]))

    def _offer(self, level: int, chunk: _Chunk, i: int) -> None:
        """Keep set i of ``chunk`` as the best under budget ``level`` if it is (more gain; then cheaper)."""
        if level >= self.levels.size:
            return
        g, c = chunk.gain.flat[i], chunk.cost.flat[i]
        if g > self.gain[level] + 1e-12 or (g >= self.gain[level] - 1e-12 and c < self.cost[level]):
            self.cost[level], self.gain[level] = c, g
            self.nparams[level], self.keys[level] = chunk.nparams.flat[i], chunk.key(i)

    def to_list(self, family: _Family, layer_ids: list[int]) -> list[dict]:
        points = [(c, g, n, k) for c, g, n, k in zip(self.cost, self.gain, self.nparams, self.keys) if k is not None]
        if self.levels is not None:
            # A set that is best under a budget can still be beaten by a cheaper one: keep the front.
            points.sort(key=lambda p: (p[0], -p[1]))
            kept, best = [], -np.inf
            for p in points:
                if p[1] > best + 1e-12:
                    kept.append(p)
                    best = p[1]
            points = kept
        return [{"layers": [layer_ids[j] for j in family.members(k)], "cost": float(c), "gain_fraction": float(g),
                 "params": int(n)} for c, g, n, k in points]


def place(card: "LayerCard", *, layers: int | None = None, budget: float | None = None, params: int | None = None,
          objective: str = "gain", target_gain: float | None = None, by: str = "score", rank: int | None = None,
          rank_target: float | None = None, exact_max_layers: int = EXACT_MAX_LAYERS, coupled: bool = False) -> Plan:
    """Choose the layers to adapt.

    ``objective="gain"`` maximizes Σ score_ℓ under exactly one budget: ``layers`` (count),
    ``budget`` (training cost as a fraction of full-layer LoRA) or ``params`` (adapter
    parameters). ``objective="cost"`` minimizes the modelled cost subject to reaching
    ``target_gain`` (a fraction of the all-layer score). ``by`` names the layer column to
    maximize (default the card's score; baselines such as ``grad_norm`` for comparison).
    ``coupled=True`` (with ``layers=k``, on a card profiled with ``coupling=True``) picks the
    layers greedily by the coupled joint gain of ``layerprof.coupling`` instead of the sum.
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
    family = _Family(col, adapter, params_l, backward, model.forward, full, total, exact)

    constraint: dict
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
            else:
                # Additive gain under a count budget: the top-k scores are exactly optimal.
                ok[np.argsort(-ranked, kind="stable")[:layers]] = True
            extra = family.with_extra(ok)
            feasible = lambda c: np.zeros(c.cost.shape, dtype=bool)  # noqa: E731  (only the top-k set)
            row_search = None
        elif budget is not None:
            if isinstance(budget, bool) or not (isinstance(budget, (int, float)) and math.isfinite(budget)
                                                and budget > 0):
                raise PlacementError(f"budget is a fraction of full-layer LoRA training cost (> 0), got {budget!r}")
            feasible = lambda c: c.cost <= budget + 1e-12  # noqa: E731
            row_search = lambda c: _row_search(c.cost, budget + 1e-12, last_le=True)  # noqa: E731
        else:
            if isinstance(params, bool) or not (isinstance(params, (int, np.integer)) and params > 0):
                raise PlacementError(f"params must be a positive int (adapter parameters), got {params!r}")
            feasible = lambda c: c.nparams <= params  # noqa: E731
            row_search = lambda c: _row_search(c.nparams, params, last_le=True)  # noqa: E731
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
        row_search = lambda c: _row_search(c.gain, target_gain - 1e-12, last_le=False)  # noqa: E731
        # Lowest cost; among equal costs the highest gain.
        better = lambda g, c, best: c < best[1] - 1e-12 or (c <= best[1] + 1e-12 and g > best[0])  # noqa: E731
        key = lambda c: -c.cost  # noqa: E731
    else:
        raise PlacementError(f"objective must be 'gain' or 'cost', got {objective!r}")

    cheapest = float((model.forward + backward + adapter).min() / full)  # the cheapest single layer
    front = _Front(None if exact else np.linspace(cheapest, 1.0, FRONT_LEVELS))
    best: tuple = (-np.inf, np.inf, None, -1)  # (gain, cost, chunk, flat index)
    for chunk in itertools.chain([extra] if extra is not None else [], family.chunks()):
        front.add(chunk)
        if chunk.monotone:
            flat = row_search(chunk) if row_search is not None else np.empty(0, dtype=np.int64)
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
    )


def _coupled_pick(card: "LayerCard", col: np.ndarray, layer_ids: list[int], k: int) -> list[int]:
    from .coupling import coupled_greedy

    coupling = card.meta.get("coupling")
    if not coupling:
        raise PlacementError("coupled=True needs a card profiled with coupling=True (lp.profile(..., coupling=True))")
    rho = np.asarray(coupling["rho"])
    order = [coupling["layers"].index(l) for l in layer_ids]
    return coupled_greedy(dict(zip(layer_ids, col)), layer_ids, rho[np.ix_(order, order)], k)


def uniform_k(layers: list[int], k: int) -> list[int]:
    """k layers evenly spread over depth: the centres of k equal bins."""
    L = len(layers)
    return sorted({layers[min(L - 1, int((i + 0.5) * L / k))] for i in range(k)})


def middle_k(layers: list[int], k: int) -> list[int]:
    """The k layers around the middle of the stack."""
    start = (len(layers) - k) // 2
    return layers[start:start + k]


def pareto_front(cand: np.ndarray, cost: np.ndarray, gain: np.ndarray, nparams: np.ndarray,
                 layer_ids: list[int]) -> list[dict]:
    """Non-dominated (cost ↓, gain ↑) candidates, cheapest first."""
    order = np.lexsort((-gain, cost))
    front, best = [], -np.inf
    for i in order:
        if gain[i] > best + 1e-12:
            best = gain[i]
            front.append({"layers": [layer_ids[j] for j in np.nonzero(cand[i])[0]], "cost": float(cost[i]),
                          "gain_fraction": float(gain[i]), "params": int(nparams[i])})
    return front

"""The search behind ``place``: every candidate layer set, a block at a time, and the best per budget.

Exact enumeration (every subset) for few layers; otherwise the greedy family — for each lowest
layer ℓ_min, ℓ_min plus the n best layers above it by score per adapter FLOP — evaluated in
blocks by cumulative sums, never materialized as one set matrix, so 10,000 layers fit in
seconds and a few hundred MiB (bench/bench_place.py). ``Front`` keeps the best set at each of
``FRONT_LEVELS`` budgets: the Pareto front ``Plan.front`` reports.
"""
from __future__ import annotations

import numpy as np

# Gains and costs are float sums taken in different orders by different searches: values closer than
# this are the same value (a tie), so that budgets met exactly count as met and ties break alike.
TIE = 1e-12
FRONT_LEVELS = 256  # the greedy family's front: the best set at this many budgets spread over cost


class Chunk:
    """Candidate layer sets as same-shaped arrays: cost, gain fraction, adapter parameters, validity.

    ``key(i)`` names set i (flat index) for ``Family.members``: (bitmask, −1) in the exact
    enumeration; (ℓ_min, n) in the greedy family, the lowest layer plus the n best-ratio layers
    above it; (−1, 0) for the one extra set a count budget adds (its top-k).
    """

    def __init__(self, cost, gain, nparams, valid, key, monotone: bool = False):
        self.cost, self.gain, self.nparams, self.valid, self.key = cost, gain, nparams, valid, key
        # Greedy blocks: along each row (one lowest layer) cost and gain never decrease, and an
        # invalid entry repeats the set before it, so "the best set of a row under a budget" is a
        # binary search.
        self.monotone = monotone


class Family:
    """Every candidate layer set, a block at a time, never materialized as one set matrix.

    The greedy family has L(L+1)/2 sets (for each lowest layer, prefixes of the layers above it
    in order of score per adapter FLOP); a block of lowest layers is evaluated at once by
    cumulative sums over a (block × L) matrix, and a set is rebuilt from its key only when it is
    reported.
    """

    BLOCK = 128

    def __init__(self, col, adapter, params_l, backward, *, forward, full, total, exact: bool):
        self.col, self.adapter, self.params_l, self.backward = col, adapter, params_l, backward
        self.forward, self.full, self.total, self.exact = forward, full, total, exact
        self.by_ratio = np.argsort(-(col / np.maximum(adapter, 1e-30)), kind="stable")
        self.extra: np.ndarray | None = None

    def _gain(self, g):
        return g / self.total if self.total > 0 else np.zeros_like(g, dtype=float)

    def with_extra(self, ok: np.ndarray) -> Chunk:
        self.extra = np.nonzero(ok)[0]
        lo = int(self.extra[0])
        return Chunk(np.array([(self.forward + self.backward[lo] + ok @ self.adapter) / self.full]),
                      self._gain(np.array([float(ok @ self.col)])), np.array([int(ok @ self.params_l)]),
                      np.ones(1, dtype=bool), lambda i: (-1, 0))

    def chunks(self):
        L = self.col.size
        if self.exact:
            codes = np.arange(1, 2 ** L, dtype=np.int64)
            cand = ((codes[:, None] >> np.arange(L)) & 1).astype(bool)
            lowest = cand.argmax(axis=1)  # layers are sorted, so the first True is ℓ_min
            yield Chunk((self.forward + self.backward[lowest] + cand @ self.adapter) / self.full,
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
            yield Chunk(cost, self._gain(cum(c_o, self.col[lows])), cum(p_o, self.params_l[lows]), valid,
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


def row_search(values: np.ndarray, threshold: float, *, last_le: bool) -> np.ndarray:
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


class Front:
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

    def add(self, chunk: Chunk) -> None:
        if self.levels is not None and chunk.monotone:
            self._add_rows(chunk)
            return
        valid = np.nonzero(chunk.valid.ravel())[0]
        cost, gain = chunk.cost.ravel()[valid], chunk.gain.ravel()[valid]
        if self.levels is not None:
            # The top-k set a count budget adds: file it under the first level it fits.
            for i in valid:
                self._offer(int(np.searchsorted(self.levels, chunk.cost.flat[i] - TIE)), chunk, int(i))
            return
        costs = np.concatenate([self.cost, cost])
        gains = np.concatenate([self.gain, gain])
        nparams = np.concatenate([self.nparams, chunk.nparams.ravel()[valid]])
        keys = self.keys + [chunk.key(int(i)) for i in valid]
        order = np.lexsort((-gains, costs))  # cheapest first; at equal cost the best first
        g = gains[order]
        running = np.concatenate(([-np.inf], np.maximum.accumulate(g)[:-1]))
        front = order[g > running + TIE]
        self.cost, self.gain, self.nparams = costs[front], gains[front], nparams[front]
        self.keys = [keys[i] for i in front]

    def _add_rows(self, chunk: Chunk) -> None:
        """Best set per level from monotone rows: one binary search per (row, level), no sort."""
        B, W = chunk.cost.shape
        span = float(chunk.cost.max()) + 1.0
        offsets = np.arange(B)[:, None] * span
        flat = np.searchsorted((chunk.cost + offsets).ravel(), (self.levels[None, :] + TIE + offsets).ravel(),
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

    def _offer(self, level: int, chunk: Chunk, i: int) -> None:
        """Keep set i of ``chunk`` as the best under budget ``level`` if it is (more gain; then cheaper)."""
        if level >= self.levels.size:
            return
        g, c = chunk.gain.flat[i], chunk.cost.flat[i]
        if g > self.gain[level] + TIE or (g >= self.gain[level] - TIE and c < self.cost[level]):
            self.cost[level], self.gain[level] = c, g
            self.nparams[level], self.keys[level] = chunk.nparams.flat[i], chunk.key(i)

    def to_list(self, family: Family, layer_ids: list[int]) -> list[dict]:
        points = [(c, g, n, k) for c, g, n, k in zip(self.cost, self.gain, self.nparams, self.keys) if k is not None]
        if self.levels is not None:
            # A set that is best under a budget can still be beaten by a cheaper one: keep the front.
            points.sort(key=lambda p: (p[0], -p[1]))
            kept, best = [], -np.inf
            for p in points:
                if p[1] > best + TIE:
                    kept.append(p)
                    best = p[1]
            points = kept
        return [{"layers": [layer_ids[j] for j in family.members(k)], "cost": float(c), "gain_fraction": float(g),
                 "params": int(n)} for c, g, n, k in points]

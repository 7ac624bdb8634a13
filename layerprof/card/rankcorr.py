"""Rank correlations (Kendall τ-b, Spearman ρ) shared by the card, compare and the study. A leaf."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Kendall τ-b between two score lists (ties counted as neither concordant nor discordant)."""
    n = len(a)
    if n < 2:
        return None
    conc = disc = ties_a = ties_b = 0
    for i in range(n):
        for j in range(i + 1, n):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                conc += 1
            else:
                disc += 1
    denom = math.sqrt((conc + disc + ties_a) * (conc + disc + ties_b))
    return (conc - disc) / denom if denom else None


def average_ranks(v: Sequence[float]) -> np.ndarray:
    """0-based ranks of ``v``, ties given the mean of the positions they span."""
    v = np.asarray(v, dtype=float)
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v))
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
            j += 1
        r[order[i:j + 1]] = (i + j) / 2.0
        i = j + 1
    return r


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties); None below 3 items or for a constant list."""
    if len(a) < 3:
        return None
    ra, rb = average_ranks(a), average_ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])

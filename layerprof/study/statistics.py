"""The study's statistics: bootstrap intervals of a Spearman correlation over seeds, the seeds' own
spread and ceiling, and the bound a budget-blind ranking can reach when two budgets disagree."""
from __future__ import annotations

import numpy as np

from ..card.rankcorr import spearman


# ------------------------------------------------------------------ analysis
def bootstrap_spearman(score: list[float], gains: list[list[float]], reps: int = 2000, seed: int = 0
                       ) -> tuple[float | None, float | None, float | None]:
    """Spearman(score, mean gain per layer) and a 95% bootstrap interval over the seed runs.

    Each replicate resamples, per layer, its seed runs with replacement (the measurement noise
    of a LoRA run), so the interval says how much the correlation could move with other seeds.
    """
    mean = [float(np.mean(g)) for g in gains]
    rho = spearman(score, mean)
    if rho is None:
        return None, None, None
    rng = np.random.default_rng(seed)
    reps_out = []
    for _ in range(reps):
        m = [float(np.mean(rng.choice(g, size=len(g), replace=True))) for g in gains]
        r = spearman(score, m)
        if r is not None:
            reps_out.append(r)
    if not reps_out:
        return rho, None, None
    lo, hi = np.percentile(reps_out, [2.5, 97.5])
    return rho, float(lo), float(hi)


def seed_ceiling(gains: list[list[float]]) -> float | None:
    """How well the layers' seed-mean gains can agree with their expected gains: the noise ceiling on
    Spearman(any score, measured gains).

    With r the mean Spearman between two seeds' single-layer gains and k seeds per layer, the
    Spearman–Brown reliability of the k-seed mean is k·r / (1 + (k − 1)·r), and no score, not even the
    expected gains themselves, correlates with the measured means better than its square root (in
    expectation). None with fewer than two seeds for every layer or r ≤ 0 (then nothing is reliable).
    """
    k = min((len(g) for g in gains), default=0)
    if k < 2:
        return None
    seeds = [[float(g[i]) for g in gains] for i in range(k)]
    pairs = [spearman(seeds[i], seeds[j]) for i in range(k) for j in range(i + 1, k)]
    pairs = [p for p in pairs if p is not None]
    r = float(np.mean(pairs)) if pairs else 0.0
    if r <= 0:
        return None
    return float(np.sqrt(k * r / (1 + (k - 1) * r)))


def seed_spread(gains: list[list[float]]) -> tuple[float, float]:
    """(range of the layers' mean gains, pooled seed std of one run)."""
    means = [float(np.mean(g)) for g in gains]
    pooled = float(np.sqrt(np.mean([np.var(g, ddof=1) for g in gains if len(g) > 1]))) if any(
        len(g) > 1 for g in gains) else float("nan")
    return max(means) - min(means), pooled


def shared_ranking_bound(measured_agreement: float, score_agreement: float = 1.0) -> float:
    """The best min(ρ_short, ρ_long) a score can reach, given how the two rankings agree.

    Spearman is the Pearson correlation of rank vectors: the cosine of the angle between the
    centred rank vectors. If the measured rankings at two budgets are at angle θ = arccos(ρ_m)
    and the score's own rankings at those budgets are at angle φ = arccos(ρ_s) (φ = 0 for a
    score blind to the budget), the triangle inequality on angles gives
    min(ρ_short, ρ_long) ≤ cos(max(θ − φ, 0) / 2).
    """
    theta = float(np.arccos(np.clip(measured_agreement, -1.0, 1.0)))
    phi = float(np.arccos(np.clip(score_agreement, -1.0, 1.0)))
    return float(np.cos(max(theta - phi, 0.0) / 2))

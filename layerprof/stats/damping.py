"""The damping rule, written once: λ = δ · tr Σ / d (δ relative to the mean eigenvalue of Σ). A leaf.

Every solve with Σ + λI (finalize's columns, coupling's corrections, the simulation's
directions) uses this λ, so that the card's columns and the predictions built on them agree.
"""
from __future__ import annotations

MAX_DAMPING = 1e3  # relative damping δ beyond this is no longer a regularizer (1e308 overflowed to NaN)


def ridge(damping: float, trace: float, d: int) -> float:
    """λ for relative damping ``damping`` of a d × d covariance with trace ``trace``."""
    return damping * trace / d

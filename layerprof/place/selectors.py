"""Depth rules that pick k of L layers: the bins of stratified-k, uniform-k and middle-k.

``stratified_k`` is the default placement's rule (docs/decisions/stratified-bins.md); ``uniform_k`` and
``middle_k`` are the depth-only baselines a practitioner would try, kept beside it so that a study
compares like with like.
"""
from __future__ import annotations


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

"""Build the card: finalized columns plus the metadata that says what was profiled, how and when.

``build_card`` reads the accumulated statistics (it changes nothing in them: a Profiler may
go on sweeping after a card) and the model's weights and heads, calls ``finalize`` and
assembles ``LayerCard.meta``: the model's identity, the data's fingerprint, the settings of
the ``ProfileConfig``, versions, sweep timing and memory, skipped batches, split-half
stability, heads (for the cost model) and calls per module.
"""
from __future__ import annotations

import hashlib
import math
import sys
import time
import warnings
from typing import Mapping

import torch
from torch import nn

from ..stats.accumulate import Accumulator
from .config import ProfileConfig
from ..utils.errors import ProfileError
from ..stats.finalize import finalize
from ..stats.linalg import blas_threads, library
from ..utils.memory import peak_kind, process_peak, solve_threads, threads
from ..card.cost import attention_shape, cost_model
from ..card.scores import DEFAULT_SCORE, FALLBACK_SCORES, RANK_CROSS_SCORES, apply_score
from ..model.targets import Target, linear_kind, modules_by_name, output_head_names


def build_card(acc: Accumulator, targets: Mapping[str, Target], model: nn.Module, config: ProfileConfig, *,
               backend: str, rows: int, data_hash: str, skipped: list[dict], unmasked: list[str],
               sweep_seconds: float, device: torch.device, coupling: dict | None = None,
               seq_len: float | None = None):
    """The ``LayerCard`` of one finished sweep (global sums under torch.distributed)."""
    from ..card.card import LayerCard
    from ..stats.reduce import world

    fired = {n for n in targets if acc.total(n) is not None}
    if not fired:
        reasons = "; ".join(f"batch {s['batch']}: {s['reason']}" for s in skipped[:5])
        raise ProfileError(
            "no statistics were collected: " + (f"every batch was skipped ({reasons})" if skipped else
            "no backward pass reached a target module; run loss.backward() inside the "
            "Profiler block (not under torch.no_grad()), or check targets="))
    unfired = sorted(set(targets) - fired)
    if unfired:
        warnings.warn(f"{len(unfired)} target module(s) never received a gradient and are not on the card: "
                      f"{', '.join(unfired[:8])}{' …' if len(unfired) > 8 else ''}", stacklevel=3)
    modules = modules_by_name(model, fired)
    weights = {n: linear_kind(m).weight(modules[n]) for n, m in modules.items()}
    heads = output_heads(model)
    attention = attention_shape(model, seq_len)
    score = config.score or DEFAULT_SCORE
    rank_cross = config.rank_cross if config.rank_cross is not None else score in RANK_CROSS_SCORES
    t_fin = time.perf_counter()
    # The float64 solves run on the CPU unless the statistics live on a GPU; on a busy CPU one thread.
    n_threads = solve_threads() if device.type == "cpu" else torch.get_num_threads()
    with threads(n_threads), blas_threads(n_threads):
        modules_rows, layer_rows, stability = finalize(
            acc, {n: targets[n] for n in sorted(fired, key=list(targets).index)},
            weights, rank=config.rank, damping=config.damping, rank_cross=rank_cross)
    finalize_s = time.perf_counter() - t_fin
    # The card's two derived columns, applied here once: each layer's cost, and the score placement maximizes.
    costs = cost_model(modules_rows, heads, attention)
    for row in layer_rows:
        row["cost"] = costs.cost([row["layer"]], config.rank).fraction
    apply_score(layer_rows, score)
    score, score_fallback = score_or_fallback(layer_rows, score, acc.batches)
    meta = {
        "model": model_identity(model),
        "data": {"rows": rows, "batches": acc.batches, "hash": data_hash, "world_size": world()[1]},
        "settings": {"rank": config.rank, "damping": config.damping, "backend": backend,
                     "backend_requested": config.backend,
                     "dtype": str(config.dtype).replace("torch.", ""),
                     "targets": config.targets, "score": score, "score_default": config.score is None,
                     "score_fallback": score_fallback, "rank_cross": rank_cross,
                     "sketch": config.sketch,
                     "sketched_modules": sum(acc.sketched(n) for n in fired)},
        "versions": versions(),
        "sweep": {"seconds": sweep_seconds, "finalize_seconds": finalize_s, "finalize_threads": n_threads,
                  "finalize_lapack": library(device),
                  "rows_per_second": rows / sweep_seconds if sweep_seconds > 0 else None,
                  "peak_memory_bytes": process_peak(device),
                  "statistics_bytes": acc.statistics_bytes(),
                  "gram_updates": acc.gram_updates,
                  "peak_memory_kind": peak_kind(device), "device": str(device)},
        "skipped": skipped,
        "stability": stability,
        "unfired": unfired,
        "unmasked": unmasked,
        "heads": heads,
        "attention": attention,
        "calls": {n: acc.calls.get(n, 0) for n in fired},
    }
    if coupling is not None:
        meta["coupling"] = coupling
    return LayerCard(modules=modules_rows, layers=layer_rows, meta=meta)


def output_heads(model: nn.Module) -> list[dict]:
    """The model's output head(s) (name, d_in, d_out): their FLOPs are in every training step."""
    heads = []
    for name, module in modules_by_name(model, output_head_names(model)).items():
        d_in, d_out = linear_kind(module).dims(module)
        heads.append({"name": name, "d_in": d_in, "d_out": d_out})
    return heads


def model_identity(model: nn.Module) -> dict:
    """Class, config fingerprint, parameter count, hub name and dtype: enough to tell two models apart."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        text = config.to_json_string(use_diff=False)
    else:
        text = repr(model)
    return {
        "class": type(model).__name__,
        "config_hash": hashlib.sha256(text.encode()).hexdigest()[:16],
        "parameters": sum(p.numel() for p in model.parameters()),
        "name_or_path": getattr(config, "_name_or_path", None) or None,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", "") if any(True for _ in model.parameters())
        else None,
    }


def versions() -> dict:
    from .._version import __version__

    out = {"layerprof": __version__, "torch": torch.__version__, "python": sys.version.split()[0]}
    for pkg in ("transformers", "peft"):
        mod = sys.modules.get(pkg)
        if mod is not None:
            out[pkg] = getattr(mod, "__version__", None)
    return out


def score_or_fallback(layer_rows: list[dict], score: str, batches: int) -> tuple[str, str | None]:
    """The score the card places by, and why it is not ``score`` (None when it is).

    A cross-half score has no value where a module lacks one split half; its layers would be
    unrankable. Then every layer takes the score's naive counterpart (``FALLBACK_SCORES``), with a
    warning that names the fix, so the card stays placeable and says what it did."""
    if score not in FALLBACK_SCORES or all(math.isfinite(l["score"]) for l in layer_rows):
        return score, None
    fallback = FALLBACK_SCORES[score]
    why = ("one calibration batch: no split halves" if batches < 2 else
           "some module fired in only one split half (its layer has no cross-half estimate)")
    warnings.warn(f"layerprof: {why}, so {score!r} is unavailable; placing by {fallback!r} (its naive counterpart, "
                  "which counts sampling noise as signal). Profile two or more batches that reach every target "
                  "module to get the debiased score.", stacklevel=3)
    apply_score(layer_rows, fallback)
    return fallback, why

"""Scores: the per-layer number placement maximizes, its label, and the default choice.

A leaf: finalize writes the columns, ``apply_score`` turns one of them into each layer's
``score`` and ``rank``; placement, the report, the plots and the study read the names here.
"""
from __future__ import annotations

# The per-layer score placement maximizes (``profile(score=...)``). ρ² is the quadratic
# model's predicted gain (docs/method.md); the others are the candidates of the placement
# study (studies/v1/notebook.md), where ρ² ranked layers worst on the first tasks measured.
SCORES = {
    "resnorm2": lambda l: l["resnorm"] ** 2,
    "resnorm2_rank": lambda l: l["resnorm_rank"] ** 2,
    "resnorm2_over_noise": lambda l: l["resnorm"] ** 2 / l["noise_amp"] if l["noise_amp"] > 0 else 0.0,
    "resnorm2_rank_over_noise": lambda l: l["resnorm_rank"] ** 2 / l["noise_amp"] if l["noise_amp"] > 0 else 0.0,
    "energy": lambda l: l["energy"],
    # Rule 1: quadratic forms in the gradient estimated across the split halves (unbiased for
    # the signal, zero in expectation for noise; may be negative).
    "resnorm2_x": lambda l: _or_nan(l.get("resnorm2_x")),
    # The default's numerator without its noise bias: rank-r ρ² across the halves (may be negative).
    "resnorm2_rank_x_over_noise": lambda l: (_or_nan(l.get("resnorm2_rank_x")) / l["noise_amp"]
                                             if l["noise_amp"] > 0 else 0.0),
    "grad_norm2_x": lambda l: _or_nan(l.get("grad_norm2_x")),
    # Budget-aware predicted gains (nats per token of the mean batch loss) for the fine-tune in
    # meta.budget: simulated LoRA on the local quadratic model, scored held out (layerprof.predict.simulate),
    # and the loss-change allocation of a short full-LoRA warm-up (layerprof.predict.warmup).
    "sim_gain": lambda l: _or_nan(l.get("sim_gain")),
    "lca_gain": lambda l: _or_nan(l.get("lca_gain")),
}
SCORE_LABELS = {"resnorm2": "ρ²", "resnorm2_rank": "ρ(r)²", "resnorm2_over_noise": "ρ²/noise amp",
                "resnorm2_rank_over_noise": "ρ(r)²/noise amp",
                "energy": "activation energy tr Σ", "resnorm2_x": "ρ²× (cross-half)",
                "resnorm2_rank_x_over_noise": "ρ(r)²×/noise amp (cross-half)",
                "grad_norm2_x": "‖C‖²× (cross-half)", "sim_gain": "simulated LoRA gain",
                "lca_gain": "warm-up LCA gain"}
# Scores that need more than the sweep: the budget-aware columns are filled only when profile()
# is given a budget (and, for lca_gain, runs the warm-up).
BUDGET_SCORES = {"sim_gain": "simulate", "lca_gain": "warmup"}  # score -> the predictor that fills it
PREDICTORS = ("simulate", "warmup")
# Scores that need the cross-half rank-r ρ² (finalize computes it only when asked: two top-r subspaces
# per module, about +20% of finalize at d = 1024; ProfileConfig.rank_cross).
RANK_CROSS_SCORES = {"resnorm2_rank_x_over_noise"}

# The default placement score: ρ(r)² estimated across the split halves (its sampling noise does not count)
# over the noise amplification of the layer's inputs, placed stratified-k. Why, the evidence and what would
# change it: docs/decisions/default-score.md. ρ², ρ²×, energy and the budget-aware columns stay on the card.
DEFAULT_SCORE = "resnorm2_rank_x_over_noise"
# Without two split halves for every module (one calibration batch, or a module that fired in only one
# half) a cross-half score has no value for some layer: the card then places by its naive counterpart
# and says so (layerprof.pipeline.build).
FALLBACK_SCORES = {"resnorm2_rank_x_over_noise": "resnorm2_rank_over_noise"}


def _or_nan(v) -> float:
    return float("nan") if v is None else float(v)


def score_label(score: str) -> str:
    return SCORE_LABELS.get(score, score)


def rank_layers(layers: list[dict]) -> None:
    """Set each layer's ``rank`` (1 = highest score), in place."""
    order = sorted(range(len(layers)), key=lambda i: -layers[i]["score"])
    for position, i in enumerate(order, start=1):
        layers[i]["rank"] = position


def apply_score(layers: list[dict], score: str) -> None:
    """Set each layer's ``score`` from ``SCORES[score]`` and its ``rank``, in place."""
    for l in layers:
        l["score"] = float(SCORES[score](l))
    rank_layers(layers)

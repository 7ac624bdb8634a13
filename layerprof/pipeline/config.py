"""ProfileConfig: every setting of a sweep, with its help text, checked in one place.

In the style of PEFT's configs: one dataclass whose fields carry their help in
``metadata["help"]`` and whose ``__post_init__`` refuses bad values with a message that
names the fix. ``profile``, ``Profiler``, the CLI (its `card` options are checked against
these fields) and the Trainer callback all build one, so a setting is validated the same
way wherever it comes from::

    cfg = lp.ProfileConfig(rank=16, coupling=True, budget=lp.TrainingBudget(steps=300, lr=2e-4))
    card = lp.profile(model, batches, config=cfg)          # or lp.profile(model, batches, rank=16, ...)
    card = lp.profile(model, batches, config=cfg, rank=4)  # keyword overrides win over the config
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import torch

from ..card.budget import TrainingBudget, as_budget
from ..stats.damping import MAX_DAMPING
from ..utils.errors import ProfileError
from ..card.scores import BUDGET_SCORES, DEFAULT_SCORE, PREDICTORS, RANK_CROSS_SCORES, SCORES


@dataclass
class ProfileConfig:
    """Settings of one Layer Card sweep (and of the predictions that follow it)."""

    targets: str | list[str] | None = field(default=None, metadata={
        "help": "modules to profile: None = every linear layer in a repeated block; a regex on module names; "
                "or a list of names / name suffixes (e.g. ['q_proj', 'v_proj'])"})
    rank: int = field(default=8, metadata={"help": "LoRA rank r the card's rank columns and costs assume"})
    damping: float = field(default=1e-3, metadata={
        "help": f"relative damping δ: λ = δ·tr Σ / d_in (0 = exact pseudo-inverse; at most {MAX_DAMPING:g})"})
    score: str | None = field(default=None, metadata={
        "help": "per-layer score placement maximizes (layerprof.card.scores.SCORES); None = the placement study's "
                "default: ρ(r)²×/noise amp (the rank-r signal across the split halves over the inputs' noise "
                "amplification), placed stratified-k (the best layer of each of k equal depth bins)"})
    backend: str = field(default="auto", metadata={
        "help": "statistics backend: auto, torch, cpp, cuda or triton (`layerprof doctor` lists what runs here)"})
    dtype: torch.dtype = field(default=torch.float32, metadata={
        "help": "accumulator dtype of the statistics: torch.float32 or torch.float64"})
    max_tokens: int | None = field(default=None, metadata={
        "help": "stop after this many non-padding tokens (rows); None = every batch"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar on stderr"})
    rank_cross: bool | None = field(default=None, metadata={
        "help": "also compute the cross-half rank-r ρ² (resnorm2_rank_x: each split half's top-r singular subspace "
                "against the other half; about +20% finalize time at d = 1024); None = only when the score needs it"})
    coupling: bool | None = field(default=False, metadata={
        "help": "measure the layer coupling matrix for coupled=True placements and the report's coupling "
                "diagnostics (two extra forwards per layer on coupling_batches batches; the default placement "
                "does not need it); None = whenever the statistics are dense in one sweep, True = always "
                "(refused where they are not), False = never"})
    coupling_batches: int = field(default=2, metadata={"help": "batches the coupling matrix is measured on"})
    coupling_tokens: int | None = field(default=2048, metadata={
        "help": "at most this many non-padding tokens of those batches (whole sequences; rows for feature "
                "inputs); None = all. 2048 holds the placement study's two calibration batches whole"})
    sketch: int | str | None = field(default="auto", metadata={
        "help": "'auto' = dense unless it does not fit max_memory; None = always dense; k = keep CΩ with k "
                "Gaussian columns instead of C (memory O(d_in·k) per module)"})
    sketch_seed: int = field(default=0, metadata={"help": "seed of the sketch matrix Ω"})
    max_memory: int | None = field(default=None, metadata={
        "help": "bytes the statistics may use; None = 80% of the device's free memory"})
    budget: TrainingBudget | None = field(default=None, metadata={
        "help": "the fine-tune the placement is for (TrainingBudget or a dict of its fields); enables the "
                "budget-aware predicted gains"})
    predict: tuple[str, ...] | None = field(default=None, metadata={
        "help": "budget-aware predictors to run: 'simulate' and/or 'warmup'; None = both when there is a budget"})

    def __post_init__(self):
        if isinstance(self.rank, bool) or not (isinstance(self.rank, int) and self.rank >= 1):
            raise ProfileError(f"rank must be a positive int, got {self.rank!r}")
        if isinstance(self.damping, bool) or not (isinstance(self.damping, (int, float))
                                                  and 0 <= self.damping <= MAX_DAMPING):
            raise ProfileError(f"damping is relative to the mean eigenvalue of Σ: a number in [0, {MAX_DAMPING:g}], "
                               f"got {self.damping!r}")
        self.damping = float(self.damping)
        if self.dtype not in (torch.float32, torch.float64):
            raise ProfileError(f"statistics dtype must be torch.float32 or torch.float64, got {self.dtype}")
        if not isinstance(self.backend, str):
            raise ProfileError(f"backend must be a name (auto, torch, cpp, cuda, triton), got {self.backend!r}")
        if self.max_tokens is not None and (isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int)
                                            or self.max_tokens <= 0):
            raise ProfileError(f"max_tokens must be a positive int or None, got {self.max_tokens!r}")
        if self.coupling is not None and not isinstance(self.coupling, bool):
            raise ProfileError(f"coupling must be True, False or None (auto), got {self.coupling!r}")
        if isinstance(self.coupling_batches, bool) or not isinstance(self.coupling_batches, int) \
                or self.coupling_batches < 1:
            raise ProfileError(f"coupling_batches must be a positive int, got {self.coupling_batches!r}")
        if self.coupling_tokens is not None and (isinstance(self.coupling_tokens, bool)
                                                 or not isinstance(self.coupling_tokens, int)
                                                 or self.coupling_tokens < 1):
            raise ProfileError(f"coupling_tokens must be a positive int or None, got {self.coupling_tokens!r}")
        if self.sketch != "auto" and self.sketch is not None and (
                isinstance(self.sketch, bool) or not isinstance(self.sketch, int) or self.sketch < 1):
            raise ProfileError(f"sketch must be 'auto', None or a positive int, got {self.sketch!r}")
        if isinstance(self.sketch, int) and self.sketch < self.rank:
            raise ProfileError(f"sketch={self.sketch} is smaller than rank={self.rank}: ρ(r) needs at least r sketch "
                               f"columns; use sketch >= {self.rank} (a few times r is better)")
        if self.max_memory is not None:
            if isinstance(self.max_memory, bool) or not isinstance(self.max_memory, (int, float)) \
                    or not self.max_memory >= 1:
                raise ProfileError(f"max_memory is bytes: a positive number or None, got {self.max_memory!r}")
            self.max_memory = int(self.max_memory)
        if self.targets is not None and not isinstance(self.targets, str):
            self.targets = list(self.targets)
        try:
            self.budget = as_budget(self.budget)
        except ValueError as e:
            raise ProfileError(str(e)) from None
        self.predict = _predictors(self.predict, self.budget)
        if self.score is not None and self.score not in SCORES:
            raise ProfileError(f"score must be one of {', '.join(SCORES)}, got {self.score!r}")
        if self.score in BUDGET_SCORES and BUDGET_SCORES[self.score] not in self.predict:
            raise ProfileError(f"score={self.score!r} is a budget-aware prediction: pass budget=TrainingBudget("
                               f"steps=..., lr=..., r=..., lora_alpha=...) (and keep {self.score!r}'s predictor in "
                               "predict=)")
        if self.rank_cross not in (None, True, False):
            raise ProfileError(f"rank_cross must be True, False or None (when the score needs it), got {self.rank_cross!r}")
        if self.rank_cross is False and (self.score or DEFAULT_SCORE) in RANK_CROSS_SCORES:
            raise ProfileError(f"rank_cross=False, but the score {(self.score or DEFAULT_SCORE)!r} is made from that "
                               "column; leave rank_cross unset, or place by another score (e.g. "
                               "score='resnorm2_rank_over_noise', its naive counterpart)")

    @classmethod
    def build(cls, config: "ProfileConfig | None" = None, overrides: Mapping[str, Any] | None = None
              ) -> "ProfileConfig":
        """``config`` (default: all defaults) with ``overrides`` applied, validated again."""
        overrides = dict(overrides or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ProfileError(f"unknown setting(s) {', '.join(unknown)}; ProfileConfig has: {', '.join(sorted(known))}")
        if config is None:
            return cls(**overrides)
        if not isinstance(config, cls):
            raise ProfileError(f"config must be a layerprof.ProfileConfig, got {type(config).__name__}")
        return dataclasses.replace(config, **overrides) if overrides else config

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["dtype"] = str(self.dtype).replace("torch.", "")
        out["budget"] = self.budget.to_dict() if self.budget is not None else None
        return out

    @staticmethod
    def help() -> dict[str, str]:
        """Field name -> help text (what the CLI and the docs show)."""
        return {f.name: f.metadata.get("help", "") for f in fields(ProfileConfig)}


def _predictors(predict, budget) -> tuple[str, ...]:
    if budget is None:
        if predict:
            raise ProfileError(f"predict={predict!r} needs budget= (the fine-tune to predict: steps, lr, r, ...)")
        return ()
    if predict is None:
        return PREDICTORS
    if isinstance(predict, str):
        predict = (predict,)
    bad = [p for p in predict if p not in PREDICTORS]
    if bad:
        raise ProfileError(f"predict must name some of {PREDICTORS}, got {bad}")
    return tuple(predict)

"""The fine-tune the user will run: the budget a budget-aware score is computed for.

Which layers gain most from LoRA depends on how long and how hard it trains: in the
placement study the best single layers at 60 steps were not the best at 300, and no
budget-blind score ranked well at both (docs/method.md). So the predicted-gain columns
(``layerprof.predict.simulate``, ``layerprof.predict.warmup``) take the optimizer settings and the step
count of the run they predict, and the card records them.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from ..utils.errors import BudgetError  # noqa: F401  (also importable from here)


@dataclass(frozen=True)
class TrainingBudget:
    """LoRA fine-tune settings, as the user will pass them to PEFT and AdamW."""

    steps: int = field(default=100, metadata={"help": "optimizer steps of the fine-tune"})
    lr: float = field(default=2e-4, metadata={"help": "AdamW learning rate"})
    r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (the adapter is scaled by alpha / r)"})
    batch_rows: int | None = field(default=None, metadata={
        "help": "non-padding tokens per training batch; None = the calibration batches' mean (sets the "
                "per-step gradient noise of the simulation)"})
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={"help": "AdamW betas"})
    eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (PEFT's LoRA default is 0)"})
    warmup_fraction: float = field(default=0.1, metadata={
        "help": "share of `steps` the warm-up score trains full LoRA for (layerprof.predict.warmup)"})

    def __post_init__(self):
        def bad(name, want):
            raise BudgetError(f"TrainingBudget.{name} must be {want}, got {getattr(self, name)!r}")

        if not _is_int(self.steps) or self.steps < 1:
            bad("steps", "an int >= 1")
        if not _is_int(self.r) or self.r < 1:
            bad("r", "an int >= 1")
        for name in ("lr", "lora_alpha", "eps"):
            if not _is_real(getattr(self, name)) or getattr(self, name) <= 0:
                bad(name, "a finite number > 0")
        if not _is_real(self.weight_decay) or self.weight_decay < 0:
            bad("weight_decay", "a finite number >= 0")
        if self.batch_rows is not None and (not _is_int(self.batch_rows) or self.batch_rows < 1):
            bad("batch_rows", "None or an int >= 1")
        if not _is_real(self.warmup_fraction) or not 0 < self.warmup_fraction <= 1:
            bad("warmup_fraction", "a number in (0, 1]")
        betas = tuple(self.betas) if isinstance(self.betas, (tuple, list)) else None
        if betas is None or len(betas) != 2 or not all(_is_real(b) and 0 <= b < 1 for b in betas):
            bad("betas", "two numbers in [0, 1)")
        object.__setattr__(self, "betas", (float(betas[0]), float(betas[1])))

    @property
    def scale(self) -> float:
        """PEFT's adapter scale α / r."""
        return self.lora_alpha / self.r

    @property
    def warmup_steps(self) -> int:
        return max(1, math.ceil(self.warmup_fraction * self.steps))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "TrainingBudget":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BudgetError(f"unknown training-budget field(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if k == "betas" else v for k, v in data.items()})


def as_budget(value) -> TrainingBudget | None:
    """None, a ``TrainingBudget`` or a dict of its fields -> ``TrainingBudget`` (or None)."""
    if value is None or isinstance(value, TrainingBudget):
        return value
    if isinstance(value, dict):
        return TrainingBudget.from_dict(value)
    raise BudgetError(f"budget must be a TrainingBudget, a dict of its fields or None, got {type(value).__name__}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

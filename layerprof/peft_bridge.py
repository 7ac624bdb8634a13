"""Plan → ``peft.LoraConfig`` that ``peft.get_peft_model`` accepts unchanged.

Modules are named explicitly (their full qualified names), so the config adapts
exactly ``plan.modules`` and nothing else. Where per-module ranks differ from ``r``,
``rank_pattern`` carries them and ``alpha_pattern`` keeps lora_alpha / r constant,
so every adapter has the same scaling. GPT-2 style Conv1D targets need
``fan_in_fan_out=True``.
"""
from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from .errors import ExportError

if TYPE_CHECKING:
    from .placement import Plan


def lora_config(plan: "Plan", r: int | None = None, lora_alpha: float | None = None, **kwargs):
    """Build a ``peft.LoraConfig`` for ``plan`` (extra keyword arguments pass through)."""
    try:
        from peft import LoraConfig
    except ImportError as e:  # pragma: no cover - peft is a dependency
        raise ImportError("plan.lora_config needs peft: pip install peft") from e
    for key in ("target_modules", "layers_to_transform", "rank_pattern", "alpha_pattern"):
        if key in kwargs:
            raise ExportError(f"{key} is set by the plan; choose layers with card.place(...) instead")
    if not plan.modules:
        raise ExportError("the plan adapts no modules")
    r = r if r is not None else max(plan.ranks.values())
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ExportError(f"r must be a positive int, got {r!r}")
    # A rank above min(d_in, d_out) adds parameters without adding rank: a config no one should train.
    narrow = min(((min(d), n) for n, d in plan.dims.items()), default=None)
    if narrow is not None and max([r, *plan.ranks.values()]) > narrow[0]:
        raise ExportError(f"rank {max([r, *plan.ranks.values()])} exceeds the smallest dimension ({narrow[0]}) of "
                          f"module {narrow[1]}; choose a rank ≤ {narrow[0]}")
    lora_alpha = lora_alpha if lora_alpha is not None else 2 * r
    if isinstance(lora_alpha, bool) or not isinstance(lora_alpha, (int, float)) or not (
            math.isfinite(lora_alpha) and lora_alpha > 0):
        raise ExportError(f"lora_alpha must be a finite number > 0, got {lora_alpha!r}")
    dropout = kwargs.get("lora_dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ExportError(f"lora_dropout must be a number in [0, 1), got {dropout!r}")
    # Anchored patterns: PEFT matches rank_pattern keys as a suffix regex, so escape the
    # dots and anchor at the start of the name to select this module alone.
    rank_pattern = {f"^{re.escape(n)}": rk for n, rk in plan.ranks.items() if rk != r}
    alpha_pattern = {k: lora_alpha * rk / r for k, rk in rank_pattern.items()}
    conv1d = {plan.kinds.get(n) for n in plan.modules} == {"conv1d"}
    if "conv1d" in set(plan.kinds.values()) and not conv1d:
        raise ExportError("the plan mixes Conv1D and Linear modules; PEFT's fan_in_fan_out is one flag per "
                         "config: make two placements with targets of one kind each")
    kwargs.setdefault("fan_in_fan_out", conv1d)
    return LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=list(plan.modules),
                      rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, **kwargs)

"""layerprof: which layers of a frozen transformer deserve a LoRA adapter.

One forward/backward sweep over calibration batches gives a Layer Card (per-module
resnorm, rank-r resnorm, activation energy, baselines, cost); the card places LoRA
adapters under a budget and writes the ``peft.LoraConfig``. See README.md and
docs/method.md. Importing layerprof never initializes CUDA.
"""
from __future__ import annotations

from ._version import __version__

from .utils.allocator import keep_freed_pages

from .card.card import CardFormatError, LayerCard, LayerRow, ModuleRow
from .utils.errors import BatchError, BudgetError, ExportError, LayerprofError, UsageError
from .stats.ops import backends
from .place.placement import Plan, PlacementError, place
from .card.budget import TrainingBudget
from .pipeline.config import ProfileConfig
from .utils.errors import ProfileError
from .pipeline.profiler import profile
from .pipeline.session import Profiler
from .pipeline.step_cost import measure_step_cost
from .model.targets import find_targets, register_linear_kind

__all__ = ["profile", "Profiler", "ProfileConfig", "LayerCard", "ModuleRow", "LayerRow", "Plan", "place", "backends",
           "find_targets", "register_linear_kind", "measure_step_cost", "LayerprofError", "CardFormatError", "PlacementError",
           "ProfileError", "BatchError", "BudgetError", "ExportError", "UsageError",
           "TrainingBudget", "keep_freed_pages", "__version__"]

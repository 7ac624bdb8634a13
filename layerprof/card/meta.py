"""The card's metadata as typed models: what was profiled (model, data), how (settings, sweep), how stable
the ranking is, and what the budget-aware passes and a measured step cost recorded.

Unknown metadata keys are kept (``extra="allow"``): metadata grows with the features that write it, and a
card from a newer minor version still loads; the rows (``schema``) admit no unknown column.
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from .fields import MAX_RANK, Count, Dim, Finite, LayerIndex, Name, NonNeg

_META = ConfigDict(strict=True, extra="allow", frozen=True)
OptText = Optional[Annotated[str, Field(max_length=4096)]]


class Settings(BaseModel):
    model_config = _META

    rank: Annotated[int, Field(ge=1, le=MAX_RANK)]
    damping: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    score: Annotated[str, Field(max_length=200)]
    backend: Annotated[str, Field(max_length=200)]
    dtype: Annotated[str, Field(max_length=200)]
    score_default: Optional[bool] = None   # placed by the default score (not chosen with --score)
    score_fallback: OptText = None         # why the card fell back to the score's naive counterpart


class ModelMeta(BaseModel):
    model_config = _META

    class_: Annotated[str, Field(alias="class", min_length=1, max_length=1000)]
    parameters: Count
    config_hash: Annotated[str, Field(max_length=200)]
    name_or_path: OptText = None
    dtype: OptText = None


class DataMeta(BaseModel):
    model_config = _META

    rows: Count
    batches: Count
    hash: Annotated[str, Field(max_length=200)]


class SweepMeta(BaseModel):
    model_config = _META

    seconds: NonNeg
    finalize_seconds: NonNeg = 0.0
    finalize_threads: Optional[Count] = None
    finalize_lapack: Optional[Literal["scipy", "torch"]] = None  # whose LAPACK ran finalize (layerprof.stats.linalg)
    rows_per_second: Optional[NonNeg] = None
    peak_memory_bytes: Optional[Count] = None
    peak_memory_kind: OptText = None


class Stability(BaseModel):
    model_config = _META

    kendall_tau: Optional[Annotated[float, Field(ge=-1.0, le=1.0, allow_inf_nan=False)]] = None
    threshold: Optional[Finite] = None
    stable: Optional[bool] = None
    top_k: Optional[Count] = None
    top_k_overlap: Optional[Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]] = None
    note: OptText = None


class Skipped(BaseModel):
    model_config = _META

    batch: Annotated[int, Field(ge=-1)]
    reason: Annotated[str, Field(max_length=4096)]


class Head(BaseModel):
    model_config = _META

    name: Name
    d_in: Dim
    d_out: Dim


class Attention(BaseModel):
    """The cost model's attention term: heads × head dim, and the calibration's mean sequence length."""
    model_config = _META

    width: Dim
    seq_len: Annotated[float, Field(gt=0, allow_inf_nan=False)]


class Coupling(BaseModel):
    model_config = _META

    layers: list[LayerIndex]
    rho: list[list[Annotated[float, Field(ge=-1.0 - 1e-6, le=1.0 + 1e-6, allow_inf_nan=False)]]]


class BudgetMeta(BaseModel):
    model_config = _META

    steps: Annotated[int, Field(ge=1)]
    lr: Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
    r: Annotated[int, Field(ge=1, le=MAX_RANK)]
    lora_alpha: Annotated[float, Field(gt=0.0, allow_inf_nan=False)]


class SimulateMeta(BaseModel):
    model_config = _META

    seconds: NonNeg


class WarmupMeta(BaseModel):
    model_config = _META

    steps: Count
    seconds: NonNeg
    cost_of_full_lora_finetune: NonNeg


class StepCostPlacement(BaseModel):
    model_config = _META

    layers: Annotated[list[LayerIndex], Field(min_length=1)]
    seconds: NonNeg


class StepCost(BaseModel):
    """A measured step cost (layerprof.pipeline.step_cost): the cost model's forward, backward and adapter weights."""
    model_config = _META

    forward_scale: NonNeg
    backward_scale: NonNeg
    adapter_scale: NonNeg
    placements: list[StepCostPlacement] = []


class Meta(BaseModel):
    model_config = _META

    model: ModelMeta
    data: DataMeta
    settings: Settings
    sweep: SweepMeta
    stability: Stability = Stability()
    skipped: list[Skipped] = []
    unfired: list[Name] = []
    unmasked: list[Name] = []
    heads: list[Head] = []
    attention: Optional[Attention] = None
    coupling: Optional[Coupling] = None
    budget: Optional[BudgetMeta] = None
    simulate: Optional[SimulateMeta] = None
    warmup: Optional[WarmupMeta] = None
    step_cost: Optional[StepCost] = None

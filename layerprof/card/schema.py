"""The card file's schema: what a card.json must hold for this version to place, report and export it.

``LayerCard.load`` reads a file through ``read_card_text`` (bounded, regular files only, UTF-8)
and ``validate_card`` (pydantic, strict: no string-to-number coercion, no bools as numbers),
then checks what one row cannot see: unique layers and modules, modules that point at layers
on the card, per-layer counts and adapter sizes that agree with the modules, a known score.
Every failure is one ``CardFormatError`` line naming the field, e.g.
``card.json: layers[3].d_in: must be an integer ≥ 1 (got nan)``.

Which values may be non-finite, and why (everything else must be finite):

* ``rank_capture``, ``gain_share``, ``resid_explained``: NaN when their denominator is 0
  (a module or layer with no correctable signal, or a card with none); the shares are otherwise
  in [0, 1];
* ``nfn``: NaN when a module has no weight the card could read, or a zero weight (a layer's
  only when all of its modules' are);
* ``cond``, ``noise_amp``: +inf when Σ has a zero eigenvalue and damping is 0;
* ``score``: NaN only where the column it copies is missing (``sim_gain`` on a card without
  a budget, say); placement then refuses that score with its own message.
"""
from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Annotated, Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .._version import CARD_SCHEMA
from ..utils.errors import CardFormatError
from .fields import MAX_LAYER, Count, Dim, Finite, LayerIndex, Name, NonNeg
from .meta import Meta

MAX_CARD_BYTES = 64 * 2 ** 20  # a 10,000-layer card with 64-value spectra is ~30 MB

# Rows: every field the card's dataclasses have (a test keeps the two field lists equal), nothing else,
# so that a column added on one side only fails loudly instead of being dropped on load.
_STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)



SHARE_TOL = 1e-9  # a share (rank_capture, gain_share) is a ratio ≤ 1 up to float rounding


def _share(v: float, field: str, signal: float) -> None:
    """A share of the signal: in [0, 1] where there is signal; NaN (0 / 0) or 0 where there is none."""
    if signal > 0:
        if not (math.isfinite(v) and 0.0 <= v <= 1.0 + SHARE_TOL):
            raise ValueError(f"{field} must be a number in [0, 1] where resnorm > 0 (got {v})")
    elif not (math.isnan(v) or v == 0.0):
        raise ValueError(f"{field} must be NaN or 0 where resnorm is 0 (got {v})")


def _nan_or_nonneg(v: float, field: str, allow_inf: bool = False) -> None:
    if math.isnan(v) or (allow_inf and v == math.inf):
        return
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{field} must be a finite number ≥ 0 (got {v})")


class ModuleSchema(BaseModel):
    model_config = _STRICT

    name: Name
    layer: Optional[LayerIndex]
    kind: Name
    d_in: Dim
    d_out: Dim
    rows: Count
    resnorm: NonNeg
    resnorm_rank: NonNeg
    rank_capture: float
    energy: NonNeg
    cond: float
    erank: NonNeg
    noise_amp: float
    grad_norm: NonNeg
    act_norm: NonNeg
    nfn: float
    resid_explained: float
    lora_params: Count
    calls: Count = 0
    sv2: Annotated[list[NonNeg], Field(max_length=4096)] = []
    resnorm2_x: Optional[Finite] = None
    grad_norm2_x: Optional[Finite] = None
    resnorm2_rank_x: Optional[Finite] = None
    sim_gain: Optional[Finite] = None
    lca_gain: Optional[Finite] = None

    @model_validator(mode="after")
    def _special_values(self):
        _share(self.rank_capture, "rank_capture", self.resnorm)
        _nan_or_nonneg(self.resid_explained, "resid_explained")
        _nan_or_nonneg(self.nfn, "nfn")
        _nan_or_nonneg(self.cond, "cond", allow_inf=True)
        _nan_or_nonneg(self.noise_amp, "noise_amp", allow_inf=True)
        if math.isnan(self.cond) or math.isnan(self.noise_amp):
            raise ValueError("cond and noise_amp may be +inf but not NaN")
        return self


class LayerSchema(BaseModel):
    model_config = _STRICT

    layer: LayerIndex
    modules: Annotated[int, Field(ge=1, le=10 ** 6)]
    resnorm: NonNeg
    resnorm_rank: NonNeg
    rank_capture: float
    gain_share: float
    predicted_gain: Finite
    score: float
    energy: NonNeg
    noise_amp: float
    grad_norm: NonNeg
    act_norm: NonNeg
    nfn: float
    lora_params: Count
    cost: NonNeg
    resnorm_a: NonNeg
    resnorm_b: NonNeg
    rank: Annotated[int, Field(ge=1, le=MAX_LAYER + 1)]
    measured_gain: Optional[Finite] = None
    resnorm2_x: Optional[Finite] = None
    grad_norm2_x: Optional[Finite] = None
    resnorm2_rank_x: Optional[Finite] = None
    noise_share: Optional[Finite] = None
    batches_to_halve_noise: Optional[Count] = None
    sim_gain: Optional[Finite] = None
    lca_gain: Optional[Finite] = None
    kappa: Optional[NonNeg] = None

    @model_validator(mode="after")
    def _special_values(self):
        _share(self.rank_capture, "rank_capture", self.resnorm)
        _nan_or_nonneg(self.gain_share, "gain_share")
        if math.isfinite(self.gain_share) and self.gain_share > 1.0 + SHARE_TOL:
            raise ValueError(f"gain_share must be in [0, 1] (got {self.gain_share})")
        _nan_or_nonneg(self.nfn, "nfn")
        _nan_or_nonneg(self.noise_amp, "noise_amp", allow_inf=True)
        if math.isnan(self.noise_amp):
            raise ValueError("noise_amp may be +inf but not NaN")
        if math.isinf(self.score):
            raise ValueError(f"score must be finite (got {self.score})")
        return self


class CardSchema(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    schema_: Annotated[str, Field(alias="schema")]
    meta: Meta
    layers: Annotated[list[LayerSchema], Field(min_length=1)]
    modules: Annotated[list[ModuleSchema], Field(min_length=1)]


def read_card_text(path: Path) -> str:
    """The file's text, refusing what is not a regular file of sane size (no hang, no huge read)."""
    try:
        st = os.stat(path)  # follows symlinks; a loop raises ELOOP here
    except FileNotFoundError:
        raise FileNotFoundError(f"no card at {path}; create one with `layerprof card`") from None
    except OSError as e:
        raise CardFormatError(f"{path}: cannot be read ({e.strerror}); pass the path of a card.json") from None
    if stat.S_ISDIR(st.st_mode):
        raise CardFormatError(f"{path} is a directory; pass the card.json inside it")
    if not stat.S_ISREG(st.st_mode):
        raise CardFormatError(f"{path} is not a regular file (a FIFO, socket or device); pass a card.json")
    if st.st_size > MAX_CARD_BYTES:
        raise CardFormatError(f"{path} is {st.st_size / 2 ** 20:.0f} MiB, over the {MAX_CARD_BYTES // 2 ** 20} MiB a "
                              "card can be; it is not a layerprof card")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CARD_BYTES + 1)
    except OSError as e:
        raise CardFormatError(f"{path}: cannot be read ({e.strerror})") from None
    if len(raw) > MAX_CARD_BYTES:
        raise CardFormatError(f"{path} grew past {MAX_CARD_BYTES // 2 ** 20} MiB while being read; it is not a card")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CardFormatError(f"{path} is not UTF-8 text (byte {e.start}); it is not a layerprof card") from None


def validate_card(data: Any, source: str) -> CardSchema:
    """The schema check plus the cross-row checks; raises one-line ``CardFormatError``."""
    from .scores import SCORES

    if not isinstance(data, dict) or "schema" not in data:
        raise CardFormatError(f"{source} is not a layerprof card (no 'schema' field)")
    if data["schema"] != CARD_SCHEMA:
        raise CardFormatError(f"{source} has schema {str(data['schema'])[:80]!r} but this layerprof reads {CARD_SCHEMA!r}; "
                              "re-create the card with this version (`layerprof card`) or use the version that wrote it")
    try:
        card = CardSchema.model_validate(data)
    except ValidationError as e:
        raise CardFormatError(f"{source}: {_first_error(e)}; {_more(e)}re-create the card with `layerprof card`") from None
    _cross_checks(card, source, SCORES)
    return card


def _first_error(e: ValidationError) -> str:
    err = e.errors(include_url=False)[0]
    loc = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(err["loc"]))
    if err["type"] == "missing":
        return f"{loc}: missing"
    got = repr(err.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    return f"{loc or 'card'}: {err['msg'].rstrip('.')} (got {got})"


def _more(e: ValidationError) -> str:
    n = e.error_count() - 1
    return f"{n} more problem(s); " if n > 0 else ""


def _cross_checks(card: CardSchema, source: str, scores) -> None:
    def bad(msg: str):
        raise CardFormatError(f"{source}: {msg}; the file is corrupted or hand-edited: re-create it with "
                              "`layerprof card`")

    settings = card.meta.settings
    if settings.score not in scores:
        bad(f"meta.settings.score {settings.score[:60]!r} is not a score this version knows ({', '.join(scores)})")
    layer_ids = [l.layer for l in card.layers]
    if len(set(layer_ids)) != len(layer_ids):
        dup = next(i for i in layer_ids if layer_ids.count(i) > 1)
        bad(f"layer {dup} appears twice in layers")
    names = [m.name for m in card.modules]
    if len(set(names)) != len(names):
        seen: set = set()
        dup = next(n for n in names if n in seen or seen.add(n))
        bad(f"module {dup[:80]!r} appears twice in modules")
    per_layer: dict[int, list[ModuleSchema]] = {}
    for m in card.modules:
        if m.layer is not None:
            per_layer.setdefault(m.layer, []).append(m)
        if m.lora_params != settings.rank * (m.d_in + m.d_out):
            bad(f"module {m.name[:80]!r} has lora_params {m.lora_params}, but rank {settings.rank} × (d_in {m.d_in} + "
                f"d_out {m.d_out}) = {settings.rank * (m.d_in + m.d_out)}")
    if set(per_layer) != set(layer_ids):
        extra = sorted(set(per_layer) ^ set(layer_ids))[:5]
        bad(f"layers {extra} are on one of the layer and module lists but not the other")
    for l in card.layers:
        ms = per_layer[l.layer]
        if l.modules != len(ms):
            bad(f"layer {l.layer} says {l.modules} modules but {len(ms)} modules name it")
        if l.lora_params != sum(m.lora_params for m in ms):
            bad(f"layer {l.layer} has lora_params {l.lora_params}, not the sum of its modules' "
                f"{sum(m.lora_params for m in ms)}")
        if math.isnan(l.nfn) and not all(math.isnan(m.nfn) for m in ms):
            bad(f"layer {l.layer} has a NaN nfn although its modules' nfn are numbers")
        if math.isnan(l.score) and getattr(l, settings.score, 0.0) is not None:
            bad(f"layer {l.layer} has a NaN score although its {settings.score} is on the card")
    if any(l.resnorm > 0 for l in card.layers) and any(math.isnan(l.gain_share) for l in card.layers):
        bad("a layer's gain_share is NaN although the card has signal (gain shares are ρ_ℓ² / Σ ρ²)")
    if sorted(l.rank for l in card.layers) != list(range(1, len(card.layers) + 1)):
        bad("the layers' rank column is not 1..L")
    coupling = card.meta.coupling
    if coupling is not None:
        n = len(coupling.layers)
        if not set(coupling.layers) <= set(layer_ids) or len(set(coupling.layers)) != n:
            bad("meta.coupling.layers are not distinct layers of this card")
        if len(coupling.rho) != n or any(len(row) != n for row in coupling.rho):
            bad(f"meta.coupling.rho is not {n} × {n}")
    if card.meta.budget is not None:
        from .budget import TrainingBudget
        from ..utils.errors import BudgetError

        try:
            TrainingBudget.from_dict(card.meta.budget.model_dump())
        except (BudgetError, TypeError, ValueError) as e:
            bad(f"meta.budget is invalid ({str(e).splitlines()[0][:160]})")

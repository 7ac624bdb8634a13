"""LayerCard: the plain-data result of a sweep, saved as versioned JSON.

The card knows no kernel and no process group: it holds per-module rows, per-layer
rows and metadata (model identity, data fingerprint, settings, versions, sweep time
and memory, skipped batches, split-half stability, taps that never fired).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._version import CARD_SCHEMA
from ..utils.errors import CardFormatError  # noqa: F401  (also importable from here)
from ..utils.fileio import atomic_write_text

if TYPE_CHECKING:
    from .meta import Meta

SCHEMA = CARD_SCHEMA


def default_k(n_layers: int) -> int:
    """The default number of layers to adapt, everywhere a k is not given: a quarter of the layers, at
    least one (the placement, the stability record's top-k and ``layerprof compare``)."""
    return max(1, n_layers // 4)


@dataclass(frozen=True)
class ModuleRow:
    """One target module. See docs/method.md for each quantity; ``sv2`` = leading σ_i(M)²."""

    name: str
    layer: int | None
    kind: str
    d_in: int
    d_out: int
    rows: int
    resnorm: float
    resnorm_rank: float
    rank_capture: float
    energy: float
    cond: float
    erank: float
    noise_amp: float
    grad_norm: float
    act_norm: float
    nfn: float
    resid_explained: float
    lora_params: int
    calls: int = 0
    sv2: list = field(default_factory=list, repr=False)
    resnorm2_x: float | None = None    # cross-half ρ² (unbiased for the signal; may be negative)
    grad_norm2_x: float | None = None  # cross-half ‖C‖²
    resnorm2_rank_x: float | None = None  # cross-half rank-r ρ² (each half's top-r subspace, the other half's M)
    sim_gain: float | None = None      # simulated LoRA gain for meta.budget (layerprof.predict.simulate)
    lca_gain: float | None = None      # warm-up loss-change allocation (layerprof.predict.warmup)


@dataclass(frozen=True)
class LayerRow:
    """One transformer block: aggregates of its modules; ``score`` is what placement maximizes."""

    layer: int
    modules: int
    resnorm: float
    resnorm_rank: float
    rank_capture: float
    gain_share: float
    predicted_gain: float
    score: float
    energy: float
    noise_amp: float
    grad_norm: float
    act_norm: float
    nfn: float
    lora_params: int
    cost: float
    resnorm_a: float
    resnorm_b: float
    rank: int
    measured_gain: float | None = None  # single-layer LoRA probe (`layerprof card --probe-steps K`)
    resnorm2_x: float | None = None     # Σ over modules of the cross-half ρ²
    grad_norm2_x: float | None = None   # Σ over modules of the cross-half ‖C‖²
    resnorm2_rank_x: float | None = None  # Σ over modules of the cross-half rank-r ρ²
    noise_share: float | None = None    # (ρ² − ρ²×) / ρ²: the part of the naive ρ² that is sampling noise
    batches_to_halve_noise: int | None = None  # calibration batches that would halve noise_share
    sim_gain: float | None = None       # simulated LoRA held-out gain for meta.budget (nats/token)
    lca_gain: float | None = None       # warm-up loss-change allocation (nats/token)
    kappa: float | None = None          # loss curvature along the layer's correction (simulation)


# The layer columns a placement can maximize (``card.place(by=...)``, ``layerprof place --by``).
PLACE_BY = ("score", "resnorm", "resnorm_rank", "energy", "grad_norm", "act_norm", "nfn", "predicted_gain",
            "resnorm2_x", "resnorm2_rank_x", "grad_norm2_x", "sim_gain", "lca_gain", "measured_gain")


class LayerCard:
    """Per-module and per-layer results of one profiling sweep (see docs/method.md)."""

    def __init__(self, modules: list, layers: list, meta: dict):
        self.modules: list[ModuleRow] = [m if isinstance(m, ModuleRow) else ModuleRow(**m) for m in modules]
        self.layers: list[LayerRow] = [l if isinstance(l, LayerRow) else LayerRow(**l) for l in layers]
        self.meta: dict = meta

    # ------------------------------------------------------------- look-ups
    def module(self, name: str) -> ModuleRow:
        for m in self.modules:
            if m.name == name:
                return m
        raise KeyError(f"no module {name!r} on this card")

    def layer(self, index: int) -> LayerRow:
        for l in self.layers:
            if l.layer == index:
                return l
        raise KeyError(f"no layer {index} on this card (layers: {[l.layer for l in self.layers]})")

    @property
    def rank(self) -> int:
        return int(self.meta["settings"]["rank"])

    def ranking(self, by: str = "score") -> list[int]:
        """Layer indices, best first, by a layer column (default: the card's score)."""
        return [l.layer for l in sorted(self.layers, key=lambda l: -getattr(l, by))]

    def __repr__(self) -> str:
        model = self.meta.get("model", {})
        return (f"LayerCard({model.get('class')}, {len(self.layers)} layers, {len(self.modules)} modules, "
                f"{self.meta.get('data', {}).get('rows')} rows, top layers {self.ranking()[:4]})")

    # ------------------------------------------------------- serialization
    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "meta": self.meta,
                "layers": [asdict(l) for l in self.layers], "modules": [asdict(m) for m in self.modules]}

    @classmethod
    def from_dict(cls, data: Any, source: str = "card") -> "LayerCard":
        """A card from its JSON form, checked against the schema (``layerprof.card.schema``).

        Raises ``CardFormatError`` (one line, naming the field) for anything this version could
        not place, report or export.
        """
        from .schema import validate_card

        card = validate_card(data, source)
        return cls([m.model_dump() for m in card.modules], [l.model_dump() for l in card.layers], data["meta"])

    @property
    def info(self) -> "Meta":
        """The metadata as typed models (``layerprof.card.meta.Meta``: ``card.info.settings.score``,
        ``card.info.sweep.seconds``), exactly as the card file holds it; ``meta`` is the same as a dict."""
        from pydantic import ValidationError

        from .meta import Meta

        try:
            return Meta.model_validate(json.loads(json.dumps(self.meta, allow_nan=True)))
        except ValidationError as e:
            raise CardFormatError(f"the card's metadata does not fit its schema ({e.errors(include_url=False)[0]['loc']}: "
                                  f"{e.errors(include_url=False)[0]['msg']}); re-create it with `layerprof card`") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the card as JSON atomically (a failed write leaves any old file intact).

        Under torch.distributed only rank 0 writes (every rank holds the same card).
        """
        path = Path(path)
        if _rank() != 0:
            return path
        text = json.dumps(self.to_dict(), indent=1, allow_nan=True)
        atomic_write_text(path, text)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LayerCard":
        """Read a card; raises ``CardFormatError`` for another schema version or an invalid file.

        Only regular files up to ``layerprof.card.schema.MAX_CARD_BYTES`` are read (a FIFO or a device
        is refused before it is opened), as UTF-8 JSON.
        """
        from .schema import read_card_text

        path = Path(path)
        text = read_card_text(path)
        try:
            data = json.loads(text)
        except RecursionError:
            raise CardFormatError(f"{path} nests too deeply to be a card; re-create it with `layerprof card`") from None
        except ValueError as e:  # JSONDecodeError, and ints past Python's digit limit
            raise CardFormatError(f"{path} is not valid JSON ({str(e).splitlines()[0][:120]}); the file is corrupted "
                                  "or truncated: re-create it with `layerprof card`") from None
        return cls.from_dict(data, str(path))

    # ------------------------------------------------------------- reports
    def to_markdown(self, plan=None) -> str:
        """The card as Markdown, recommending ``plan`` (default: the card's default placement)."""
        from ..output.report import markdown

        return markdown(self, plan)

    def to_html(self, path: str | os.PathLike | None = None, plan=None) -> str:
        """One self-contained HTML page (written to ``path`` when given), recommending ``plan``."""
        from ..output.report_html import html

        text = html(self, plan)
        if path is not None:
            atomic_write_text(path, text)
        return text

    # ------------------------------------------------------------ placement
    def place(self, **kwargs):
        """Choose layers to adapt; see ``layerprof.place.placement.place``."""
        from ..place.placement import place

        return place(self, **kwargs)

    def renamed(self, name_of, **meta) -> "LayerCard":
        """A copy with every module name mapped by ``name_of``, in the rows and in the metadata keyed by
        module name (calls, unfired, unmasked, weights_changed); ``meta`` entries are added."""
        new = {**self.meta, **meta}
        for key in ("unfired", "unmasked", "weights_changed"):
            if isinstance(new.get(key), list):
                new[key] = [name_of(n) for n in new[key]]
        if isinstance(new.get("calls"), dict):
            new["calls"] = {name_of(n): c for n, c in new["calls"].items()}
        return LayerCard([dataclasses.replace(m, name=name_of(m.name)) for m in self.modules], self.layers, new)

    def with_probe(self, probe: dict) -> "LayerCard":
        """A copy of this card carrying single-layer probe results (see ``layerprof.study.lora``)."""
        gains = probe["measured_gain"]
        layers = [dataclasses.replace(l, measured_gain=gains.get(str(l.layer))) for l in self.layers]
        return LayerCard(self.modules, layers, {**self.meta, "probe": probe})

    def with_step_cost(self, step_cost: dict) -> "LayerCard":
        """A copy whose cost model uses a measured step cost (``layerprof.measure_step_cost``): recorded as
        ``meta.step_cost``, and the per-layer cost column recomputed with it."""
        from ..place.placement import card_cost_model

        card = LayerCard(self.modules, self.layers, {**self.meta, "step_cost": step_cost})
        costs = card_cost_model(card)
        card.layers = [dataclasses.replace(l, cost=costs.cost([l.layer], self.rank).fraction) for l in self.layers]
        return card

    def default_layers(self) -> int:
        """The k that ``layerprof card`` recommends by default (``default_k``)."""
        return default_k(len(self.layers))


def _rank() -> int:
    import sys

    dist = getattr(sys.modules.get("torch"), "distributed", None)
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0

"""The files a card run leaves behind, written one way by `layerprof card` and the Trainer callback.

``write_outputs`` renders everything first (Markdown, HTML, the LoRA config, the placement)
and only then writes, each file atomically: a failure leaves no half-written folder.

    card.json        the card (``LayerCard.load`` reads it back)
    card.md          the card as Markdown, recommending ``plan``
    card.html        one self-contained page with plots (opens offline)
    placement.json   the plan: layers, modules, ranks, predicted gain, cost, Pareto front
    lora_config.json the plan as a ``peft.LoraConfig`` (its ``to_dict``)
    adapter/, axolotl.yml, llamafactory.yaml   the exports asked for (``layerprof.output.export``)
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from .export import FORMATS, export
from ..utils.fileio import atomic_write_text

if TYPE_CHECKING:
    from ..card.card import LayerCard
    from ..place.placement import Plan

EXPORT_FILES = {"peft": "adapter", "axolotl": "axolotl.yml", "llamafactory": "llamafactory.yaml"}
assert set(EXPORT_FILES) == set(FORMATS)


def lora_config_dict(config) -> dict:
    """A ``peft.LoraConfig`` as plain JSON-able data (sets become sorted lists)."""
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.to_dict().items()}


def write_json(path: str | os.PathLike, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, default=str))


def write_outputs(card: "LayerCard", plan: "Plan", out: str | os.PathLike, *, r: int, lora_alpha: float,
                  exports: Iterable[str] = (), base_model_name_or_path: str | None = None,
                  source: str = "layerprof") -> dict[str, Path]:
    """Write the card, its renderings, the plan and its LoRA config (and ``exports``) under ``out``."""
    out = Path(out)
    config = plan.lora_config(r=r, lora_alpha=lora_alpha)
    rendered = {"card.md": card.to_markdown(plan), "card.html": card.to_html(plan=plan),
                "placement.json": json.dumps(plan.to_dict(), indent=1, default=str),
                "lora_config.json": json.dumps(lora_config_dict(config), indent=1, default=str)}
    out.mkdir(parents=True, exist_ok=True)
    card.save(out / "card.json")
    written = {"card": out / "card.json"}
    for name, text in rendered.items():
        atomic_write_text(out / name, text)
        written[name.split(".")[0]] = out / name
    for fmt in exports:
        kw = {"base_model_name_or_path": base_model_name_or_path} if fmt == "peft" and base_model_name_or_path else {}
        written[fmt] = export(plan, fmt, out / EXPORT_FILES[fmt], source=source, r=r, lora_alpha=lora_alpha, **kw)
    return written

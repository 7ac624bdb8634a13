"""Exports of a placement to the tools people train with: PEFT, Axolotl, LLaMA-Factory.

Every export starts from ``lora_config`` below (``plan.lora_config``), so the three files
name the same modules, ranks and scaling; only the spelling differs:

- **PEFT**: ``adapter_config.json`` written by ``LoraConfig.save_pretrained`` and read
  back by ``LoraConfig.from_pretrained`` / ``PeftModel``.
- **Axolotl**: a YAML fragment of its LoRA keys (``adapter``, ``lora_r``, ``lora_alpha``,
  ``lora_target_modules``, ``lora_rank_pattern``...) to paste into a training config; Axolotl
  forwards them to ``peft.LoraConfig`` (``axolotl.loaders.adapter``).
- **LLaMA-Factory**: its LoRA arguments (``finetuning_type: lora``, ``lora_target`` as a
  comma-separated list, ``lora_rank``, ``lora_alpha``) as a YAML fragment for
  ``llamafactory-cli train`` or as ``--key value`` command-line arguments. LLaMA-Factory
  takes one rank for all modules, so a plan with per-module ranks cannot be exported
  there without loss and is refused with a message that says what to do.

Module names are full qualified names, which PEFT matches exactly, so each consumer
adapts ``plan.modules`` and nothing else. Where per-module ranks differ from ``r``,
``rank_pattern`` carries them and ``alpha_pattern`` keeps lora_alpha / r constant, so every
adapter has the same scaling. GPT-2 style Conv1D targets need ``fan_in_fan_out=True``.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..utils.errors import ExportError, dependency_error  # noqa: F401  (ExportError also importable from here)
from ..utils.fileio import atomic_write_text

if TYPE_CHECKING:
    from ..place.placement import Plan

FORMATS = ("peft", "axolotl", "llamafactory")


def lora_config(plan: "Plan", r: int | None = None, lora_alpha: float | None = None, **kwargs):
    """Build a ``peft.LoraConfig`` for ``plan`` (extra keyword arguments pass through)."""
    try:
        from peft import LoraConfig
    except ImportError as e:
        raise dependency_error("peft", "plan.lora_config", e) from e
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
    # What the card knows of the model: the task PEFT wraps it for, and where it came from.
    kwargs.setdefault("task_type", task_type(plan.model.get("class")))
    kwargs.setdefault("base_model_name_or_path", plan.model.get("name_or_path"))
    return LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=list(plan.modules),
                      rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, **kwargs)


# Model class name suffix -> PEFT's TaskType (the wrapper get_peft_model returns); bare models
# (BertModel, LlamaModel) are feature extractors. MaskedLM and others have no PEFT task type: None.
_TASK_TYPES = (("ForCausalLM", "CAUSAL_LM"), ("LMHeadModel", "CAUSAL_LM"), ("ForConditionalGeneration", "SEQ_2_SEQ_LM"),
               ("ForSeq2SeqLM", "SEQ_2_SEQ_LM"), ("ForSequenceClassification", "SEQ_CLS"),
               ("ForTokenClassification", "TOKEN_CLS"), ("ForQuestionAnswering", "QUESTION_ANS"))


def task_type(model_class: str | None) -> str | None:
    """PEFT's ``task_type`` for a transformers model class name (None when there is none to give)."""
    if not model_class:
        return None
    for suffix, task in _TASK_TYPES:
        if model_class.endswith(suffix):
            return task
    if model_class.endswith("Model") and "For" not in model_class:
        return "FEATURE_EXTRACTION"
    return None


def _lora_fields(plan: "Plan", r: int | None, lora_alpha: float | None, lora_dropout: float) -> dict:
    config = lora_config(plan, r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout)
    return {"r": config.r, "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout,
            "target_modules": sorted(config.target_modules), "rank_pattern": dict(config.rank_pattern),
            "alpha_pattern": dict(config.alpha_pattern), "fan_in_fan_out": bool(config.fan_in_fan_out)}


def _as_int(value: float, what: str, fmt: str) -> int:
    if float(value) != int(value):
        raise ExportError(f"{fmt} takes an integer {what}, got {value}; choose an alpha that is a whole number "
                          "(e.g. --alpha 16) or export to PEFT, which takes any float")
    return int(value)


def peft_adapter_config(plan: "Plan", directory: str | os.PathLike, *, r: int | None = None,
                        lora_alpha: float | None = None, lora_dropout: float = 0.0,
                        base_model_name_or_path: str | None = None, **kwargs) -> Path:
    """Write ``DIRECTORY/adapter_config.json`` (PEFT's own writer); returns its path."""
    config = lora_config(plan, r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, **kwargs)
    if base_model_name_or_path is not None:
        config.base_model_name_or_path = base_model_name_or_path
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(directory))
    return directory / "adapter_config.json"


def axolotl_config(plan: "Plan", *, r: int | None = None, lora_alpha: float | None = None,
                   lora_dropout: float = 0.0) -> dict:
    """Axolotl's LoRA keys for ``plan`` (see ``axolotl.utils.schemas.peft.LoraConfig``)."""
    f = _lora_fields(plan, r, lora_alpha, lora_dropout)
    out = {"adapter": "lora", "lora_r": f["r"], "lora_alpha": _as_int(f["lora_alpha"], "lora_alpha", "Axolotl"),
           "lora_dropout": f["lora_dropout"], "lora_target_modules": f["target_modules"]}
    if f["fan_in_fan_out"]:
        out["lora_fan_in_fan_out"] = True
    if f["rank_pattern"]:
        out["lora_rank_pattern"] = f["rank_pattern"]
        out["lora_alpha_pattern"] = {k: _as_int(v, "alpha_pattern value", "Axolotl")
                                     for k, v in f["alpha_pattern"].items()}
    return out


def llamafactory_config(plan: "Plan", *, r: int | None = None, lora_alpha: float | None = None,
                        lora_dropout: float = 0.0) -> dict:
    """LLaMA-Factory's LoRA arguments for ``plan`` (see ``llamafactory.hparams.FinetuningArguments``)."""
    f = _lora_fields(plan, r, lora_alpha, lora_dropout)
    if f["rank_pattern"]:
        raise ExportError("LLaMA-Factory takes one LoRA rank for every module, but this plan has per-module "
                          f"ranks ({len(f['rank_pattern'])} differ from r = {f['r']}); place without "
                          "rank_target= (--rank-target) for a uniform rank, or export to peft/axolotl")
    return {"finetuning_type": "lora", "lora_target": ",".join(f["target_modules"]), "lora_rank": f["r"],
            "lora_alpha": _as_int(f["lora_alpha"], "lora_alpha", "LLaMA-Factory"),
            "lora_dropout": f["lora_dropout"]}


def llamafactory_args(plan: "Plan", **kwargs) -> list[str]:
    """The same arguments as ``--key value`` pairs for ``llamafactory-cli train``."""
    out = []
    for key, value in llamafactory_config(plan, **kwargs).items():
        out += [f"--{key}", str(value)]
    return out


def _yaml(data: dict, header: str) -> str:
    import yaml

    return header + yaml.safe_dump(data, sort_keys=False, width=1 << 16)


def export(plan: "Plan", fmt: str, path: str | os.PathLike, *, source: str = "", **kwargs) -> Path:
    """Write ``plan`` in ``fmt`` (one of ``FORMATS``) to ``path`` and return the written file.

    ``peft``: ``path`` is a directory (``adapter_config.json`` inside); the others: a YAML file.
    Nothing is written when the plan cannot be exported (``ExportError``).
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "peft":
        return peft_adapter_config(plan, path, **kwargs)
    # The source (a card path) goes into a YAML comment: one line, printable, so it cannot add keys.
    source = "".join(ch if ch.isprintable() else "?" for ch in str(source))
    header = (f"# LoRA placement by layerprof{(' from ' + source) if source else ''}: layers {plan.layers}, "
              f"{plan.predicted_gain_fraction:.0%} of the all-layer score at {plan.cost:.0%} of full-LoRA cost\n")
    if fmt == "axolotl":
        text = _yaml(axolotl_config(plan, **kwargs), header + "# paste into your Axolotl config\n")
    else:
        text = _yaml(llamafactory_config(plan, **kwargs),
                     header + "# merge into your `llamafactory-cli train` YAML (or pass as --key value)\n")
    return atomic_write_text(path, text)

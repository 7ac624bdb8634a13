"""A ``PeftModel`` is profiled as its base model: base layers only, adapters off, base-model names.

PEFT wraps each adapted module: ``…q_proj`` becomes a LoRA layer holding ``…q_proj.base_layer``
(the original Linear) and ``lora_A`` / ``lora_B``, all under ``base_model.model.``. Profiling the
wrapper as it stands would treat the adapters as targets (nfn NaN, a plan no config can name)
and mix in the adapters' current output. So ``profile``, ``Profiler`` and the Trainer callback
target the ``base_layer`` modules, run with the adapters disabled (``PeftModel.disable_adapter``),
and name the card's modules as the base model does, so that the plan configures the next
``get_peft_model`` as is.
"""
from __future__ import annotations

BASE_LAYER = ".base_layer"
PREFIX = "base_model.model."  # PeftModel → LoraModel → the transformers model


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model") and hasattr(model, "disable_adapter")


def base_layer_targets(targets):
    """Targets given for the base model, as names of the PeftModel's wrapped base layers."""
    if targets is None:
        return r".*\.base_layer"
    if isinstance(targets, str):
        return rf"(?:{targets})\.base_layer"
    return [f"{t}{BASE_LAYER}" for t in targets]


def base_name(name: str) -> str:
    name = name[: -len(BASE_LAYER)] if name.endswith(BASE_LAYER) else name
    return name[len(PREFIX):] if name.startswith(PREFIX) else name


def strip_base_layer(card):
    """The card with its modules named as in the base model (PEFT's prefix and '.base_layer' dropped)."""
    return card.renamed(base_name, peft_wrapped=True)

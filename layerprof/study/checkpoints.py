"""The study's deeper byte-level decoders (12, 16 and 24 blocks): checkpoints kept with the study.

The bundled 8-block model ships with the package (``layerprof.model.bundled``); these three exist only
for the placement study's depth axis, so they stay in the repository's ``studies/v1/checkpoints`` and
out of the wheel.
"""
from __future__ import annotations

from pathlib import Path

import torch


# In a clone of the repository, beside the study's notebook and data; never in the wheel.
CHECKPOINTS = Path(__file__).resolve().parents[2] / "studies" / "v1" / "checkpoints"
DEEP_MODEL_DIR = CHECKPOINTS / "shakespeare-gpt2-deep"
MID_MODEL_DIR = CHECKPOINTS / "shakespeare-gpt2-mid"
DEEP24_MODEL_DIR = CHECKPOINTS / "shakespeare-gpt2-deep24"


def load_deep_model(dtype: torch.dtype = torch.float32):
    """The placement study's deeper decoder: the same byte-level GPT-2 recipe with 16 blocks × d 64.

    Trained here on the same plays (``python -m layerprof.model.bundled.train --layers 16 --width 64
    --steps 1200 --no-heldout-slice --out studies/v1/checkpoints/shakespeare-gpt2-deep``), so that the
    study has a depth axis longer than the default model's 8 blocks.
    """
    return _load_study_model(DEEP_MODEL_DIR, layers=16, dtype=dtype)


def load_mid_model(dtype: torch.dtype = torch.float32):
    """The placement study's third depth: 12 blocks × d 64, trained like the deep model.

    ``python -m layerprof.model.bundled.train --layers 12 --width 64 --steps 1200 --no-heldout-slice
    --out studies/v1/checkpoints/shakespeare-gpt2-mid`` (the study's confirmation tasks, studies/v1/notebook.md).
    """
    return _load_study_model(MID_MODEL_DIR, layers=12, dtype=dtype)


def load_deep24_model(dtype: torch.dtype = torch.float32):
    """The placement study's fourth depth: 24 blocks × d 64, trained like the deep model.

    ``python -m layerprof.model.bundled.train --layers 24 --width 64 --steps 1200 --no-heldout-slice
    --out studies/v1/checkpoints/shakespeare-gpt2-deep24`` (the study's 24-block confirmation tasks, studies/v1/notebook.md).
    """
    return _load_study_model(DEEP24_MODEL_DIR, layers=24, dtype=dtype)


def _load_study_model(path: Path, *, layers: int, dtype: torch.dtype):
    from transformers import GPT2LMHeadModel

    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"study model missing at {path}: the study's checkpoints are in a clone of the "
                                "repository (studies/v1/checkpoints), not in the installed package; run the study "
                                "from a clone, or train it with "
                                f"`python -m layerprof.model.bundled.train --layers {layers} --width 64 --steps 1200 "
                                f"--no-heldout-slice --out studies/v1/checkpoints/{path.name}`")
    model = GPT2LMHeadModel.from_pretrained(path, dtype=dtype, local_files_only=True)
    model.config._name_or_path = f"layerprof/{path.name}"
    model.loss_type = "ForCausalLM"
    return model.eval()

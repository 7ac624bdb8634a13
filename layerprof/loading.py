"""Loading what the command line profiles: a local Hugging Face model and calibration text, offline.

``load_model`` reads a ``save_pretrained`` directory (never the hub) or returns the bundled
model; ``calibration_batches`` tokenizes a text file into causal-LM batches.
"""
from __future__ import annotations

from pathlib import Path

from .errors import UsageError


def load_model(spec: str | None, dtype: str):
    """(model, tokenizer or None): the bundled model for None, else a local save_pretrained directory."""
    import torch

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if spec is None:
        from .bundled import load_default_model

        return load_default_model(torch_dtype), None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(spec)
    if not path.exists():
        raise UsageError(f"--model {spec!r} is not a local directory; layerprof loads models offline "
                         "from a directory written by save_pretrained")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, local_files_only=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError):
        tokenizer = None
    return model.eval(), tokenizer


def calibration_batches(text_path: str | None, model, tokenizer, *, batches: int, batch_size: int, seq_len: int):
    """Causal-LM batches (labels = input_ids) from a text file (default: the bundled documentation prose)."""
    from .bundled import calibration_text, text_batches

    text = Path(text_path).read_text(encoding="utf-8") if text_path else calibration_text()
    if tokenizer is None:
        vocab = getattr(getattr(model, "config", None), "vocab_size", 256)
        if vocab < 256:
            raise UsageError(f"no tokenizer found with --model and its vocabulary ({vocab}) is too small "
                             "for byte-level text; save the tokenizer into the model directory "
                             "(tokenizer.save_pretrained(DIR))")
        return text_batches(text, batch_size=batch_size, seq_len=seq_len, n_batches=batches)
    import torch

    ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
    n = min(batches, ids.numel() // (batch_size * seq_len))
    if n < 1:
        raise UsageError("--text is too short for one batch; lower --batch-size or --seq-len")
    x = ids[: n * batch_size * seq_len].view(n, batch_size, seq_len)
    return [{"input_ids": b, "attention_mask": torch.ones_like(b), "labels": b.clone()} for b in x]


def check_against_model(model, *, targets, layers: int | None, seq_len: int) -> None:
    """What `layerprof card` can check only once the model is loaded, still before the sweep."""
    from .targets import find_targets

    blocks = {t.layer for t in find_targets(model, targets).values() if t.layer is not None}
    if layers is not None and layers > len(blocks):
        raise UsageError(f"--layers {layers} but the model has {len(blocks)} layers with target modules; "
                         f"choose 1..{len(blocks)}")
    config = getattr(model, "config", None)
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if isinstance(positions, int) and seq_len > positions:
        raise UsageError(f"--seq-len {seq_len} exceeds the model's {positions} positions; choose ≤ {positions}")

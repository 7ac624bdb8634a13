"""The bundled default: a small byte-level GPT-2 trained on Shakespeare, and calibration text.

``load_default_model()`` returns the trained ``GPT2LMHeadModel`` (8 blocks, 1.65 M
parameters, vocabulary = 256 byte values, so text is encoded with ``encode`` and no
tokenizer is needed). ``calibration_batches()`` builds padded batches from the English
of Python's own documentation (``pydoc_data.topics``): a real domain shift from the
training plays, which is what a Layer Card is for. Weights come from
``python -m layerprof.model.bundled.train`` (see that module).
"""
from __future__ import annotations

from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MODEL_DIR = HERE / "shakespeare-gpt2"
HELDOUT = HERE / "heldout_shakespeare.txt"


def encode(text: str) -> list[int]:
    """Byte-level encoding: the token ids are the UTF-8 bytes of the text."""
    return list(text.encode("utf-8"))


def decode(ids) -> str:
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def load_default_model(dtype: torch.dtype = torch.float32):
    """The bundled Shakespeare GPT-2, in eval mode, loaded offline from the package."""
    from transformers import GPT2LMHeadModel

    if not (MODEL_DIR / "model.safetensors").exists():
        raise FileNotFoundError(f"bundled weights missing at {MODEL_DIR}; reinstall layerprof or run "
                                "`python -m layerprof.model.bundled.train`")
    model = GPT2LMHeadModel.from_pretrained(MODEL_DIR, dtype=dtype, local_files_only=True)
    model.config._name_or_path = "layerprof/shakespeare-gpt2"
    model.loss_type = "ForCausalLM"  # GPT-2 names no loss type; say it so transformers does not warn
    return model.eval()


def calibration_text() -> str:
    """English prose from Python's documentation (ships with CPython: ``pydoc_data.topics``)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def heldout_text() -> str:
    """A held-out slice of *The Tempest* (in-domain for the bundled model)."""
    return HELDOUT.read_text(encoding="utf-8")


def text_batches(text: str, *, batch_size: int = 8, seq_len: int = 128, n_batches: int | None = 48,
                 stride_docs: str = "\n\n") -> list[dict]:
    """Batches of ``input_ids``, ``attention_mask`` and ``labels`` from text.

    The text is split into documents at blank lines, documents are packed greedily into
    rows of ``seq_len`` bytes without crossing a row, and each row is right-padded
    (mask 0, label -100): realistic padding that the card must ignore.
    """
    if seq_len < 2 or batch_size < 1:
        raise ValueError("seq_len must be >= 2 and batch_size >= 1")
    rows: list[list[int]] = []
    current: list[int] = []
    for doc in text.split(stride_docs):
        ids = encode(doc.strip() + "\n")
        while ids:
            room = seq_len - len(current)
            if len(ids) > room and current:
                rows.append(current)
                current = []
                continue
            current += ids[:seq_len]
            ids = ids[seq_len:]
        if n_batches is not None and len(rows) >= n_batches * batch_size:
            break
    if current:
        rows.append(current)
    if n_batches is not None:
        rows = rows[: n_batches * batch_size]
    batches = []
    for i in range(0, len(rows) - batch_size + 1, batch_size):
        chunk = rows[i:i + batch_size]
        ids = torch.zeros(batch_size, seq_len, dtype=torch.long)
        mask = torch.zeros(batch_size, seq_len, dtype=torch.long)
        for j, row in enumerate(chunk):
            ids[j, :len(row)] = torch.tensor(row)
            mask[j, :len(row)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    if not batches:
        raise ValueError(f"text too short for one batch of {batch_size} rows × {seq_len} bytes")
    return batches


def calibration_batches(*, batch_size: int = 8, seq_len: int = 128, n_batches: int = 48) -> list[dict]:
    """The default calibration set: Python documentation prose, padded, as model kwargs."""
    return text_batches(calibration_text(), batch_size=batch_size, seq_len=seq_len, n_batches=n_batches)

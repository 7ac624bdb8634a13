"""Loading what the command line profiles: a local Hugging Face model and calibration text, offline.

``load_model`` reads a ``save_pretrained`` directory (never the hub) or returns the bundled
model; ``calibration_batches`` tokenizes a text file into causal-LM batches.
"""
from __future__ import annotations

from pathlib import Path

from ..utils.errors import UsageError


def model_family(config) -> str:
    """"decoder", "encoder" or "encoder-decoder" from a transformers config (its architectures first:
    ``model_type`` alone is ambiguous, e.g. "bert" also has a causal-LM class, BertLMHeadModel)."""
    from transformers.models.auto import modeling_auto as auto

    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder"
    arch = " ".join(getattr(config, "architectures", None) or [])
    if "ForCausalLM" in arch or "LMHeadModel" in arch:
        return "decoder"
    if arch and ("ForConditionalGeneration" in arch or "ForSeq2SeqLM" in arch):
        return "encoder-decoder"
    kind = config.model_type
    if kind in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        return "encoder"
    if kind in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "decoder"
    return "unknown"


def _has_mlm_head(config) -> bool:
    return any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in (getattr(config, "architectures", None) or []))


LOSS_FN_ROUTE = ("profile it from Python with the loss of your task: lp.profile(model, batches, loss_fn=lambda outputs, "
                 "batch: ...) (e.g. a classifier head's cross-entropy, or any scalar the fine-tune minimizes)")


def load_model(spec: str | None, dtype: str):
    """(model, tokenizer or None, family): the bundled decoder for None or "bundled"; a GGUF decoder (a
    .gguf file, a folder holding one, or a packaged model such as "smollm2") through transformers' GGUF
    reader; else a local save_pretrained directory loaded with its family's class — a causal LM for
    decoders, a masked LM for encoders whose checkpoint ships the MLM head. Encoders without one and
    encoder–decoders are refused with the Python route; randomly initialised weights (missing from the
    checkpoint) are warned about."""
    import warnings

    import torch

    from .model_source import load_gguf, resolve

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    source = resolve(spec)
    if source.kind == "bundled":
        from .bundled import load_default_model

        return load_default_model(torch_dtype), None, "decoder"
    if source.kind == "gguf":
        model, tokenizer = load_gguf(source, torch_dtype)
        return model, tokenizer, "decoder"
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    path = source.path
    if (path / "adapter_config.json").is_file():
        return _load_adapter(path, dtype)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    family = model_family(config)
    arch = ", ".join(getattr(config, "architectures", None) or [config.model_type])
    if family == "encoder-decoder":
        raise UsageError(f"--model {spec} is an encoder–decoder ({arch}); `layerprof card` builds causal-LM or "
                         "masked-LM batches from text, not source/target pairs: profile it from Python, "
                         "lp.profile(model, batches) with input_ids, attention_mask and labels (the targets) in "
                         "each batch, so that the model computes its seq2seq loss")
    if family == "encoder" and not _has_mlm_head(config):
        raise UsageError(f"--model {spec} is an encoder ({arch}) saved without a masked-LM head, so `layerprof card` "
                         f"has no loss to profile it with (a random head would be profiled instead); "
                         + LOSS_FN_ROUTE)
    if family == "unknown":
        raise UsageError(f"--model {spec} ({arch}) is neither a causal LM nor a masked-LM encoder that transformers "
                         "knows; " + LOSS_FN_ROUTE)
    cls = AutoModelForCausalLM if family == "decoder" else AutoModelForMaskedLM
    model, info = cls.from_pretrained(path, dtype=torch_dtype, local_files_only=True, output_loading_info=True)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        warnings.warn(f"transformers initialised {len(missing)} weight(s) of {type(model).__name__} randomly (not in "
                      f"{spec}): {', '.join(missing[:4])}{' …' if len(missing) > 4 else ''}; the card profiles them "
                      "as they are — check that the checkpoint matches its architecture", stacklevel=2)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError):
        tokenizer = None
    return model.eval(), tokenizer, family


def _load_adapter(path: Path, dtype: str):
    """A PEFT adapter directory: its base model (a local directory named by base_model_name_or_path) with
    the adapter loaded. ``profile`` profiles a PeftModel as its base layers, adapters disabled."""
    import json

    from peft import PeftModel

    base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base or not Path(base).is_dir():
        raise UsageError(f"--model {path} is a PEFT adapter whose base model ({base!r}) is not a local directory; "
                         "pass the base model's directory with --model (layerprof profiles the base layers), or "
                         "set base_model_name_or_path in adapter_config.json to it")
    model, tokenizer, family = load_model(base, dtype)
    return PeftModel.from_pretrained(model, str(path)).eval(), tokenizer, family


def base_names(card, model):
    """The card with module names relative to the base model (``bert.encoder…`` -> ``encoder…``), so that
    the written config applies to ``AutoModel`` and to every ``AutoModelFor…`` of the family: PEFT
    matches a name as the whole module name or as its suffix."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    if not prefix or not all(m.name.startswith(prefix + ".") for m in card.modules if m.layer is not None):
        return card
    return card.renamed(lambda name: name[len(prefix) + 1:] if name.startswith(prefix + ".") else name)


def calibration_batches(text_path: str | None, model, tokenizer, *, batches: int, batch_size: int, seq_len: int,
                        family: str = "decoder", mask_fraction: float = 0.15, seed: int = 0):
    """Batches from a text file (default: the bundled documentation prose): causal-LM (labels = input_ids)
    for decoders; masked-LM for encoders (``mask_fraction`` of the tokens replaced by the mask token,
    labels there and -100 elsewhere, a fixed seed so the card is reproducible)."""
    from .bundled import calibration_text, text_batches

    text = Path(text_path).read_text(encoding="utf-8") if text_path else calibration_text()
    if family == "encoder" and (tokenizer is None or tokenizer.mask_token_id is None):
        raise UsageError("a masked-LM encoder needs its tokenizer (with a mask token) in the model directory: "
                         "tokenizer.save_pretrained(DIR)")
    if tokenizer is None:
        vocab = getattr(getattr(model, "config", None), "vocab_size", 256)
        if vocab < 256:
            raise UsageError(f"no tokenizer found with --model and its vocabulary ({vocab}) is too small "
                             "for byte-level text; save the tokenizer into the model directory "
                             "(tokenizer.save_pretrained(DIR))")
        return text_batches(text, batch_size=batch_size, seq_len=seq_len, n_batches=batches)
    import torch

    ids = tokenizer(text, return_tensors="pt", add_special_tokens=family != "encoder")["input_ids"][0]
    n = min(batches, ids.numel() // (batch_size * seq_len))
    if n < 1:
        raise UsageError("--text is too short for one batch; lower --batch-size or --seq-len")
    x = ids[: n * batch_size * seq_len].view(n, batch_size, seq_len)
    if family != "encoder":
        return [{"input_ids": b, "attention_mask": torch.ones_like(b), "labels": b.clone()} for b in x]
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in x:
        picked = torch.rand(b.shape, generator=g) < mask_fraction
        picked[:, 0] |= ~picked.any(1)  # every row predicts at least one token
        out.append({"input_ids": b.masked_fill(picked, tokenizer.mask_token_id),
                    "attention_mask": torch.ones_like(b), "labels": b.masked_fill(~picked, -100)})
    return out


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

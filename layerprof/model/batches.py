"""Batches and the user's code around them: keyword form, the loss, checks, error wrapping.

What a sweep (and every extra pass after it: coupling, curvature, warm-up) does with one
batch before and after the model sees it. The user's forward, ``loss_fn`` and backward run
inside ``user_code``, so their errors come back as one ``BatchError`` naming the batch.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..utils.errors import BatchError, LayerprofError, ProfileError

LossFn = Callable[[Any, Any], torch.Tensor]


@contextlib.contextmanager
def frozen_eval(model: nn.Module, training: bool = False):
    """Freeze every parameter and switch to eval mode (``training=True``: train mode, as a LoRA fine-tune
    runs, dropout included); restore both exactly on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        model.train(training)
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


def as_kwargs(batch: Any, device: torch.device) -> dict:
    if isinstance(batch, torch.Tensor):
        batch = {"input_ids": batch}
    if not isinstance(batch, Mapping):
        raise ProfileError(f"a batch must be a dict of model keyword arguments or a tensor of input_ids, "
                           f"got {type(batch).__name__}")
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@functools.lru_cache(maxsize=None)
def _forward_parameters(cls: type) -> frozenset | None:
    """The keyword names ``cls.forward`` declares; None when it declares none (only ``**kwargs``)."""
    try:
        sig = inspect.signature(cls.forward)
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    named = frozenset(n for n, p in sig.parameters.items() if p.kind in kinds and n != "self")
    return named or None


_warned_keys: set[tuple[str, str]] = set()


def forward_kwargs(model: nn.Module, kwargs: Mapping) -> dict:
    """The batch entries the model's forward names as arguments; the others are not passed to it.

    A key the forward does not declare (``labels`` for a bare ``BertModel``, a dataset's ``idx``)
    would either raise or vanish into the forward's ``**kwargs``; it is dropped here with one
    warning per model class and key. It stays in the batch that ``loss_fn`` receives.
    """
    named = _forward_parameters(type(model))
    if named is None:
        return dict(kwargs)
    extra = [k for k in kwargs if k not in named]
    new = [k for k in extra if (type(model).__name__, k) not in _warned_keys]
    if new:
        _warned_keys.update((type(model).__name__, k) for k in new)
        warnings.warn(f"batch key(s) {new} are not arguments of {type(model).__name__}.forward; layerprof does not "
                      "pass them to the model (loss_fn still gets the whole batch): drop them from the batches, or "
                      "use a model whose forward takes them (e.g. labels need a model with a head)", stacklevel=3)
    return {k: v for k, v in kwargs.items() if k not in extra}


def default_loss(outputs: Any, batch: Any) -> torch.Tensor:
    loss = getattr(outputs, "loss", None)
    if loss is None and isinstance(outputs, Mapping):
        loss = outputs.get("loss")
    if loss is None:
        raise ProfileError("the model returned no loss: include labels in each batch (e.g. labels=input_ids "
                           "for a causal LM) or pass loss_fn=lambda outputs, batch: ...")
    return loss


def check_loss(loss: Any) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor):
        raise ProfileError(f"the loss must be a torch.Tensor, got {type(loss).__name__}; return a scalar tensor "
                           "from loss_fn")
    if loss.numel() != 1:
        raise ProfileError(f"the loss must be a scalar (the mean over the batch, as training computes it), got "
                           f"shape {tuple(loss.shape)}; reduce it, e.g. loss.mean()")
    if not loss.requires_grad:
        raise ProfileError("the loss does not require grad: compute it from the model outputs inside loss_fn, "
                           "not under torch.no_grad() or from detached tensors")
    return loss.reshape(())


@contextlib.contextmanager
def user_code(index: int, what: str, kwargs: Mapping):
    try:
        yield
    except LayerprofError:
        raise
    except Exception as e:  # noqa: BLE001 - anything the user's code raises, chained
        raise BatchError(f"batch {index}: {what} failed on it ({type(e).__name__}: {first_line(e)}); check that "
                         f"batch's {sorted(kwargs)} against the model") from e


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else "")[:200]


def check_batch(model: nn.Module, kwargs: Mapping, index: int) -> None:
    """Catch the batch mistakes users really make before they reach torch as a raw traceback.

    Token ids must be integers inside the model's vocabulary (when its config declares one);
    attention_mask / token_type_ids must have the ids' shape; labels either the ids' shape
    (token labels, -100 allowed) or one per row.
    """
    ids = kwargs.get("input_ids")
    if not isinstance(ids, torch.Tensor):
        return
    where = f"batch {index}"
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise BatchError(f"{where}: input_ids has dtype {str(ids.dtype).replace('torch.', '')}; token ids must be "
                         "integers (input_ids.long())")
    for key in ("attention_mask", "token_type_ids"):
        other = kwargs.get(key)
        if isinstance(other, torch.Tensor) and tuple(other.shape) != tuple(ids.shape):
            raise BatchError(f"{where}: {key} has shape {tuple(other.shape)} but input_ids {tuple(ids.shape)}; "
                             f"they must match (one {key} entry per token)")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(vocab, int) and ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab:
            raise BatchError(f"{where}: input_ids range over [{lo}, {hi}] but the model's vocabulary has {vocab} "
                             "ids (0..{}); tokenize with the model's own tokenizer".format(vocab - 1))
    labels = kwargs.get("labels")
    if isinstance(labels, torch.Tensor) and ids.dim() >= 1:
        token_labels = labels.dim() == ids.dim()
        if token_labels and tuple(labels.shape) != tuple(ids.shape):
            raise BatchError(f"{where}: labels have shape {tuple(labels.shape)} but input_ids {tuple(ids.shape)}; "
                             "token labels must match the ids (use -100 where no loss is wanted)")
        if token_labels and isinstance(vocab, int) and labels.numel() and not labels.is_floating_point():
            bad = (labels != -100) & ((labels < 0) | (labels >= vocab))
            if bool(bad.any()):
                raise BatchError(f"{where}: labels hold {int(labels[bad][0])}, outside the vocabulary (0..{vocab - 1}) "
                                 "and not -100 (the ignore index)")
        if not token_labels and (labels.dim() != 1 or labels.shape[0] != ids.shape[0]):
            raise BatchError(f"{where}: labels have shape {tuple(labels.shape)}; give one label per row "
                             f"({ids.shape[0]},) or one per token {tuple(ids.shape)}")


def batch_size(kw: Mapping) -> int:
    """The leading dimension of a kwargs batch (its first tensor's)."""
    return next(v.shape[0] for v in kw.values() if isinstance(v, torch.Tensor) and v.dim() >= 1)


def split_rows(kw: Mapping, size: int) -> list[dict]:
    """``kw`` cut into chunks of at most ``size`` sequences: every tensor whose leading dimension is the
    batch size is sliced, everything else kept as it is."""
    n = batch_size(kw)
    return [{k: v[i:i + size] if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == n else v
             for k, v in kw.items()} for i in range(0, n, size)]


def leading_tokens(batches: list[dict], max_tokens: int | None) -> tuple[list[dict], int]:
    """The first whole sequences of ``batches`` (kwargs dicts) holding at most ``max_tokens``
    non-padding tokens (at least one sequence), and the tokens they hold.

    A sequence is a row of the batch's leading dimension; its tokens are its attention-mask sum, or
    its input_ids' length, or 1 for inputs without token ids (a row of features). Every tensor whose
    leading dimension is the batch size is cut the same way; everything else is kept as it is.
    """
    out, total = [], 0
    for kw in batches:
        if not any(isinstance(v, torch.Tensor) and v.dim() >= 1 for v in kw.values()):
            continue
        n = batch_size(kw)
        mask, ids = kw.get("attention_mask"), kw.get("input_ids")
        if isinstance(mask, torch.Tensor) and mask.dim() >= 1 and mask.shape[0] == n:
            per = mask.reshape(n, -1).sum(1)
        elif isinstance(ids, torch.Tensor) and ids.dim() >= 1 and ids.shape[0] == n:
            per = torch.full((n,), ids[0].numel() if ids.dim() > 1 else 1)
        else:
            per = torch.ones(n, dtype=torch.long)
        cum = per.cumsum(0) + total
        keep = n if max_tokens is None else int((cum <= max_tokens).sum())
        if keep == 0 and not out:
            keep = 1  # at least one sequence, whatever its length
        if keep == 0:
            break
        out.append(split_rows(kw, keep)[0])
        total = int(cum[keep - 1])
        if keep < n:
            break
    return out, total

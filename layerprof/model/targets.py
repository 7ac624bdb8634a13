"""Which modules are profiled: linear-like kinds, PEFT-style target matching, layer index.

A *target module* is a linear map y = W x (+ b) (docs/method.md). Each supported module
class has a small handler that says how to read d_in, d_out and W (as d_out × d_in)
from it — BackPACK's "module class → handler" map. Users can register their own.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from ..utils.errors import ProfileError


def _bias_attr(m: nn.Module) -> torch.Tensor | None:
    b = getattr(m, "bias", None)
    return b if isinstance(b, torch.Tensor) else None


@dataclass(frozen=True)
class LinearKind:
    """How one module class exposes its linear map."""

    name: str
    matches: Callable[[nn.Module], bool]
    dims: Callable[[nn.Module], tuple[int, int]]  # (d_in, d_out)
    weight: Callable[[nn.Module], torch.Tensor]  # W as d_out × d_in (a view, never a copy to keep)
    bias: Callable[[nn.Module], "torch.Tensor | None"] = _bias_attr  # b (d_out) or None


def _is_hf_conv1d(m: nn.Module) -> bool:
    # transformers' GPT-2 Conv1D: weight stored transposed (d_in × d_out), y = x @ W + b.
    # Matched by class name and layout so that importing layerprof never imports transformers.
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf") and getattr(m, "weight", None) is not None \
        and m.weight.dim() == 2


_KINDS: list[LinearKind] = [
    LinearKind("linear", lambda m: isinstance(m, nn.Linear),
               lambda m: (m.in_features, m.out_features), lambda m: m.weight),
    LinearKind("conv1d", _is_hf_conv1d,
               lambda m: (m.weight.shape[0], m.weight.shape[1]), lambda m: m.weight.t()),
]


def register_linear_kind(name: str, matches: Callable[[nn.Module], bool],
                         dims: Callable[[nn.Module], tuple[int, int]],
                         weight: Callable[[nn.Module], torch.Tensor],
                         bias: Callable[[nn.Module], "torch.Tensor | None"] = _bias_attr) -> None:
    """Teach layerprof a new linear-like module class (tried before the built-in kinds).

    The module's forward must read its input as ``args[0]`` of shape (..., d_in) and
    return y of shape (..., d_out) with y = W x + b, b given by ``bias`` (default: the
    module's ``bias`` tensor, or none). nfn is read from y − b (``layerprof.stats.capture``).
    """
    _KINDS.insert(0, LinearKind(name, matches, dims, weight, bias))


def linear_kind(module: nn.Module) -> LinearKind | None:
    for kind in _KINDS:
        if kind.matches(module):
            return kind
    return None


# Module names whose last component marks an output head (never a default target,
# like PEFT, which never adapts the head by default).
HEAD_NAMES = ("lm_head", "embed_out", "output", "classifier", "score", "qa_outputs")

_LAYER_RE = re.compile(r"(?:^|\.)(h|layers|layer|blocks|block)\.(\d+)(?:\.|$)")


def layer_of(name: str) -> tuple[int | None, str | None]:
    """Block index and the layers pattern (``h``, ``layers``, ...) found in a module name."""
    match = _LAYER_RE.search(name)
    if match is None:
        return None, None
    return int(match.group(2)), match.group(1)


@dataclass(frozen=True)
class Target:
    """One profiled module: its qualified name in the model and its shape."""

    name: str
    kind: str
    d_in: int
    d_out: int
    layer: int | None
    layers_pattern: str | None


def _embeddings(model: nn.Module, getter: str) -> nn.Module | None:
    """``model.get_input_embeddings()`` / ``get_output_embeddings()`` where the model has them."""
    fn = getattr(model, getter, None)
    if not callable(fn):
        return None
    try:
        return fn()
    except (NotImplementedError, AttributeError):
        return None


def output_head_names(model: nn.Module) -> set[str]:
    """Qualified names of the output head(s): modules the default targets exclude."""
    heads = set()
    out_emb = _embeddings(model, "get_output_embeddings")
    in_emb = _embeddings(model, "get_input_embeddings")
    tied = in_emb.weight if isinstance(in_emb, nn.Embedding) else None

    def tied_to_embeddings(weight) -> bool:
        # The same Parameter (how transformers ties), or the same storage; meta tensors (a model built
        # without weights) all report data_ptr 0, so only identity counts for them.
        if tied is None or weight is None:
            return False
        return weight is tied or (not weight.is_meta and weight.data_ptr() == tied.data_ptr())

    for name, module in model.named_modules():
        if linear_kind(module) is None:
            continue
        last = name.rsplit(".", 1)[-1]
        if module is out_emb or last in HEAD_NAMES or tied_to_embeddings(getattr(module, "weight", None)):
            heads.add(name)
    return heads


def _matches(name: str, targets: str | Sequence[str]) -> bool:
    # Same rule as PEFT's target_modules: a string is a regex matched against the whole
    # name; a list matches a name equal to an entry or ending with "." + entry.
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def find_targets(model: nn.Module, targets: str | Iterable[str] | None = None) -> dict[str, Target]:
    """Resolve ``targets`` (None, a regex, or a list as PEFT's ``target_modules``).

    None means every linear-like module except embeddings and the output head.
    Raises ValueError naming what exists when nothing matches.
    """
    if targets is not None and not isinstance(targets, str):
        targets = list(targets)
        if not targets:
            raise ProfileError("targets=[] selects nothing; pass None for every linear module")
    heads = output_head_names(model) if targets is None else set()
    found: dict[str, Target] = {}
    linear_names = []
    for name, module in model.named_modules():
        kind = linear_kind(module)
        if kind is None:
            continue
        linear_names.append(name)
        if targets is None and name in heads:
            continue
        if targets is not None and not _matches(name, targets):
            continue
        d_in, d_out = kind.dims(module)
        layer, pattern = layer_of(name)
        found[name] = Target(name, kind.name, d_in, d_out, layer, pattern)
    if not found:
        if not linear_names:
            raise ProfileError(
                f"{type(model).__name__} has no linear-like modules (nn.Linear or transformers Conv1D); "
                "register other module classes with layerprof.register_linear_kind")
        suffixes = sorted({n.rsplit(".", 1)[-1] for n in linear_names})
        raise ProfileError(
            f"no target modules matched {targets!r}; linear modules in this model are: "
            f"{', '.join(suffixes)} (e.g. {linear_names[0]!r}); pass some of these as targets")
    return found


def modules_by_name(model: nn.Module, names: Iterable[str]) -> dict[str, nn.Module]:
    wanted = set(names)
    return {n: m for n, m in model.named_modules() if n in wanted}

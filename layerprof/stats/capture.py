"""Taps: capture (x, g, row mask) of each target module from the backward pass.

A forward hook wraps the module output y in an identity autograd function that keeps
the input x (through ``save_for_backward``, so activation checkpointing may drop and
recompute it). Its backward receives g = ∂L/∂y and hands (x, g, mask) to a sink.
Statistics therefore come from backward only: a checkpointed forward that is re-run
never counts twice, and a forward under ``torch.no_grad()`` never counts at all.

On a fully frozen model nothing downstream of the taps would require grad, so each
tap owns a scalar "anchor" leaf that it feeds into the identity function: the graph
then reaches every tapped module, the backward computes input gradients only, and no
parameter ever gets a ``.grad``.

The forward hook also reads one scalar off the output: Σ_t ‖y_t − b‖² = Σ_t ‖W x_t‖² over
the counted rows (``output_energy``), which nfn needs as tr(W Σ Wᵀ). The output is already
there, so it costs one pass over y instead of a d_out·d_in² product per module in finalize.
It travels with the backward node and reaches the sink with (x, g), so it counts exactly
when the statistics do.
"""
from __future__ import annotations

import weakref
from typing import Callable

import torch
from torch import nn

from ..model.targets import linear_kind

# (name, x, g, row mask, input id, Σ‖W x‖² of the call or None)
Sink = Callable[[str, torch.Tensor, torch.Tensor, "RowMask | None", "int | None", "torch.Tensor | None"], None]


class InputKeys:
    """Names each distinct input tensor of a batch, so that modules reading one tensor share a Gram.

    Keyed by object identity, checked through a weak reference and the tensor's version
    counter: a freed tensor whose id is reused, or a tensor modified in place between two
    reads, gets a new name. Reset at each batch.
    """

    def __init__(self):
        self._seen: dict[int, tuple] = {}
        self._next = 0

    def reset(self) -> None:
        self._seen.clear()

    def __call__(self, x: torch.Tensor) -> int:
        entry = self._seen.get(id(x))
        if entry is not None and entry[0]() is x and entry[1] == x._version:
            return entry[2]
        self._next += 1
        self._seen[id(x)] = (weakref.ref(x), x._version, self._next)
        return self._next


class RowMask:
    """The current batch's padding mask (B, T), flattened lazily for each input shape."""

    def __init__(self, mask: torch.Tensor):
        self.mask = mask.bool()
        self.rows = int(self.mask.sum())
        self.flat = self.mask.reshape(-1)

    def for_rows(self, lead_shape: torch.Size) -> "torch.Tensor | None | bool":
        """Mask for an input with leading shape ``lead_shape``; None when rows cannot be matched."""
        if tuple(lead_shape) == tuple(self.mask.shape):
            return self.flat
        return None


def output_energy(y: torch.Tensor, b: torch.Tensor | None, mask: RowMask | None) -> torch.Tensor | None:
    """Σ over the rows the statistics count of ‖y_t − b‖² (= ‖W x_t‖² for y = W x + b), in float32
    or wider; None when b does not fit y's last dimension (then finalize computes tr(W Σ Wᵀ) itself)."""
    y = y.detach()
    dtype = torch.float64 if y.dtype == torch.float64 else torch.float32
    if b is not None:
        if b.shape != y.shape[-1:]:
            return None
        y = y.to(dtype) - b.detach().to(dtype)  # in float32: y − b cancels where b is large
    rows = mask.for_rows(y.shape[:-1]) if mask is not None else None
    per_row = torch.linalg.vector_norm(y.reshape(-1, y.shape[-1]), dim=-1, dtype=dtype).square()
    return (per_row if rows is None else per_row[rows]).sum()


class _TapFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, x, anchor, tap, mask, input_id, y2):
        ctx.tap = tap
        ctx.mask = mask
        ctx.input_id = input_id
        ctx.y2 = y2
        ctx.save_for_backward(x)
        # An identity that autograd sees as a new node, with no copy. Not a view (as view_as would
        # be): autograd forbids in-place ops on a custom Function's view outputs, and models do
        # modify module outputs in place (h.mul_(2)); on this alias they behave as without the tap,
        # and the tap still receives ∂L/∂y of the value the module returned.
        return y.detach()

    @staticmethod
    def backward(ctx, gy):
        try:
            (x,) = ctx.saved_tensors
        except RuntimeError as e:
            if "inplace" not in str(e):
                raise
            # The plain backward of a frozen module needs only its weight, so an in-place edit of
            # its input after the forward (h.mul_(2)) goes unnoticed there; the statistics need the
            # input as the module saw it, and those values are gone.
            from ..utils.errors import ProfileError

            raise ProfileError(f"the input of {ctx.tap.name} was modified in place after the module read it (e.g. "
                               "h.mul_(2) in the model's forward); layerprof needs the input as the module saw it: "
                               "make that operation out of place (h = h * 2), or exclude the module with targets=") from e
        ctx.tap.sink(ctx.tap.name, x, gy, ctx.mask, ctx.input_id, ctx.y2)
        return gy, None, None, None, None, None, None


class Tap:
    """The hook pair on one module; ``remove()`` restores the module exactly."""

    def __init__(self, name: str, module: nn.Module, sink: Sink, mask_source: Callable[[], RowMask | None],
                 input_key: Callable[[torch.Tensor], int]):
        self.name = name
        self.sink = sink
        self.mask_source = mask_source
        self.input_key = input_key
        self.forward_calls = 0
        self.anchor: torch.Tensor | None = None
        kind = linear_kind(module)
        self.bias = (lambda: kind.bias(module)) if kind is not None else None
        self.d_out = kind.dims(module)[1] if kind is not None else None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, output):
        if not torch.is_grad_enabled() or not isinstance(output, torch.Tensor) or not args:
            return None
        x = args[0]
        if not isinstance(x, torch.Tensor):
            return None
        self.forward_calls += 1
        anchor = None
        if not output.requires_grad:
            if self.anchor is None or self.anchor.device != output.device:
                self.anchor = torch.zeros((), device=output.device, requires_grad=True)
            anchor = self.anchor
        mask = self.mask_source()
        fits = self.bias is not None and output.shape[-1:] == (self.d_out,)
        y2 = output_energy(output, self.bias(), mask) if fits else None
        return _TapFunction.apply(output, x.detach(), anchor, self, mask, self.input_key(x), y2)

    def remove(self) -> None:
        self.handle.remove()
        self.anchor = None

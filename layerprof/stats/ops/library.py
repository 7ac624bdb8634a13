"""The accumulation ops as torch.library ops: what torch.compile and ``torch.library.opcheck`` see.

* Native (``layerprof._C``): the schemas of ``layerprof::gram_update``, ``cross_update``,
  ``stats_update`` and ``sketch_update`` are declared once, in csrc/binding.cpp, with the C++
  kernel on the CPU dispatch key and the CUDA kernel on the CUDA key. Loading the extension
  registers them; this module adds their fake (meta) implementations.
* Triton (``layerprof.kernels``): the same four ops, registered here with ``torch.library.custom_op``
  as ``layerprof::triton_<op>`` (a second kernel family for the same devices, chosen by
  ``backend="triton"``, so it cannot share the native ops' dispatch keys), with fakes.

Every op mutates its accumulators in place and returns nothing; the fakes state the shape and
dtype contract the kernels check (csrc/cpu's ``TORCH_CHECK``s), so that ``torch.compile`` and
``opcheck`` reject a bad call while tracing, before any kernel runs.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util

import torch

OPS = ("gram_update", "cross_update", "stats_update", "sketch_update")
# Mutated arguments of each op (the accumulators), as in the schemas of csrc/binding.cpp.
MUTATES = {"gram_update": ("S",), "cross_update": ("C",), "stats_update": ("S", "C", "q"),
           "sketch_update": ("C_sketch",)}


@functools.lru_cache(maxsize=None)
def _extension():
    """``layerprof._C`` or the reason it cannot be loaded."""
    if importlib.util.find_spec("layerprof._C") is None:
        return None, ("extension layerprof._C is not built (no C++ compiler or torch at install time, or "
                      "LAYERPROF_NO_EXT=1); reinstall with `pip install --no-build-isolation -e .`")
    try:
        return importlib.import_module("layerprof._C"), "built"
    except ImportError as e:  # e.g. built against another torch
        return None, f"extension layerprof._C failed to load ({e}); rebuild it against this torch"


_FLOATS = (torch.float32, torch.float64)  # accumulators
_INPUTS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)  # rows


def _rows(x: torch.Tensor, mask: torch.Tensor | None, name: str = "x") -> None:
    torch._check(x.dim() == 2, lambda: f"{name} must be 2-D (rows × features), got {x.dim()}-D")
    torch._check(x.dtype in _INPUTS, lambda: f"{name} must be float32, float64, bfloat16 or float16, got {x.dtype}")
    if mask is not None:
        torch._check(mask.dtype == torch.bool, lambda: f"mask must be a bool tensor, got {mask.dtype}")
        torch._check(mask.dim() == 1 and mask.shape[0] == x.shape[0],
                     lambda: f"mask must have shape (rows,) = ({x.shape[0]},), got {tuple(mask.shape)}")


def _accumulator(t: torch.Tensor, shape: tuple, name: str) -> None:
    torch._check(t.dtype in _FLOATS, lambda: f"{name} must be float32 or float64, got {t.dtype}")
    torch._check(tuple(t.shape) == tuple(shape), lambda: f"{name} must be {tuple(shape)}, got {tuple(t.shape)}")


def _same_rows(x: torch.Tensor, g: torch.Tensor) -> None:
    torch._check(x.shape[0] == g.shape[0], lambda: f"x and g must have the same rows, got {x.shape[0]} and {g.shape[0]}")


def gram_update_fake(S: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    _rows(x, mask)
    _accumulator(S, (x.shape[1], x.shape[1]), "S")


def cross_update_fake(C: torch.Tensor, x: torch.Tensor, g: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    _rows(x, mask)
    _rows(g, mask, "g")
    _same_rows(x, g)
    _accumulator(C, (x.shape[1], g.shape[1]), "C")


def stats_update_fake(S: torch.Tensor, C: torch.Tensor, q: torch.Tensor, x: torch.Tensor, g: torch.Tensor,
                      mask: torch.Tensor | None = None) -> None:
    gram_update_fake(S, x, mask)
    cross_update_fake(C, x, g, mask)
    torch._check(q.numel() == 1, lambda: "q must be a scalar tensor")
    torch._check(S.dtype == C.dtype == q.dtype, lambda: f"S, C and q must share a dtype, got {S.dtype}, {C.dtype}, {q.dtype}")


def sketch_update_fake(C_sketch: torch.Tensor, x: torch.Tensor, g: torch.Tensor, omega: torch.Tensor,
                       mask: torch.Tensor | None = None) -> None:
    _rows(x, mask)
    _rows(g, mask, "g")
    _same_rows(x, g)
    torch._check(omega.dim() == 2 and omega.shape[0] == g.shape[1],
                 lambda: f"omega must be (d_out, k) with d_out = {g.shape[1]}, got {tuple(omega.shape)}")
    _accumulator(C_sketch, (x.shape[1], omega.shape[1]), "C_sketch")


FAKES = {"gram_update": gram_update_fake, "cross_update": cross_update_fake, "stats_update": stats_update_fake,
         "sketch_update": sketch_update_fake}


@functools.lru_cache(maxsize=None)
def native_ops():
    """``torch.ops.layerprof`` once ``layerprof._C`` is loaded (fakes registered), else None."""
    ext, _ = _extension()
    if ext is None:
        return None
    for name in OPS:
        torch.library.register_fake(f"layerprof::{name}")(FAKES[name])
    return torch.ops.layerprof


@functools.lru_cache(maxsize=None)
def triton_ops() -> dict:
    """``{op name: torch.library op}`` for the Triton kernels (imports triton)."""
    from layerprof.kernels import stats as kernels

    def S_x_mask(S: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        kernels.gram_update_triton(S, x, mask)

    def C_x_g_mask(C: torch.Tensor, x: torch.Tensor, g: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        kernels.cross_update_triton(C, x, g, mask)

    def S_C_q_x_g_mask(S: torch.Tensor, C: torch.Tensor, q: torch.Tensor, x: torch.Tensor, g: torch.Tensor,
                       mask: torch.Tensor | None = None) -> None:
        kernels.stats_update_triton(S, C, q, x, g, mask)

    def sketch(C_sketch: torch.Tensor, x: torch.Tensor, g: torch.Tensor, omega: torch.Tensor,
               mask: torch.Tensor | None = None) -> None:
        kernels.sketch_update_triton(C_sketch, x, g, omega, mask)

    out = {}
    for name, fn in zip(OPS, (S_x_mask, C_x_g_mask, S_C_q_x_g_mask, sketch)):
        op = torch.library.custom_op(f"layerprof::triton_{name}", fn, mutates_args=MUTATES[name])
        op.register_fake(FAKES[name])
        out[name] = op
    return out

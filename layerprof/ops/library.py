"""The accumulation ops as torch.library ops: what torch.compile and ``torch.library.opcheck`` see.

* Native (``layerprof._C``): the schemas of ``layerprof::gram_update``, ``cross_update``,
  ``stats_update`` and ``sketch_update`` are declared once, in csrc/binding.cpp, with the C++
  kernel on the CPU dispatch key and the CUDA kernel on the CUDA key. Loading the extension
  registers them; this module adds their fake (meta) implementations.
* Triton (``layerprof.kernels``): the same four ops, registered here with ``torch.library.custom_op``
  as ``layerprof::triton_<op>`` (a second kernel family for the same devices, chosen by
  ``backend="triton"``, so it cannot share the native ops' dispatch keys), with fakes.

Every op mutates its accumulators in place and returns nothing, so each fake implementation
only checks nothing and returns None: shapes and dtypes of the outputs are those of the inputs.
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


def _nothing(*args, **kwargs) -> None:
    return None


@functools.lru_cache(maxsize=None)
def native_ops():
    """``torch.ops.layerprof`` once ``layerprof._C`` is loaded (fakes registered), else None."""
    ext, _ = _extension()
    if ext is None:
        return None
    for name in OPS:
        torch.library.register_fake(f"layerprof::{name}")(_nothing)
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
        op.register_fake(_nothing)
        out[name] = op
    return out

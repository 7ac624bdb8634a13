"""Accumulation ops and backend dispatch (docs/method.md "accumulate").

Every backend implements the signatures of ``layerprof.stats.ops.stats`` (declared there
once, with the float64 reference). ``backend="auto"`` picks from ``AUTO`` for the tensors'
device: on the CPU the C++ kernels (measured faster than torch's path, studies/v1/bench-notebook.md), on
CUDA torch's own cuBLAS path — the hand-written CUDA and Triton kernels have not yet been
measured on a GPU (bench/gpu_check.sh), so they are opt-in (``backend="cuda"`` / ``"triton"``)
until one wins there. Asking for an unavailable backend falls back to ``torch`` with one warning. Nothing here initializes CUDA at import:
availability is probed lazily, and only ``torch.cuda.is_available()`` is consulted
(which does not create a context).
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from ...utils.errors import ProfileError
from .library import _extension
from .stats import stats_update_reference, stats_update_torch, symmetric

PREFERENCE = ("cuda", "triton", "cpp", "torch")  # every backend, fastest first where measured
# What backend="auto" tries, per device type, in order. A kernel enters here only after
# bench/gpu_check.sh measured it faster than the entry it would precede.
AUTO = {"cpu": ("cpp", "torch"), "cuda": ("torch",)}


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str
    devices: tuple[str, ...]


def _cpp_status() -> BackendStatus:
    ext, why = _extension()
    if ext is None:
        return BackendStatus("cpp", False, why, ("cpu",))
    return BackendStatus("cpp", True, "C++ extension (OpenMP gather + blocked upper-triangle GEMMs)", ("cpu",))


def _cuda_status() -> BackendStatus:
    ext, why = _extension()
    if ext is None:
        return BackendStatus("cuda", False, why, ("cuda",))
    if not getattr(ext, "with_cuda", False):
        return BackendStatus("cuda", False, "layerprof._C was built without CUDA (torch had no CUDA at build time)",
                             ("cuda",))
    import torch

    if not torch.cuda.is_available():
        return BackendStatus("cuda", False, "no CUDA device visible", ("cuda",))
    return BackendStatus("cuda", True, "CUDA kernels in layerprof._C", ("cuda",))


def _triton_status() -> BackendStatus:
    if importlib.util.find_spec("triton") is None:
        return BackendStatus("triton", False, "triton is not installed (pip install triton)", ("cuda",))
    import os

    import torch

    if os.environ.get("TRITON_INTERPRET") == "1":
        return BackendStatus("triton", True, "Triton kernels under the interpreter (TRITON_INTERPRET=1; slow)",
                             ("cpu", "cuda"))
    if not torch.cuda.is_available():
        return BackendStatus("triton", False, "no CUDA device (set TRITON_INTERPRET=1 to run kernels on the CPU)",
                             ("cuda",))
    return BackendStatus("triton", True, "Triton kernels (layerprof.kernels)", ("cuda",))


def backends() -> dict[str, BackendStatus]:
    """Which accumulation backends exist here and why the others do not."""
    return {
        "cuda": _cuda_status(),
        "triton": _triton_status(),
        "cpp": _cpp_status(),
        "torch": BackendStatus("torch", True, "pure PyTorch reference; any device", ("cpu", "cuda", "mps", "xpu")),
    }


_warned: set[str] = set()


def resolve_backend(name: str, device_type: str = "cpu") -> str:
    """Map ``"auto"`` (or an explicit name) to a backend that can run on ``device_type``."""
    if name != "auto" and name not in PREFERENCE:
        raise ProfileError(f"unknown backend {name!r}; choose one of {', '.join(('auto',) + PREFERENCE)}")
    table = backends()
    if name == "auto":
        for candidate in AUTO.get(device_type, ("torch",)):
            st = table[candidate]
            if st.available and device_type in st.devices:
                return candidate
        return "torch"
    st = table[name]
    if not st.available or device_type not in st.devices:
        if name not in _warned:
            _warned.add(name)
            why = st.reason if not st.available else f"it does not run on {device_type} tensors"
            warnings.warn(f"backend {name!r} is not available ({why}); using 'torch'", stacklevel=3)
        return "torch"
    return name


def same_dtype(x, g):
    """The dtype contract of every op: x and g may differ (sketch mode feeds bf16 X with fp32 GΩ);
    the narrower one is widened to the wider (``torch.promote_types``), so each backend sees one
    input dtype and the float64 reference defines the result. The accumulators' dtype is separate."""
    if g is not None and x.dtype != g.dtype:
        common = torch.promote_types(x.dtype, g.dtype)
        return x.to(common), g.to(common)
    return x, g


# Positions of (x, g) in each op's arguments (see layerprof.stats.ops.stats).
_XG = {"stats_update": (3, 4), "cross_update": (1, 2), "sketch_update": (1, 2)}


def _promoting(fn: Callable, name: str) -> Callable:
    ix, ig = _XG[name]

    def call(*args):
        args = list(args)
        args[ix], args[ig] = same_dtype(args[ix], args[ig])
        return fn(*args)
    return call


def stats_update(backend: str, S, C, q, x, g, mask=None) -> None:
    """``stats_update`` (see ``layerprof.stats.ops.stats``) on a resolved backend: the accumulator's entry point."""
    op(backend, "stats_update")(S, C, q, x, g, mask)


@functools.lru_cache(maxsize=None)
def op(backend: str, name: str) -> Callable:
    """One op (``gram_update``, ``cross_update``, ``stats_update``, ``sketch_update``) of one backend,
    with the dtype contract of ``same_dtype`` applied. cpp and cuda are the one native op
    ``torch.ops.layerprof.<name>`` (the dispatcher picks the kernel by device); triton is
    ``torch.ops.layerprof.triton_<name>`` (``layerprof.stats.ops.library``); torch and reference are Python."""
    fn = _op(backend, name)
    return _promoting(fn, name) if name in _XG else fn


def _op(backend: str, name: str) -> Callable:
    if backend == "torch":
        from . import stats as torch_ops

        return getattr(torch_ops, f"{name}_torch")
    if backend == "reference":
        from . import stats as torch_ops

        return getattr(torch_ops, f"{name}_reference")
    if backend in ("cpp", "cuda"):
        from .library import native_ops

        native = native_ops()
        if native is None:
            raise ProfileError(f"backend {backend!r} needs layerprof._C: {_extension()[1]}")
        return getattr(native, name)
    if backend == "triton":
        from .library import triton_ops

        return triton_ops()[name]
    raise ProfileError(f"unknown backend {backend!r}")


__all__ = ["backends", "resolve_backend", "stats_update", "stats_update_reference", "stats_update_torch",
           "BackendStatus", "symmetric", "op"]

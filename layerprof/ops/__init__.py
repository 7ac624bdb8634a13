"""Accumulation ops and backend dispatch (DESIGN §2 "accumulate").

Backends implement the op signatures of ``layerprof.ops.stats``. Only ``torch`` ships
in this release; ``cpp``, ``triton`` and ``cuda`` are declared here so that
``backends()`` can say why each is not available, and ``backend="auto"`` resolves to
the fastest one that is.
"""
from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from typing import Callable

from .stats import stats_update_reference, stats_update_torch

PREFERENCE = ("cuda", "triton", "cpp", "torch")


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str
    devices: tuple[str, ...]


def _native_status(name: str) -> BackendStatus:
    # Native kernels are built into layerprof._C by setup.py when sources exist;
    # look without importing torch.cuda so that this never initializes a GPU.
    if importlib.util.find_spec("layerprof._C") is None:
        return BackendStatus(name, False, "extension layerprof._C not built (no native sources in this release)",
                             ("cuda",) if name == "cuda" else ("cpu",))
    return BackendStatus(name, False, f"layerprof._C has no {name} kernels yet", ())


def backends() -> dict[str, BackendStatus]:
    """Which accumulation backends exist here and why the others do not."""
    status = {name: _native_status(name) for name in ("cuda", "cpp")}
    status["triton"] = BackendStatus(
        "triton", False,
        "no Triton kernels in this release" if importlib.util.find_spec("triton") else "triton is not installed",
        ("cuda",))
    status["torch"] = BackendStatus("torch", True, "pure PyTorch reference; any device", ("cpu", "cuda", "mps", "xpu"))
    return {name: status[name] for name in PREFERENCE}


_IMPLS: dict[str, Callable] = {"torch": stats_update_torch}
_warned: set[str] = set()


def resolve_backend(name: str, device_type: str = "cpu") -> str:
    """Map ``"auto"`` (or an explicit name) to a backend that can run on ``device_type``."""
    table = backends()
    if name == "auto":
        for candidate in PREFERENCE:
            st = table[candidate]
            if st.available and device_type in st.devices:
                return candidate
        return "torch"
    if name not in table:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(('auto',) + PREFERENCE)}")
    st = table[name]
    if not st.available:
        if name not in _warned:
            _warned.add(name)
            warnings.warn(f"backend {name!r} is not available ({st.reason}); using 'torch'", stacklevel=3)
        return "torch"
    return name


def stats_update(backend: str, S, C, q, x, g, mask=None) -> None:
    """Dispatch ``stats_update`` (see ``layerprof.ops.stats``) to a resolved backend."""
    _IMPLS[backend](S, C, q, x, g, mask)


__all__ = ["backends", "resolve_backend", "stats_update", "stats_update_reference", "stats_update_torch",
           "BackendStatus"]

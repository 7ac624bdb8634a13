"""Running statistics N, S, C, q per target module (DESIGN §1 "streaming statistics").

All statistics are plain sums, so batches, halves and ranks combine by addition. The
accumulator keeps them in two halves (alternate committed batches, for the split-half
stability figure) and stages each batch separately: a batch whose statistics turn out
non-finite is dropped whole, so the running sums are never half-updated.
Statistics live here, keyed by the module's qualified name — never on the model.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import ops


@dataclass
class ModuleStats:
    """Sums over rows t of one module: N, S = Σ x xᵀ, C = Σ x gᵀ, q = Σ ‖g‖²."""

    N: int
    S: torch.Tensor
    C: torch.Tensor
    q: torch.Tensor

    @classmethod
    def zeros(cls, d_in: int, d_out: int, dtype: torch.dtype, device: torch.device) -> "ModuleStats":
        return cls(0, torch.zeros(d_in, d_in, dtype=dtype, device=device),
                   torch.zeros(d_in, d_out, dtype=dtype, device=device),
                   torch.zeros((), dtype=dtype, device=device))

    def add_(self, other: "ModuleStats") -> "ModuleStats":
        self.N += other.N
        self.S.add_(other.S)
        self.C.add_(other.C)
        self.q.add_(other.q)
        return self

    def zero_(self) -> None:
        self.N = 0
        self.S.zero_()
        self.C.zero_()
        self.q.zero_()

    def __add__(self, other: "ModuleStats") -> "ModuleStats":
        return ModuleStats(self.N + other.N, self.S + other.S, self.C + other.C, self.q + other.q)

    def is_finite(self) -> bool:
        # tr S is non-finite iff some x was; q iff some g was; C then inherits from either.
        return bool(torch.isfinite(self.q) & torch.isfinite(self.S.diagonal().sum()))


@dataclass
class Accumulator:
    """Per-module statistics in two halves plus the staged statistics of the current batch."""

    dims: dict[str, tuple[int, int]]  # name -> (d_in, d_out)
    dtype: torch.dtype = torch.float32
    backend: str = "torch"
    halves: tuple[dict[str, ModuleStats], dict[str, ModuleStats]] = field(default_factory=lambda: ({}, {}))
    pending: dict[str, ModuleStats] = field(default_factory=dict)
    pending_calls: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)  # committed tap firings per module
    batches: int = 0

    def update(self, name: str, x: torch.Tensor, g: torch.Tensor, mask: torch.Tensor | None, rows: int) -> None:
        """Stage one call's (X, G) for module ``name``; ``rows`` = number of unmasked rows."""
        st = self.pending.get(name)
        if st is None:
            d_in, d_out = self.dims[name]
            st = self.pending[name] = ModuleStats.zeros(d_in, d_out, self.dtype, x.device)
        elif st.S.device != x.device:
            raise RuntimeError(f"module {name} ran on {x.device} after {st.S.device} in one sweep")
        ops.stats_update(self.backend, st.S, st.C, st.q, x, g, mask)
        st.N += rows
        self.pending_calls[name] = self.pending_calls.get(name, 0) + 1

    @property
    def has_pending(self) -> bool:
        return bool(self.pending_calls)

    def pending_rows(self) -> int:
        """Most rows staged at any module in this batch (0: nothing but padding reached a tap)."""
        return max((st.N for n, st in self.pending.items() if n in self.pending_calls), default=0)

    def pending_is_finite(self) -> bool:
        return all(st.is_finite() for st in self.pending.values())

    def commit(self) -> None:
        """Add the staged batch into the next half (halves alternate by committed batch)."""
        half = self.halves[self.batches % 2]
        for name, st in self.pending.items():
            if st.N == 0:
                continue
            if name in half:
                half[name].add_(st)
            else:
                half[name] = ModuleStats(st.N, st.S.clone(), st.C.clone(), st.q.clone())
            self.calls[name] = self.calls.get(name, 0) + self.pending_calls.get(name, 0)
        self.batches += 1
        self.discard()

    def discard(self) -> None:
        # Keep the staging buffers allocated (zeroed) for the next batch.
        for st in self.pending.values():
            st.zero_()
        self.pending_calls.clear()

    def total(self, name: str) -> ModuleStats | None:
        parts = [h[name] for h in self.halves if name in h]
        if not parts:
            return None
        return parts[0] + parts[1] if len(parts) == 2 else parts[0]

    def half(self, index: int, name: str) -> ModuleStats | None:
        return self.halves[index].get(name)

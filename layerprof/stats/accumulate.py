"""Running statistics N, S, C, q (and y2) per target module (docs/method.md "streaming statistics").

All statistics are plain sums, so batches, halves and ranks combine by addition. The
accumulator keeps them in two halves (alternate committed batches, for the split-half
stability figure) and stages each batch separately: a batch whose statistics turn out
non-finite is dropped whole, so the running sums are never half-updated.
Statistics live here, keyed by the module's qualified name — never on the model.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from . import ops


@dataclass
class ModuleStats:
    """Sums over rows t of one module: N, S = Σ x xᵀ, C = Σ x gᵀ, q = Σ ‖g‖², and y2 = Σ ‖W x‖²
    (read off the module's output by the tap, ``layerprof.stats.capture.output_energy``; None where some
    call's output could not give it, and finalize then computes tr(W Σ Wᵀ) from W and Σ)."""

    N: int
    S: torch.Tensor
    C: torch.Tensor
    q: torch.Tensor
    y2: torch.Tensor | None = None

    def add_(self, other: "ModuleStats") -> "ModuleStats":
        self.N += other.N
        self.S.add_(other.S)
        self.C.add_(other.C)
        self.q.add_(other.q)
        self.y2 = _add_y2(self.y2, other.y2)
        return self

    def __add__(self, other: "ModuleStats") -> "ModuleStats":
        return ModuleStats(self.N + other.N, self.S + other.S, self.C + other.C, self.q + other.q,
                           _add_y2(self.y2, other.y2))


def _add_y2(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    # Known only while every part knows it: one call without it makes the sum unknown.
    return None if a is None or b is None else a + b


@dataclass
class _Staged:
    """One module's part of the current batch: its C, q, N, y2 and the inputs (Gram ids) it read."""

    N: int
    C: torch.Tensor
    q: torch.Tensor
    inputs: list = field(default_factory=list)
    y2: torch.Tensor | None = None  # None once a call of this batch came without it: unknown, not short


@dataclass
class Accumulator:
    """Per-module statistics in two halves plus the staged statistics of the current batch.

    Modules that read the same input tensor in a forward (q/k/v projections, gate/up) share
    one Gram update: the first tap to reach an input computes XᵀX into a per-input buffer
    with the fused op, the others only C and q; at commit each module's S receives the
    Gram of every input it read. Exact, and the Gram work drops to one per distinct input.
    Modules whose inputs are always the same also share one S tensor (see ``commit``):
    treat ``ModuleStats.S`` as read-only outside this class.
    """

    dims: dict[str, tuple[int, int]]  # name -> (d_in, d_out)
    dtype: torch.dtype = torch.float32
    backend: str = "torch"
    sketch: int | None = None  # keep CΩ (d_in × sketch) instead of C where sketch < d_out (docs/method.md)
    sketch_seed: int = 0
    halves: tuple[dict[str, ModuleStats], dict[str, ModuleStats]] = field(default_factory=lambda: ({}, {}))
    pending: dict[str, _Staged] = field(default_factory=dict)
    grams: dict[int, torch.Tensor] = field(default_factory=dict)  # input id -> this batch's XᵀX
    calls: dict[str, int] = field(default_factory=dict)  # committed tap firings per module
    batches: int = 0
    gram_updates: int = 0  # Gram computations done (≤ tap firings when inputs are shared)
    _free: dict = field(default_factory=dict)  # (d_in, device) -> reusable Gram buffers
    _holders: tuple[dict, dict] = field(default_factory=lambda: ({}, {}))  # per half: id(S) -> names holding it
    _solo: int = 0

    def update(self, name: str, x: torch.Tensor, g: torch.Tensor, mask: torch.Tensor | None, rows: int,
               input_id: int | None = None, y2: torch.Tensor | None = None) -> None:
        """Stage one call's (X, G) for module ``name``; ``rows`` = number of unmasked rows.

        ``input_id`` names the input tensor within this batch (equal ids: the same tensor,
        read by several modules); None means not shared. ``y2``: the call's Σ ‖W x‖² over those
        rows, where the tap could read it off the output.
        """
        d_in, d_out = self.dims[name]
        st = self.pending.get(name)
        sketched = self.sketched(name)
        if sketched:
            # CΩ = Xᵀ(GΩ): project G first, then the same fused op on (X, GΩ); q needs G itself.
            gs = g if mask is None else g[mask]
            q = gs.to(self.dtype).pow(2).sum()
            g = g.to(self.dtype) @ self.omega(name, x.device)
            d_out = self.sketch
        if st is None:
            st = self.pending[name] = _Staged(0, torch.zeros(d_in, d_out, dtype=self.dtype, device=x.device),
                                              torch.zeros((), dtype=self.dtype, device=x.device),
                                              y2=torch.zeros((), dtype=self.dtype, device=x.device))
        elif st.C.device != x.device:
            raise RuntimeError(f"module {name} ran on {x.device} after {st.C.device} in one sweep")
        if input_id is None:
            self._solo -= 1
            input_id = self._solo
        S = self.grams.get(input_id)
        if S is None:
            S = self.grams[input_id] = self._buffer(d_in, x.device)
            # Sketched, the fused op's ‖GΩ‖² goes to a scratch scalar: q is ‖G‖², added below.
            q_out = torch.zeros_like(st.q) if sketched else st.q
            ops.stats_update(self.backend, S, st.C, q_out, x, g, mask)
            self.gram_updates += 1
        else:
            ops.op(self.backend, "cross_update")(st.C, x, g, mask)
            if not sketched:
                gs = g if mask is None else g[mask]
                st.q.add_(gs.to(self.dtype).pow(2).sum())
        if sketched:
            st.q.add_(q)
        st.y2 = _add_y2(st.y2, None if y2 is None else y2.to(st.q.device, self.dtype))
        st.N += rows
        st.inputs.append(input_id)

    def sketched(self, name: str) -> bool:
        """Whether ``name`` keeps CΩ: only where the sketch is narrower than C (else dense is exact and smaller)."""
        return self.sketch is not None and self.sketch < self.dims[name][1]

    def omega(self, name: str, device: torch.device) -> torch.Tensor:
        """The module's fixed sketch matrix Ω (d_out × k, entries N(0, 1/k)), seeded by its name."""
        cache = self.__dict__.setdefault("_omegas", {})
        key = (name, device)
        if key not in cache:
            digest = hashlib.sha256(f"{self.sketch_seed}:{name}".encode()).digest()
            seed = int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)
            gen = torch.Generator().manual_seed(seed)
            d_out = self.dims[name][1]
            cache[key] = (torch.randn(d_out, self.sketch, generator=gen, dtype=torch.float64)
                          / self.sketch ** 0.5).to(self.dtype).to(device)
        return cache[key]

    def _buffer(self, d: int, device: torch.device) -> torch.Tensor:
        free = self._free.get((d, device))
        if free:
            return free.pop()
        return torch.zeros(d, d, dtype=self.dtype, device=device)

    @property
    def has_pending(self) -> bool:
        return any(st.inputs for st in self.pending.values())

    def pending_rows(self) -> int:
        """Most rows staged at any module in this batch (0: nothing but padding reached a tap)."""
        return max((st.N for st in self.pending.values() if st.inputs), default=0)

    def pending_is_finite(self) -> bool:
        # tr S is non-finite iff some x was; q iff some g was; C then inherits from either.
        return all(bool(torch.isfinite(S.diagonal().sum())) for S in self.grams.values()) and all(
            bool(torch.isfinite(st.q)) and (st.y2 is None or bool(torch.isfinite(st.y2)))
            for st in self.pending.values() if st.inputs)

    def commit(self) -> None:
        """Add the staged batch into the next half (halves alternate by committed batch).

        Modules that read exactly the same inputs hold one S tensor between them (q/k/v,
        gate/up: 3 and 2 d_in² buffers become one each). A shared S is split into its own
        copy the first time its holders' inputs differ in a batch, so every module's S is
        always exactly Σ over its own inputs.
        """
        h = self.batches % 2
        half, holders = self.halves[h], self._holders[h]
        groups: dict[tuple, list[str]] = {}
        for name, st in self.pending.items():
            if st.inputs and st.N:
                groups.setdefault(tuple(st.inputs), []).append(name)
        # A half's first S and C take over the staged buffers instead of copying them (no copy, and
        # one fresh d_in² buffer less per input on short calibration sets); the next batch stages
        # into new ones. Only a Gram that no other group of this batch reads is taken.
        readers: dict[int, int] = {}
        for key in groups:
            for i in key:
                readers[i] = readers.get(i, 0) + 1
        taken_grams, taken_stages = [], []
        for key, names in groups.items():
            gram = self.grams[key[0]]
            if len(key) > 1:
                gram = gram.clone()
                for i in key[1:]:
                    gram.add_(self.grams[i])
            by_S: dict[int, list[str]] = {}
            for name in names:
                if name in half:
                    by_S.setdefault(id(half[name].S), []).append(name)
            for sid, members in by_S.items():
                S = half[members[0]].S
                if holders[sid] != set(members):
                    # Some holders of this S read other inputs in this batch: split off a copy.
                    holders[sid] -= set(members)
                    S = S.clone()
                    holders[id(S)] = set(members)
                    for n in members:
                        half[n].S = S
                S.add_(gram)
            new = [n for n in names if n not in half]
            if new:
                if len(key) == 1 and readers[key[0]] == 1:
                    S = gram  # this batch's Gram buffer becomes the half's S
                    taken_grams.append(key[0])
                else:
                    S = gram.clone()
                holders[id(S)] = set(new)
            for name in names:
                st = self.pending[name]
                if name in half:
                    stats = half[name]
                    stats.N += st.N
                    stats.C.add_(st.C)
                    stats.q.add_(st.q)
                    stats.y2 = _add_y2(stats.y2, st.y2)
                else:
                    half[name] = ModuleStats(st.N, S, st.C, st.q.clone(), st.y2)  # the staged C becomes the half's
                    taken_stages.append(name)
                self.calls[name] = self.calls.get(name, 0) + len(st.inputs)
        for i in taken_grams:
            del self.grams[i]  # owned by a half now: not zeroed, not reused
        for name in taken_stages:
            del self.pending[name]  # the next batch stages this module into a new C
        self.batches += 1
        self.discard()

    def shared_S(self) -> int:
        """How many distinct S tensors the halves hold (≤ modules × 2 when inputs are shared)."""
        return sum(len({id(st.S) for st in half.values()}) for half in self.halves)

    def statistics_bytes(self) -> int:
        """Bytes held by the running sums of both halves (each shared S counted once)."""
        seen, total = set(), 0
        for half in self.halves:
            for st in half.values():
                for t in (st.S, st.C, st.q):
                    if id(t) not in seen:
                        seen.add(id(t))
                        total += t.numel() * t.element_size()
        return total

    def rebuild_holders(self) -> None:
        """Recompute which modules share each S (after S tensors were replaced, e.g. by a reduce)."""
        for half, holders in zip(self.halves, self._holders):
            holders.clear()
            for name, st in half.items():
                holders.setdefault(id(st.S), set()).add(name)

    def discard(self) -> None:
        # Keep the staging buffers allocated (zeroed) for the next batch.
        for st in self.pending.values():
            st.N = 0
            st.C.zero_()
            st.q.zero_()
            st.inputs.clear()
            st.y2 = torch.zeros_like(st.q)
        for S in self.grams.values():
            S.zero_()
            self._free.setdefault((S.shape[0], S.device), []).append(S)
        self.grams.clear()

    def total(self, name: str) -> ModuleStats | None:
        parts = [h[name] for h in self.halves if name in h]
        if not parts:
            return None
        return parts[0] + parts[1] if len(parts) == 2 else parts[0]

    def batches_per_half(self) -> tuple[int, int]:
        """Committed batches in each half (halves take alternate batches, the first half the extra one)."""
        return self.batches - self.batches // 2, self.batches // 2

    def half(self, index: int, name: str) -> ModuleStats | None:
        return self.halves[index].get(name)

"""``stats_update``: the one op every accumulation backend implements.

For a micro-batch of rows X (rows × d_in), output gradients G (rows × d_out) and a
row mask (padding excluded), add into the running sums of docs/method.md::

    S += Xᵀ X        (d_in × d_in)     2·rows·d_in² FLOPs (about half with a triangle kernel)
    C += Xᵀ G        (d_in × d_out)    2·rows·d_in·d_out FLOPs
    q += ‖G‖_F²                         2·rows·d_out FLOPs
    (N is counted by the caller: it is the mask's sum, known once per batch.)

Only the upper triangle (i ≤ j) of S is part of the contract: native backends never
compute the rest, and every consumer reads S through ``symmetric(S)``.

Memory traffic: X and G are read once (rows·(d_in + d_out) elements); S and C are
read and written once per call.

``stats_update_reference`` is the specification: the same signature, computed in
float64 regardless of the accumulators' dtype. Tests compare every backend to it.
"""
from __future__ import annotations

import torch


def symmetric(S: torch.Tensor) -> torch.Tensor:
    """The full symmetric matrix from the upper triangle of S (the part every backend defines)."""
    upper = torch.triu(S)
    return upper + torch.triu(S, 1).t()


def _select(x: torch.Tensor, g: torch.Tensor, mask: torch.Tensor | None):
    if mask is not None:
        x, g = x[mask], g[mask]
    return x, g


def stats_update_torch(S: torch.Tensor, C: torch.Tensor, q: torch.Tensor,
                       x: torch.Tensor, g: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    """Reference backend on any device: one gather, then two GEMMs in the accumulators' dtype.

    Inputs of lower precision (bf16, fp16) are widened first, so every product and sum is
    carried out in the accumulator dtype (fp32 by default, fp64 on request).
    """
    x, g = _select(x, g, mask)
    if x.shape[0] == 0:
        return
    x = x.to(S.dtype)
    g = g.to(C.dtype)
    S.addmm_(x.t(), x)
    C.addmm_(x.t(), g)
    q.add_(g.pow(2).sum())


def stats_update_reference(S: torch.Tensor, C: torch.Tensor, q: torch.Tensor,
                           x: torch.Tensor, g: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    """Float64 specification of ``stats_update`` (slow; tests only)."""
    x, g = _select(x, g, mask)
    x64, g64 = x.double(), g.double()
    S.add_((x64.t() @ x64).to(S.dtype))
    C.add_((x64.t() @ g64).to(C.dtype))
    q.add_((g64 * g64).sum().to(q.dtype))


# The remaining ops of the namespace, same rules (torch backend, then float64 reference).
def gram_update_torch(S: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    """S += XᵀX over unmasked rows (full matrix here; only the upper triangle is contractual)."""
    x, _ = _select(x, x[:, :0], mask)
    if x.shape[0]:
        x = x.to(S.dtype)
        S.addmm_(x.t(), x)


def cross_update_torch(C: torch.Tensor, x: torch.Tensor, g: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    """C += XᵀG over unmasked rows."""
    x, g = _select(x, g, mask)
    if x.shape[0]:
        C.addmm_(x.to(C.dtype).t(), g.to(C.dtype))


def sketch_update_torch(CO: torch.Tensor, x: torch.Tensor, g: torch.Tensor, omega: torch.Tensor,
                        mask: torch.Tensor | None = None) -> None:
    """CΩ += Xᵀ(GΩ) for a fixed d_out × k matrix Ω: C's sketch without ever forming C."""
    x, g = _select(x, g, mask)
    if x.shape[0]:
        CO.addmm_(x.to(CO.dtype).t(), g.to(CO.dtype) @ omega.to(CO.dtype))


def gram_update_reference(S, x, mask=None) -> None:
    x, _ = _select(x, x[:, :0], mask)
    x64 = x.double()
    S.add_((x64.t() @ x64).to(S.dtype))


def cross_update_reference(C, x, g, mask=None) -> None:
    x, g = _select(x, g, mask)
    C.add_((x.double().t() @ g.double()).to(C.dtype))


def sketch_update_reference(CO, x, g, omega, mask=None) -> None:
    x, g = _select(x, g, mask)
    CO.add_((x.double().t() @ (g.double() @ omega.double())).to(CO.dtype))
